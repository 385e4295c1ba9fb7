"""The order's saga moved by replies, deadlines and the AMQP intake, on SQLite (no broker)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from orders_support import BODY, outbox
from sqlalchemy import func, select, update
from sqlalchemy.orm.exc import StaleDataError

from events.envelope import Envelope, Incoming, build
from events.inventory import StockReservationFailed, StockReserved
from events.orders import PlaceOrder
from events.payments import PaymentCaptured
from events.shipping import ShipmentCreated, ShipmentUpdated
from events.types import Allocation
from orders import service
from orders.db import Order
from orders.handlers import SUBSCRIBERS, handle_place_order

on_stock_reserved = SUBSCRIBERS[StockReserved]
on_stock_reservation_failed = SUBSCRIBERS[StockReservationFailed]
on_payment_captured = SUBSCRIBERS[PaymentCaptured]
on_shipment_created = SUBSCRIBERS[ShipmentCreated]
on_shipment_updated = SUBSCRIBERS[ShipmentUpdated]


async def placed(sessions, settings, key="k") -> str:
    request = PlaceOrder.model_validate(BODY)
    return (
        await service.place_order(sessions, request, key=key, actor="dev-gateway", settings=settings)
    ).order_id


def envelope(model, payload):
    return Envelope[model].model_validate(build(payload, service="test", subject=payload.order_id))


async def load(sessions, order_id) -> Order:
    async with sessions() as session:
        return await session.get(Order, order_id)


async def test_replies_move_the_order_and_emit_the_next_command(sessions, settings):
    order_id = await placed(sessions, settings)
    reserved = envelope(
        StockReserved,
        StockReserved(
            order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
        ),
    )
    await on_stock_reserved(reserved, sessions, settings)
    order = await load(sessions, order_id)
    assert order.status == "confirmed"
    sent = await outbox(sessions)
    assert [m["key"] for m in sent[-3:]] == [
        "order.status_changed",
        "order.confirmed",
        "payments.capture_payment",
    ]
    assert sent[-1]["causationid"] == reserved.id and sent[-1]["data"]["token"] == "tok_ok"
    # no deadline rides on the command: a late capture is still taken (the money may have moved)
    assert sent[-1]["data"]["not_after"] is None
    assert order.waiting_since is not None and order.deadline_at - order.waiting_since == timedelta(
        seconds=settings.step_timeout_seconds
    )

    captured = envelope(
        PaymentCaptured,
        PaymentCaptured(
            order_id=order_id, payment_id="pay-1", amount=Decimal("79.80"), currency="CNY", method="card"
        ),
    )
    await on_payment_captured(captured, sessions, settings)
    order = await load(sessions, order_id)
    assert (order.status, order.payment_status, order.payment_token) == ("paid", "captured", None)
    assert [m["key"] for m in (await outbox(sessions))[-3:]] == [
        "order.status_changed",
        "order.paid",
        "shipping.create_shipment",
    ]
    assert (await outbox(sessions))[-1]["data"]["warehouse"] == "SH"
    assert [h.status for h in order.history] == ["submitted", "confirmed", "paid"]


async def test_a_redelivered_reply_changes_nothing(sessions, settings):
    order_id = await placed(sessions, settings)
    reserved = envelope(
        StockReserved,
        StockReserved(
            order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
        ),
    )
    await on_stock_reserved(reserved, sessions, settings)
    before = await outbox(sessions)
    await on_stock_reserved(reserved, sessions, settings)
    assert await outbox(sessions) == before
    assert (await load(sessions, order_id)).version == 2


async def test_a_reply_for_someone_elses_order_is_ignored(sessions, settings):
    shipment = ShipmentCreated(
        order_id="ord_other",
        shipment_id="s",
        carrier="c",
        tracking_number="t",
        warehouse="SH",
        estimated_delivery=date(2026, 12, 1),
    )
    assert await service.apply(sessions, "ord_other", shipment, actor="oms/test", settings=settings) is None


async def test_deadlines_are_stored_and_fire_after_a_restart(sessions, settings):
    order_id = await placed(sessions, settings)
    reserved = StockReserved(
        order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
    )
    await service.apply(sessions, order_id, reserved, actor="oms/test", settings=settings)
    order = await load(sessions, order_id)
    assert order.deadline_at is not None and order.status == "confirmed"
    assert await service.fire_deadline(sessions, settings=settings) is None
    async with sessions.begin() as session:  # time passes while the service is down
        await session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(deadline_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    saga = dict(
        (await load(sessions, order_id)).saga,
        deadline_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
    )
    async with sessions.begin() as session:
        await session.execute(update(Order).where(Order.id == order_id).values(saga=saga))
    # A fresh process sees the due deadline in the database and fires it: the capture is resent.
    assert await service.fire_deadline(sessions, settings=settings) == order_id
    order = await load(sessions, order_id)
    assert order.status == "confirmed" and order.deadline_at > datetime.now(UTC)
    assert (await outbox(sessions))[-1]["key"] == "payments.capture_payment"
    # Past the long deadline the saga gives up, warned first.
    long_ago = (datetime.now(UTC) - timedelta(seconds=settings.saga_timeout_seconds + 1)).isoformat()
    saga = dict(order.saga, deadline_at=long_ago, waiting_since=long_ago)
    async with sessions.begin() as session:
        await session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(
                saga=saga,
                waiting_since=datetime.fromisoformat(long_ago),
                deadline_at=datetime.fromisoformat(long_ago),
            )
        )
    assert [o.id for o in await service.waiting_long(sessions, settings=settings)] == [order_id]
    assert await service.fire_deadline(sessions, settings=settings) == order_id
    order = await load(sessions, order_id)
    assert (order.status, order.status_reason) == ("cancelled", "saga_timeout")
    assert order.payment_token is None  # cleared on every final status
    assert (await outbox(sessions))[-1]["key"] == "inventory.release_stock"


async def test_a_saga_step_saved_over_a_newer_version_is_refused_not_lost(sessions, settings):
    """Optimistic concurrency: a saga step's save is conditional on the version it loaded, and a
    stale one raises StaleDataError (the message is retried). (On SQLite writers also queue for the
    database lock; on PostgreSQL two handlers can truly race.)"""
    order_id = await placed(sessions, settings)
    async with sessions() as session:
        loaded = (
            (await session.execute(service._LOAD, {"order_id": order_id})).mappings().first()
        )  # version 1
    async with sessions.begin() as session:  # another handler saves first: version 2
        await service._save(session, loaded, SimpleNamespace(**{**loaded, "attention": "first"}))
    step = SimpleNamespace(**loaded)
    step.attention = "second"
    with pytest.raises(StaleDataError):
        async with sessions.begin() as session:
            await service._save(session, loaded, step)
    order = await load(sessions, order_id)
    assert (order.attention, order.version) == ("first", 2)


def command(data: dict, command_id: str = "cmd-1") -> Incoming:
    return Incoming.model_validate(
        {
            "specversion": "1.0",
            "id": command_id,
            "type": "oms.command.orders.place_order.v1",
            "source": "gateway/web",
            "time": "2026-11-24T00:00:00Z",
            "data": data,
        }
    )


async def test_a_good_amqp_order_is_placed_once_per_command_id(sessions, settings):
    await handle_place_order(command(BODY), sessions, settings)
    await handle_place_order(command(BODY), sessions, settings)
    sent = await outbox(sessions)
    assert [m["key"] for m in sent].count("order.placed") == 1
    assert sent[0]["causationid"] == "cmd-1"


async def test_a_bad_amqp_order_is_answered_with_order_rejected_naming_the_fields(sessions, settings):
    bad = {
        **BODY,
        "items": [{"sku": "SKU-RED-MUG", "quantity": 0, "unit_price": "1.00"}],
        "payment": {"method": "cash", "token": "t"},
    }
    del bad["shipping_address"]
    await handle_place_order(command(bad, "cmd-bad"), sessions, settings)
    [rejected] = await outbox(sessions)
    assert rejected["type"] == "oms.order.rejected.v1" and rejected["data"]["command_id"] == "cmd-bad"
    assert {"items.0.quantity", "payment.method", "shipping_address"} <= {
        e["field"] for e in rejected["data"]["errors"]
    }


async def test_a_scan_that_overtakes_the_pick_up_still_takes_the_order_through_shipped(sessions, settings):
    """In transit reported before picked up: the history, the events (and so the customer's
    messages) still go picking → shipped → in_transit, and the late pick-up changes nothing."""
    order_id = await placed(sessions, settings)
    await on_stock_reserved(
        envelope(
            StockReserved,
            StockReserved(
                order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
            ),
        ),
        sessions,
        settings,
    )
    await on_payment_captured(
        envelope(
            PaymentCaptured,
            PaymentCaptured(
                order_id=order_id, payment_id="pay-1", amount=Decimal("79.80"), currency="CNY", method="card"
            ),
        ),
        sessions,
        settings,
    )
    await on_shipment_created(
        envelope(
            ShipmentCreated,
            ShipmentCreated(
                order_id=order_id,
                shipment_id="shp-1",
                carrier="sf",
                tracking_number="T1",
                warehouse="SH",
                estimated_delivery=date(2026, 11, 30),
            ),
        ),
        sessions,
        settings,
    )

    def scan(status: str) -> Envelope:
        return envelope(
            ShipmentUpdated,
            ShipmentUpdated(
                order_id=order_id,
                shipment_id="shp-1",
                carrier="sf",
                tracking_number="T1",
                status=status,
                at=datetime.now(UTC),
            ),
        )

    await on_shipment_updated(scan("in_transit"), sessions, settings)
    await on_shipment_updated(scan("picked_up"), sessions, settings)
    order = await load(sessions, order_id)
    assert order.status == "in_transit"
    assert [h.status for h in order.history] == [
        "submitted",
        "confirmed",
        "paid",
        "picking",
        "shipped",
        "in_transit",
    ]
    changes = [
        (m["data"]["from_status"], m["data"]["to_status"])
        for m in await outbox(sessions)
        if m["key"] == "order.status_changed"
    ]
    assert changes[-2:] == [("picking", "shipped"), ("shipped", "in_transit")]
    assert [m["key"] for m in await outbox(sessions)].count("inventory.commit_stock") == 1


async def test_an_over_long_command_id_is_answered_order_rejected_once_not_dead_lettered(sessions, settings):
    long_id = "x" * 300
    await handle_place_order(command(BODY, long_id), sessions, settings)
    await handle_place_order(command(BODY, long_id), sessions, settings)  # redelivered
    [rejected] = await outbox(sessions)
    assert rejected["type"] == "oms.order.rejected.v1" and rejected["data"]["command_id"] == long_id
    assert rejected["data"]["errors"][0]["field"] == "id"
    async with sessions() as session:
        assert (await session.scalar(select(func.count()).select_from(Order))) == 0


class _PausedSecondTransaction:
    """Sessions whose second ``begin()`` waits for ``go``: a request that claimed its key, then stalled."""

    def __init__(self, sessions) -> None:
        self.sessions, self.calls = sessions, 0
        self.paused, self.go = asyncio.Event(), asyncio.Event()

    def __call__(self):
        return self.sessions()

    def begin(self):
        self.calls += 1
        inner = self.sessions.begin()
        if self.calls != 2:
            return inner
        gate = self

        class Paused:
            async def __aenter__(self):
                gate.paused.set()
                await gate.go.wait()
                return await inner.__aenter__()

            async def __aexit__(self, *exc):
                return await inner.__aexit__(*exc)

        return Paused()


async def test_a_key_taken_over_while_its_first_request_still_runs_makes_one_order(sessions, settings):
    """The take-over of an abandoned key and the first request's finish are both compare-and-set
    on the claim: whichever comes second makes no order."""
    quick = settings.model_copy(update={"idempotency_abandoned_seconds": 0})
    stalled = _PausedSecondTransaction(sessions)
    first = asyncio.create_task(
        service.place_order(
            stalled, PlaceOrder.model_validate(BODY), key="k", actor="dev-gateway", settings=quick
        )
    )
    await stalled.paused.wait()
    second = await service.place_order(
        sessions, PlaceOrder.model_validate(BODY), key="k", actor="dev-gateway", settings=quick
    )
    stalled.go.set()
    with pytest.raises(service.KeyInProgress):
        await first
    async with sessions() as session:
        assert (await session.scalars(select(Order.id))).all() == [second.order_id]


async def _split_and_booked(sessions, settings) -> str:
    """An order of two mugs, one from SH and one from BJ, both parcels booked."""
    order_id = await placed(sessions, settings)
    await on_stock_reserved(
        envelope(
            StockReserved,
            StockReserved(
                order_id=order_id,
                allocations=[
                    Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=1),
                    Allocation(warehouse="BJ", sku="SKU-RED-MUG", quantity=1),
                ],
            ),
        ),
        sessions,
        settings,
    )
    await on_payment_captured(
        envelope(
            PaymentCaptured,
            PaymentCaptured(
                order_id=order_id, payment_id="pay-1", amount=Decimal("79.80"), currency="CNY", method="card"
            ),
        ),
        sessions,
        settings,
    )
    for warehouse in ("SH", "BJ"):
        await on_shipment_created(
            envelope(
                ShipmentCreated,
                ShipmentCreated(
                    order_id=order_id,
                    shipment_id=f"shp-{warehouse}",
                    carrier="sf-express",
                    tracking_number=f"T-{warehouse}",
                    warehouse=warehouse,
                    parcel=warehouse,
                    estimated_delivery=date(2026, 11, 30),
                    items=[{"sku": "SKU-RED-MUG", "quantity": 1}],
                ),
            ),
            sessions,
            settings,
        )
    return order_id


def _scan(order_id: str, warehouse: str, status: str) -> Envelope:
    return envelope(
        ShipmentUpdated,
        ShipmentUpdated(
            order_id=order_id,
            shipment_id=f"shp-{warehouse}",
            carrier="sf-express",
            tracking_number=f"T-{warehouse}",
            status=status,
            at=datetime.now(UTC),
            location="Shanghai",
            parcel=warehouse,
            estimated_delivery=date(2026, 12, 1),
        ),
    )


async def test_a_split_order_books_a_parcel_per_warehouse_and_is_shipped_when_both_are(
    sessions, settings, client
):
    order_id = await _split_and_booked(sessions, settings)
    booked = [m["data"] for m in await outbox(sessions) if m["key"] == "shipping.create_shipment"]
    assert sorted((b["parcel"], b["items"][0]["quantity"]) for b in booked) == [("BJ", 1), ("SH", 1)]
    await on_shipment_updated(_scan(order_id, "SH", "picked_up"), sessions, settings)
    assert (await load(sessions, order_id)).status == "picking", "shipped only when every parcel is"
    await on_shipment_updated(_scan(order_id, "BJ", "picked_up"), sessions, settings)
    assert (await load(sessions, order_id)).status == "shipped"
    commits = [m["data"] for m in await outbox(sessions) if m["key"] == "inventory.commit_stock"]
    assert sorted(c["warehouse"] for c in commits) == ["BJ", "SH"]
    await on_shipment_updated(_scan(order_id, "SH", "delivered"), sessions, settings)
    view = (
        await client.get(f"/v1/orders/{order_id}", headers={"Authorization": "Bearer dev-ops-key"})
    ).json()
    assert view["status"] == "shipped"
    assert [(s["warehouse"], s["tracking_number"], s["status"]) for s in view["shipments"]] == [
        ("SH", "T-SH", "delivered"),
        ("BJ", "T-BJ", "picked_up"),
    ]
    assert [e["status"] for e in view["shipments"][0]["events"]] == ["created", "picked_up", "delivered"]
    assert view["shipment"]["tracking_number"] == "T-BJ", "the summary is the least advanced parcel"
    assert view["shipment"]["estimated_delivery"] == "2026-12-01"
    await on_shipment_updated(_scan(order_id, "BJ", "delivered"), sessions, settings)
    assert (await load(sessions, order_id)).status == "delivered"


async def test_the_console_search_finds_a_split_order_by_each_parcels_tracking_number(sessions, settings):
    from orders.console import queries

    order_id = await _split_and_booked(sessions, settings)
    await on_shipment_updated(
        _scan(order_id, "BJ", "picked_up"), sessions, settings
    )  # scans find no new parcel
    async with sessions() as session:
        for number in ("T-SH", "T-BJ"):
            assert [o.id for o in await queries.search(session, queries.Search(q=number))] == [order_id], (
                number
            )
        assert await queries.search(session, queries.Search(q="T-NONE")) == []


async def test_a_parcel_returned_undelivered_is_refunded_and_restocked_and_nothing_arrived_cancels(
    sessions, settings
):
    order_id = await _split_and_booked(sessions, settings)
    for warehouse, last in (("SH", "returned"), ("BJ", "lost")):
        await on_shipment_updated(_scan(order_id, warehouse, "picked_up"), sessions, settings)
        await on_shipment_updated(_scan(order_id, warehouse, last), sessions, settings)
    [again] = [
        m["data"]
        for m in await outbox(sessions)
        if m["key"] == "inventory.reserve_stock" and m["data"]["parcel"]
    ]
    assert (again["parcel"], again["items"]) == ("BJ+1", [{"sku": "SKU-RED-MUG", "quantity": 1}]), (
        "the lost one first"
    )
    assert (await load(sessions, order_id)).status == "shipped"
    await on_stock_reservation_failed(
        envelope(StockReservationFailed, StockReservationFailed(order_id=order_id, parcel="BJ+1")),
        sessions,
        settings,
    )  # no stock to send it again
    order = await load(sessions, order_id)
    assert (order.status, order.status_reason) == ("cancelled", "delivery_failed")
    sent = await outbox(sessions)
    assert [m["data"]["items"] for m in sent if m["key"] == "inventory.restock"] == [
        [{"sku": "SKU-RED-MUG", "quantity": 1}]
    ]
    refunds = [
        (m["data"]["refund_key"].split(":", 1)[1], m["data"]["amount"])
        for m in sent
        if m["key"] == "payments.refund_payment"
    ]
    assert refunds == [("parcel:SH", "39.90"), ("parcel:BJ", "39.90")]


async def test_a_parcel_stuck_in_one_carrier_status_shows_on_the_stuck_list(sessions, settings):
    order_id = await _split_and_booked(sessions, settings)
    await on_shipment_updated(_scan(order_id, "SH", "exception"), sessions, settings)
    assert await service.stuck_parcels(sessions, settings=settings) == []
    later = datetime.now(UTC) + timedelta(seconds=settings.parcel_stuck_after_seconds + 1)
    [stuck] = await service.stuck_parcels(sessions, settings=settings, now=later)
    assert (stuck["id"], stuck["parcel"], stuck["parcel_status"]) == (order_id, "T-SH", "exception")
    [failed] = await service.delivery_exceptions(sessions)
    assert (failed["id"], failed["parcel"]) == (order_id, "T-SH")
