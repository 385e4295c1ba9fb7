"""Personal data is kept only as long as it serves: a closed order's contact details are blanked
after the retention period, an open or recent one is left as it is."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from orders_support import BODY
from sqlalchemy import select, update

from events.orders import PlaceOrder
from orders import retention, service
from orders.db import Order, OrderHistory


async def placed(sessions, settings) -> str:
    request = PlaceOrder.model_validate(BODY)
    return (
        await service.place_order(
            sessions, request, key=str(uuid.uuid4()), actor="dev-gateway", settings=settings
        )
    ).order_id


async def age(sessions, order_id: str, days: float) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(updated_at=datetime.now(UTC) - timedelta(days=days))
        )


async def test_a_closed_order_past_retention_is_forgotten_and_nothing_else(sessions, settings):
    old_closed, recent_closed, old_open = [await placed(sessions, settings) for _ in range(3)]
    for order_id in (old_closed, recent_closed):
        await service.cancel(
            sessions, order_id, actor="dev-gateway", note="call me on +8613800000000", settings=settings
        )
    for order_id, days in ((old_closed, 200), (recent_closed, 10), (old_open, 200)):
        await age(sessions, order_id, days)
    assert await retention.purge(sessions, older_than=timedelta(days=180)) == 1

    async with sessions() as session:
        orders = {o.id: o for o in await session.scalars(select(Order))}
        notes = dict(
            (
                await session.execute(
                    select(OrderHistory.order_id, OrderHistory.note).where(OrderHistory.status == "cancelled")
                )
            ).all()
        )
    gone = orders[old_closed]
    assert (gone.customer["name"], gone.customer["email"], gone.customer["phone"]) == ("", "", None)
    assert gone.customer["id"] == "cust-42" and gone.shipping_address["country"] == "CN"
    assert "1 Century Ave" not in str(gone.shipping_address) and gone.payment_token is None
    assert gone.forgotten_at is not None and notes[old_closed] is None
    for kept in (recent_closed, old_open):
        assert orders[kept].customer["email"] == "lin@example.com" and orders[kept].forgotten_at is None
    assert notes[recent_closed] == "call me on +8613800000000"
    assert await retention.purge(sessions, older_than=timedelta(days=180)) == 0, "once"
