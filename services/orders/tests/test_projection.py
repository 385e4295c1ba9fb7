"""One order state: after every saga step the order's row is the projection of its saga, so what
the API, the console and the reports read never disagrees with where the saga stands (SQLite)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from orders_support import BODY
from sqlalchemy import select

from events.inventory import StockReleased, StockReserved
from events.orders import PlaceOrder
from events.payments import PaymentCaptured, PaymentFailed, PaymentRefunded
from events.shipping import ShipmentCreated, ShipmentReturned, ShipmentUpdated
from events.types import Allocation, LineItem
from orders import service
from orders.db import Order
from orders.saga import AttentionResolved, CancelRequested, DeadlineReached, ReturnRequested
from orders.saga_state import Saga, projection

TOTAL = Decimal("79.80")


async def row_is_its_projection(sessions, order_id: str) -> dict:
    async with sessions() as session:
        row = (await session.execute(select(Order.__table__).where(Order.id == order_id))).mappings().one()
    expected = projection(Saga.from_dict(row["saga"]))
    assert {k: row[k] for k in expected} == expected
    return dict(row)


async def step(sessions, settings, order_id: str, reply: object) -> dict:
    await service.apply(sessions, order_id, reply, actor="oms/test", settings=settings)
    return await row_is_its_projection(sessions, order_id)


async def place(sessions, settings, key: str) -> str:
    request = PlaceOrder.model_validate(BODY)
    order_id = (
        await service.place_order(sessions, request, key=key, actor="dev-gateway", settings=settings)
    ).order_id
    await row_is_its_projection(sessions, order_id)
    return order_id


def reserved(order_id: str) -> StockReserved:
    return StockReserved(
        order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
    )


def captured(order_id: str) -> PaymentCaptured:
    return PaymentCaptured(order_id=order_id, payment_id="pay-1", amount=TOTAL, currency="CNY", method="card")


def refunded(order_id: str, key: str, amount: Decimal, refund_id: str, total: Decimal) -> PaymentRefunded:
    return PaymentRefunded(
        order_id=order_id,
        payment_id="pay-1",
        refund_id=refund_id,
        refund_key=f"{order_id}:{key}",
        amount=amount,
        refunded_total=total,
        currency="CNY",
    )


async def test_delivered_and_returned_the_row_follows_the_saga_at_every_step(sessions, settings):
    order_id = await place(sessions, settings, "happy")
    await step(sessions, settings, order_id, reserved(order_id))
    row = await step(sessions, settings, order_id, captured(order_id))
    assert (row["status"], row["payment_status"], row["payment_amount"]) == ("paid", "captured", TOTAL)
    await step(
        sessions,
        settings,
        order_id,
        ShipmentCreated(
            order_id=order_id,
            shipment_id="shp-1",
            carrier="sf",
            tracking_number="T1",
            warehouse="SH",
            parcel="SH",
            estimated_delivery=date(2026, 12, 5),
        ),
    )
    for status in ("picked_up", "in_transit", "delivered"):
        row = await step(
            sessions,
            settings,
            order_id,
            ShipmentUpdated(
                order_id=order_id,
                shipment_id="shp-1",
                carrier="sf",
                tracking_number="T1",
                status=status,
                at=datetime.now(UTC),
            ),
        )
    assert row["status"] == "delivered"
    mug = [LineItem(sku="SKU-RED-MUG", quantity=1)]
    await step(sessions, settings, order_id, ReturnRequested(items=mug, amount=Decimal("39.90")))
    await step(
        sessions,
        settings,
        order_id,
        ShipmentReturned(
            order_id=order_id, shipment_id="shp-1", tracking_number="T1", items=mug, at=datetime.now(UTC)
        ),
    )
    row = await step(
        sessions,
        settings,
        order_id,
        refunded(order_id, "return", Decimal("39.90"), "ref-1", Decimal("39.90")),
    )
    assert (row["status"], row["payment_status"], row["refunded_amount"]) == (
        "returned",
        "partially_refunded",
        Decimal("39.90"),
    )


async def test_declined_the_row_says_failed_and_cancelled(sessions, settings):
    order_id = await place(sessions, settings, "declined")
    await step(sessions, settings, order_id, reserved(order_id))
    row = await step(sessions, settings, order_id, PaymentFailed(order_id=order_id, reason="declined"))
    assert (row["status"], row["status_reason"], row["payment_status"]) == (
        "cancelled",
        "payment_declined",
        "failed",
    )
    row = await step(sessions, settings, order_id, StockReleased(order_id=order_id, allocations=[]))
    assert row["deadline_at"] is None and row["payment_token"] is None


async def test_unanswered_compensations_mark_the_row_for_attention_as_the_saga_is(
    sessions, settings, monkeypatch
):
    order_id = await place(sessions, settings, "stuck")
    await step(sessions, settings, order_id, reserved(order_id))
    await step(sessions, settings, order_id, captured(order_id))
    row = await step(sessions, settings, order_id, CancelRequested())
    assert row["waiting_since"] is not None  # the refund and the parcel's cancel are not answered
    later = datetime.now(UTC) + timedelta(seconds=settings.saga_timeout_seconds + 60)
    monkeypatch.setattr(service, "_now", lambda: later)
    row = await step(sessions, settings, order_id, DeadlineReached())
    assert row["attention"] and "Refund" in row["attention"]
    row = await step(sessions, settings, order_id, AttentionResolved())
    assert row["attention"] is None and row["status"] == "cancelled"
