"""A closed parcel's label loses its name and street after the retention period; an open or
recent one keeps them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from events.envelope import Envelope, build
from events.orders import Address
from events.shipping import CreateShipment
from events.types import LineItem
from shipping import retention
from shipping.db import Shipment
from shipping.handlers import handle_create_shipment

ADDRESS = Address(name="Lin Mei", line1="1 Century Ave", city="Shanghai", postal_code="200120", country="CN")


def create(order_id: str) -> Envelope[CreateShipment]:
    cmd = CreateShipment(
        order_id=order_id, warehouse="SH", address=ADDRESS, items=[LineItem(sku="A", quantity=1)]
    )
    return Envelope[CreateShipment].model_validate(build(cmd, service="orders", subject=order_id))


async def test_a_closed_parcel_past_retention_is_forgotten_and_nothing_else(sessions, settings, adapters):
    for order_id in ("old-delivered", "new-delivered", "old-open"):
        await handle_create_shipment(create(order_id), sessions, settings, adapters)
    long_ago = datetime.now(UTC) - timedelta(days=200)
    async with sessions.begin() as session:
        await session.execute(
            update(Shipment).where(Shipment.order_id != "old-open").values(status="delivered")
        )
        await session.execute(
            update(Shipment).where(Shipment.order_id != "new-delivered").values(updated_at=long_ago)
        )

    assert await retention.purge(sessions, older_than=timedelta(days=180)) == 1

    async with sessions() as session:
        parcels = {s.order_id: s for s in await session.scalars(select(Shipment))}
    assert parcels["old-delivered"].address == {"country": "CN"} and parcels["old-delivered"].forgotten_at
    for kept in ("new-delivered", "old-open"):
        assert parcels[kept].address["line1"] and parcels[kept].forgotten_at is None
    assert await retention.purge(sessions, older_than=timedelta(days=180)) == 0, "once"
