"""Saga deadlines with several replicas scanning one PostgreSQL database (the shape replicas run
in; SQLite is one process's): each due deadline is claimed by one scanner and fired once, and one
claimed by a scanner that dies is fired by another."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from orders_support import BODY
from sqlalchemy import select

from chassis.db import make_engine, make_sessionmaker, messaging_metadata, outbox_message
from chassis.deadletters import deadletter_metadata
from events.orders import PlaceOrder
from orders import service
from orders.config import Settings
from orders.db import Base, Order

pytestmark = pytest.mark.integration


@pytest.fixture
async def replicas(postgres_database):
    """Two session factories on one database, each with an engine (a pool) of its own, as two
    processes have."""
    engines = [make_engine(postgres_database) for _ in range(2)]
    async with engines[0].begin() as conn:
        for metadata in (Base.metadata, messaging_metadata, deadletter_metadata):
            await conn.run_sync(metadata.create_all)
    yield [make_sessionmaker(engine) for engine in engines]
    for engine in engines:
        await engine.dispose()


def settings_for(url: str) -> Settings:
    return Settings(
        database_url=url,
        payment_timeout_seconds=10,
        step_timeout_seconds=30,
        inventory_url="http://127.0.0.1:9",
        amqp_url="amqp://guest:guest@127.0.0.1:9/",
    )


async def overdue_orders(sessions, settings: Settings, count: int) -> list[str]:
    """``count`` orders waiting for their stock reservation, whose deadline passed."""
    ids = [
        (
            await service.place_order(
                sessions, PlaceOrder.model_validate(BODY), key=f"k{i}", actor="dev-gateway", settings=settings
            )
        ).order_id
        for i in range(count)
    ]
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with sessions.begin() as session:
        for order in (await session.scalars(select(Order).where(Order.id.in_(ids)))).all():
            order.saga = {**order.saga, "deadline_at": past.isoformat()}
            order.deadline_at = past
    return ids


async def reserve_commands(sessions) -> Counter:
    async with sessions() as session:
        rows = await session.scalars(
            select(outbox_message.c.correlation_id).where(
                outbox_message.c.routing_key == "inventory.reserve_stock"
            )
        )
        return Counter(rows)


async def scan(sessions, settings: Settings) -> list[str]:
    """One replica's scanner, until nothing is due."""
    fired = []
    while True:
        order_id = await service.fire_deadline(sessions, settings=settings)
        if order_id is None:
            return fired
        fired.append(order_id)


async def test_two_scanners_fire_each_due_deadline_once(replicas, postgres_database):
    settings = settings_for(postgres_database)
    ids = await overdue_orders(replicas[0], settings, 30)

    fired = await asyncio.gather(*(scan(sessions, settings) for sessions in replicas))

    assert sorted(fired[0] + fired[1]) == sorted(ids), "every deadline fired, by one scanner each"
    # The saga resent the reservation once per order: placed once, resent once.
    assert await reserve_commands(replicas[0]) == Counter({order_id: 2 for order_id in ids})


async def test_a_deadline_claimed_by_a_scanner_that_dies_fires_on_another(postgres_database):
    settings = settings_for(postgres_database)
    dying, other = make_engine(postgres_database), make_engine(postgres_database)
    try:
        async with dying.begin() as conn:
            for metadata in (Base.metadata, messaging_metadata, deadletter_metadata):
                await conn.run_sync(metadata.create_all)
        sessions = make_sessionmaker(other)
        [order_id] = await overdue_orders(sessions, settings, 1)

        # A replica claims the deadline (its transaction holds the row) and dies before committing.
        conn = await dying.connect()
        await conn.begin()
        claimed = (await conn.execute(service._DUE_DEADLINE, {"now": datetime.now(UTC), "skip": []})).first()
        assert claimed.id == order_id
        assert await service.fire_deadline(sessions, settings=settings) is None, "claimed: not for the others"

        await conn.invalidate()  # the connection is gone with the process: PostgreSQL rolls back

        assert await service.fire_deadline(sessions, settings=settings) == order_id
        assert await reserve_commands(sessions) == Counter({order_id: 2})
    finally:
        await dying.dispose()
        await other.dispose()
