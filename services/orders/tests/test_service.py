"""The order's saga moved by replies, deadlines and the AMQP intake, on SQLite (no broker)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from orders_support import BODY, outbox
from sqlalchemy import update
from sqlalchemy.orm.exc import StaleDataError

from events.envelope import Envelope, Incoming, build
from events.inventory import StockReserved
from events.orders import PlaceOrder
from events.payments import PaymentCaptured
from events.shipping import ShipmentCreated, ShipmentUpdated
from events.types import Allocation
from orders import service
from orders.db import Order
from orders.handlers import (
    handle_place_order,
    on_payment_captured,
    on_shipment_created,
    on_shipment_updated,
    on_stock_reserved,
)
from orders.saga import DeadlineReached


async def placed(sessions, settings, key="k") -> str:
    request = PlaceOrder.model_validate(BODY)
    return (await service.place_order(sessions, request, key=key, actor="dev-gateway", settings=settings)).order_id


def envelope(model, payload):
    return Envelope[model].model_validate(build(payload, service="test", subject=payload.order_id))


async def load(sessions, order_id) -> Order:
    async with sessions() as session:
        return await session.get(Order, order_id)


async def test_replies_move_the_order_and_emit_the_next_command(sessions, settings):
    order_id = await placed(sessions, settings)
    reserved = envelope(StockReserved, StockReserved(order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]))
    await on_stock_reserved(reserved, sessions, settings)
    order = await load(sessions, order_id)
    assert order.status == "confirmed"
    sent = await outbox(sessions)
    assert [m["key"] for m in sent[-3:]] == ["order.status_changed", "order.confirmed", "payments.capture_payment"]
    assert sent[-1]["causationid"] == reserved.id and sent[-1]["data"]["token"] == "tok_ok"
    # payments is told when the saga stops waiting, so a command still queued then charges nothing
    assert datetime.fromisoformat(sent[-1]["data"]["not_after"]) == order.deadline_at
    assert order.deadline_at - datetime.now(UTC) > timedelta(seconds=settings.payment_timeout_seconds - 5)

    captured = envelope(PaymentCaptured, PaymentCaptured(order_id=order_id, payment_id="pay-1", amount=Decimal("79.80"),
                                                         currency="CNY", method="card"))
    await on_payment_captured(captured, sessions, settings)
    order = await load(sessions, order_id)
    assert (order.status, order.payment_status, order.payment_token) == ("paid", "captured", None)
    assert [m["key"] for m in (await outbox(sessions))[-3:]] == ["order.status_changed", "order.paid", "shipping.create_shipment"]
    assert (await outbox(sessions))[-1]["data"]["warehouse"] == "SH"
    assert [h.status for h in order.history] == ["submitted", "confirmed", "paid"]


async def test_a_redelivered_reply_changes_nothing(sessions, settings):
    order_id = await placed(sessions, settings)
    reserved = envelope(StockReserved, StockReserved(order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]))
    await on_stock_reserved(reserved, sessions, settings)
    before = await outbox(sessions)
    await on_stock_reserved(reserved, sessions, settings)
    assert await outbox(sessions) == before
    assert (await load(sessions, order_id)).version == 2


async def test_a_reply_for_someone_elses_order_is_ignored(sessions, settings):
    shipment = ShipmentCreated(order_id="ord_other", shipment_id="s", carrier="c", tracking_number="t", warehouse="SH",
                               estimated_delivery=date(2026, 12, 1))
    assert await service.apply(sessions, "ord_other", shipment, actor="oms/test", settings=settings) is None


async def test_deadlines_are_stored_and_fire_after_a_restart(sessions, settings):
    order_id = await placed(sessions, settings)
    reserved = StockReserved(order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)])
    await service.apply(sessions, order_id, reserved, actor="oms/test", settings=settings)
    order = await load(sessions, order_id)
    assert order.deadline_at is not None and order.status == "confirmed"
    assert await service.due_deadlines(sessions) == []
    async with sessions.begin() as session:  # time passes while the service is down
        await session.execute(update(Order).where(Order.id == order_id).values(deadline_at=datetime.now(UTC) - timedelta(seconds=1)))
    saga = dict((await load(sessions, order_id)).saga, deadline_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    async with sessions.begin() as session:
        await session.execute(update(Order).where(Order.id == order_id).values(saga=saga))
    # A fresh process sees the due deadline in the database and fires it.
    assert await service.due_deadlines(sessions) == [order_id]
    await service.apply(sessions, order_id, DeadlineReached(), actor="oms/test", settings=settings)
    order = await load(sessions, order_id)
    assert (order.status, order.status_reason) == ("cancelled", "payment_timeout")
    assert (await outbox(sessions))[-1]["key"] == "inventory.release_stock"


async def test_a_save_from_a_stale_version_is_refused_not_lost(sessions, settings):
    """Optimistic concurrency: a save is conditional on the version it loaded. (On SQLite writers
    also queue for the database lock; on PostgreSQL two handlers can truly race.)"""
    order_id = await placed(sessions, settings)
    async with sessions() as session:
        stale = await session.get(Order, order_id)  # version 1, kept after the session ends
    async with sessions.begin() as session:
        (await session.get(Order, order_id)).attention = "first"  # another handler saves: version 2
    async with sessions() as session:
        copy = await session.merge(stale, load=False)
        copy.attention = "second"
        with pytest.raises(StaleDataError):
            await session.commit()
    assert (await load(sessions, order_id)).attention == "first"


async def test_a_saga_step_saved_over_a_newer_version_is_refused_not_lost(sessions, settings):
    """A saga step writes its order with Core; the save is conditional on the version it loaded,
    as the ORM's is, and a stale one raises the same StaleDataError (the message is retried)."""
    order_id = await placed(sessions, settings)
    async with sessions() as session:
        loaded = (await session.execute(service._LOAD, {"order_id": order_id})).mappings().first()  # version 1
    async with sessions.begin() as session:
        (await session.get(Order, order_id)).attention = "first"  # another handler saves: version 2
    step = SimpleNamespace(**loaded)
    step.attention = "second"
    with pytest.raises(StaleDataError):
        async with sessions.begin() as session:
            await service._save(session, loaded, step)
    order = await load(sessions, order_id)
    assert (order.attention, order.version) == ("first", 2)


def command(data: dict, command_id: str = "cmd-1") -> Incoming:
    return Incoming.model_validate({"specversion": "1.0", "id": command_id, "type": "oms.command.orders.place_order.v1",
                                    "source": "gateway/web", "time": "2026-11-24T00:00:00Z", "data": data})


async def test_a_good_amqp_order_is_placed_once_per_command_id(sessions, settings):
    await handle_place_order(command(BODY), sessions, settings)
    await handle_place_order(command(BODY), sessions, settings)
    sent = await outbox(sessions)
    assert [m["key"] for m in sent].count("order.placed") == 1
    assert sent[0]["causationid"] == "cmd-1"


async def test_a_bad_amqp_order_is_answered_with_order_rejected_naming_the_fields(sessions, settings):
    bad = {**BODY, "items": [{"sku": "SKU-RED-MUG", "quantity": 0, "unit_price": "1.00"}], "payment": {"method": "cash", "token": "t"}}
    del bad["shipping_address"]
    await handle_place_order(command(bad, "cmd-bad"), sessions, settings)
    [rejected] = await outbox(sessions)
    assert rejected["type"] == "oms.order.rejected.v1" and rejected["data"]["command_id"] == "cmd-bad"
    assert {"items.0.quantity", "payment.method", "shipping_address"} <= {e["field"] for e in rejected["data"]["errors"]}


async def test_a_scan_that_overtakes_the_pick_up_still_takes_the_order_through_shipped(sessions, settings):
    """In transit reported before picked up: the history, the events (and so the customer's
    messages) still go picking → shipped → in_transit, and the late pick-up changes nothing."""
    order_id = await placed(sessions, settings)
    await on_stock_reserved(envelope(StockReserved, StockReserved(
        order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)])), sessions, settings)
    await on_payment_captured(envelope(PaymentCaptured, PaymentCaptured(
        order_id=order_id, payment_id="pay-1", amount=Decimal("79.80"), currency="CNY", method="card")), sessions, settings)
    await on_shipment_created(envelope(ShipmentCreated, ShipmentCreated(
        order_id=order_id, shipment_id="shp-1", carrier="sf", tracking_number="T1", warehouse="SH",
        estimated_delivery=date(2026, 11, 30))), sessions, settings)

    def scan(status: str) -> Envelope:
        return envelope(ShipmentUpdated, ShipmentUpdated(order_id=order_id, shipment_id="shp-1", carrier="sf",
                                                          tracking_number="T1", status=status, at=datetime.now(UTC)))

    await on_shipment_updated(scan("in_transit"), sessions, settings)
    await on_shipment_updated(scan("picked_up"), sessions, settings)
    order = await load(sessions, order_id)
    assert order.status == "in_transit"
    assert [h.status for h in order.history] == ["submitted", "confirmed", "paid", "picking", "shipped", "in_transit"]
    changes = [(m["data"]["from_status"], m["data"]["to_status"])
               for m in await outbox(sessions) if m["key"] == "order.status_changed"]
    assert changes[-2:] == [("picking", "shipped"), ("shipped", "in_transit")]
    assert [m["key"] for m in await outbox(sessions)].count("inventory.commit_stock") == 1
