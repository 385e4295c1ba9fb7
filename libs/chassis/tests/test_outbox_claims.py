"""Two outbox relays on one PostgreSQL database, as two replicas of a service run them: every row
is published by one of them, once, whether a relay read it from the table or its process's commit
handed it over."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import aio_pika
import pytest
from integration.helpers import eventually
from sqlalchemy import func, select

from chassis import outbox
from chassis.db import make_engine, make_sessionmaker, messaging_metadata, outbox_message
from chassis.outbox import OutboxRelay
from events import topology
from events.envelope import Event
from events.names import EVENTS_EXCHANGE

pytestmark = pytest.mark.integration


class Counted(Event):
    routing_key = "test.counted"
    n: int


@pytest.fixture
async def engines(postgres_database):
    """Two engines (two pools, as two processes have) on one fresh database."""
    pair = [make_engine(postgres_database) for _ in range(2)]
    async with pair[0].begin() as conn:
        await conn.run_sync(messaging_metadata.create_all)
    yield pair
    for engine in pair:
        await engine.dispose()


@pytest.fixture
async def queue(amqp_url):
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await topology.declare(channel)
    q = await channel.declare_queue(exclusive=True)
    await q.bind(await channel.get_exchange(EVENTS_EXCHANGE), routing_key=Counted.routing_key)
    yield q
    await connection.close()


async def _unpublished(sessions) -> int:
    async with sessions() as session:
        return await session.scalar(
            select(func.count()).select_from(outbox_message).where(outbox_message.c.published_at.is_(None))
        )


async def _stage(sessions, numbers: range) -> None:
    async with sessions.begin() as session:
        for n in numbers:
            await outbox.stage(session, Counted(n=n), service="test", subject=f"ord-{n}")


async def test_two_relays_publish_each_row_once(engines, queue, amqp_url):
    # Rows a crash left (no relay had them handed over): both relays find them in the table.
    await _stage(make_sessionmaker(engines[0]), range(300))
    relays: list[OutboxRelay] = []
    sessions = [
        make_sessionmaker(engine, on_outbox_commit=lambda rows, i=i: relays[i].wake(rows))
        for i, engine in enumerate(engines)
    ]
    relays.extend(OutboxRelay(s, amqp_url, service="test", batch=50, poll_seconds=0.02) for s in sessions)
    for relay in relays:
        await relay.start()
    try:
        # And rows committed by each process while the other's relay keeps reading the table.
        for start in range(300, 500, 20):
            await _stage(sessions[start // 20 % 2], range(start, start + 20))
        await eventually(
            lambda: _unpublished(sessions[0]), lambda n: n == 0, timeout=60, what="every row published"
        )
    finally:
        for relay in relays:
            await relay.stop()

    # Confirmed before marked: everything published is in the queue now.
    seen: Counter = Counter()
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        seen[message.message_id] += 1
    assert len(seen) == 500
    assert [m for m, times in seen.items() if times > 1] == [], "a row was published by both relays"
    assert relays[0].published and relays[1].published, "both relays took part"
    assert relays[0].published + relays[1].published == 500


async def test_rows_leased_to_a_relay_that_died_are_published_by_another(
    engines, queue, amqp_url, monkeypatch
):
    monkeypatch.setattr(outbox, "LEASE", timedelta(seconds=1))
    # A process committed rows for its relay to publish, and died before it did.
    await _stage(make_sessionmaker(engines[0], on_outbox_commit=lambda rows: None), range(5))
    sessions = make_sessionmaker(engines[1])
    async with sessions() as session:
        leases = (await session.scalars(select(outbox_message.c.next_attempt_at))).all()
    assert len(leases) == 5 and all(lease is not None for lease in leases), (
        "written leased to the dead process"
    )

    relay = OutboxRelay(sessions, amqp_url, service="test", poll_seconds=0.05)
    await relay.start()
    try:
        await eventually(
            lambda: _unpublished(sessions), lambda n: n == 0, timeout=30, what="the rows published"
        )
    finally:
        await relay.stop()
    seen: Counter = Counter()
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        seen[json.loads(message.body)["data"]["n"]] += 1
    assert seen == Counter(range(5))


async def test_rows_handed_over_past_the_relays_bound_are_given_back_to_the_table(
    engines, queue, amqp_url, monkeypatch
):
    monkeypatch.setattr(outbox, "LEASE", timedelta(hours=1))  # a lease kept would outlast the test
    relays: list[OutboxRelay] = []
    sessions = make_sessionmaker(engines[0], on_outbox_commit=lambda rows: relays[0].wake(rows))
    relays.append(OutboxRelay(sessions, amqp_url, service="test", batch=2, poll_seconds=0.05))  # holds 20
    await relays[0].start()
    try:
        await _stage(sessions, range(50))  # one commit hands 50 over
        await eventually(
            lambda: _unpublished(sessions), lambda n: n == 0, timeout=30, what="the rows published"
        )
    finally:
        await relays[0].stop()
    seen: Counter = Counter()
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        seen[json.loads(message.body)["data"]["n"]] += 1
    assert seen == Counter(range(50))
