"""The outbox against a real broker and a real SQLite database (the inbox: test_staging.py)."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest
from integration.helpers import eventually
from sqlalchemy import event, func, select

from chassis import outbox
from chassis.db import HANDED_OVER, make_engine, make_sessionmaker, messaging_metadata, outbox_message
from chassis.outbox import OutboxRelay
from chassis.telemetry import setup_tracing, tracer
from events import topology
from events.envelope import Command, Event
from events.names import EVENTS_EXCHANGE, UNROUTED_QUEUE

pytestmark = pytest.mark.integration


class Pinged(Event):
    routing_key = "test.pinged"
    n: int


class Nobody(Command):
    routing_key = "nobody.listens"


@pytest.fixture
async def db(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/svc.db")
    async with engine.begin() as conn:
        await conn.run_sync(messaging_metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def listener(rabbit):
    """An exclusive queue bound to test.pinged on oms.events."""
    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    await topology.declare(channel)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(await channel.get_exchange(EVENTS_EXCHANGE), routing_key=Pinged.routing_key)
    yield queue
    await connection.close()


async def _take(queue, count: int, timeout: float = 10.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < count and loop.time() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.02)
        else:
            got.append(message)
    return got


async def _pending(sessions) -> int:
    async with sessions() as session:
        return await session.scalar(
            select(func.count()).select_from(outbox_message).where(outbox_message.c.published_at.is_(None))
        )


async def test_only_committed_messages_are_published_persistent_and_traced(rabbit, db, listener):
    setup_tracing("test")
    sessions = make_sessionmaker(db, on_outbox_commit=lambda rows: relay.wake(rows))
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=60)  # polling off: only wake-ups
    await relay.start()
    try:
        with pytest.raises(RuntimeError):
            async with sessions.begin() as session:
                await outbox.stage(session, Pinged(n=1), service="test", subject="ord-1")
                raise RuntimeError("the state change failed")
        with tracer().start_as_current_span("place order"):
            async with sessions.begin() as session:
                message_id = await outbox.stage(session, Pinged(n=2), service="test", subject="ord-2")

        [message] = await _take(listener, 1)
        body = json.loads(message.body)
        assert body["id"] == message_id and body["data"] == {"n": 2} and body["subject"] == "ord-2"
        assert body["type"] == "oms.test.pinged.v1" and body["source"] == "oms/test"
        assert body["correlationid"] == "ord-2" and body["traceparent"].startswith("00-")
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/cloudevents+json"
        assert message.message_id == message_id
        assert await _take(listener, 1, timeout=0.5) == []  # the rolled-back one never left
        assert await _pending(sessions) == 0
    finally:
        await relay.stop()


async def test_an_unroutable_command_stays_in_the_outbox_and_is_retried(rabbit, db):
    sessions = make_sessionmaker(db, on_outbox_commit=lambda rows: relay.wake(rows))
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=0.1)
    connection = await aio_pika.connect(rabbit.url)
    await topology.declare(await connection.channel())
    await relay.start()
    try:
        async with sessions.begin() as session:
            await outbox.stage(session, Nobody(), service="test", subject=None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        attempts = 0
        while loop.time() < deadline and attempts < 2:
            async with sessions() as session:
                attempts = await session.scalar(select(outbox_message.c.attempts))
            await asyncio.sleep(0.05)
        assert attempts >= 2, "the broker's refusal must be seen and the message tried again"
        assert await _pending(sessions) == 1

        # Once a queue takes that command, the next attempt goes through.
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(await channel.get_exchange("oms.commands"), routing_key=Nobody.routing_key)
        [message] = await _take(queue, 1, timeout=15)
        assert json.loads(message.body)["type"] == "oms.command.nobody.listens.v1"
    finally:
        await relay.stop()
        await connection.close()


class Unheard(Event):
    routing_key = "test.unheard"


async def test_an_event_nobody_subscribes_to_is_confirmed_and_not_stored(rabbit, db):
    """Events are broadcast: nobody listening is no error, and the broker keeps nothing of it."""
    sessions = make_sessionmaker(db, on_outbox_commit=lambda rows: relay.wake(rows))
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=0.1, mark_seconds=0.01)
    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    await topology.declare(channel)
    await relay.start()
    try:
        async with sessions.begin() as session:
            await outbox.stage(session, Unheard(), service="test", subject=None)
        await eventually(lambda: _pending(sessions), lambda pending: pending == 0)
        async with sessions() as session:
            assert await session.scalar(select(outbox_message.c.attempts)) == 0  # not refused, not retried
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(UNROUTED_QUEUE, passive=True)

        # The opt-in tap keeps them, to see what is published.
        channel = await connection.channel()  # the passive declaration's failure closed the other
        await topology.declare(channel, unrouted_tap=True)
        async with sessions.begin() as session:
            await outbox.stage(session, Unheard(), service="test", subject=None)
        [kept] = await _take(await channel.get_queue(UNROUTED_QUEUE), 1)
        assert json.loads(kept.body)["type"] == "oms.test.unheard.v1"
    finally:
        await relay.stop()
        await connection.close()


async def test_messages_staged_while_the_broker_is_unreachable_wait_in_the_outbox(rabbit, db, listener):
    sessions = make_sessionmaker(db, on_outbox_commit=lambda rows: relay.wake(rows))
    relay = OutboxRelay(sessions, "amqp://guest:guest@127.0.0.1:1/", service="test", poll_seconds=0.1)
    await relay.start()
    try:
        async with sessions.begin() as session:
            await outbox.stage(session, Pinged(n=3), service="test", subject="ord-3")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while relay.last_error is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert relay.last_error is not None, "the relay should have tried and failed"
        assert await _pending(sessions) == 1
    finally:
        await relay.stop()
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=0.1)  # the broker is back
    await relay.start()
    try:
        [message] = await _take(listener, 1)
        assert json.loads(message.body)["data"] == {"n": 3}
    finally:
        await relay.stop()


async def test_an_outside_subscriber_reads_our_messages_with_the_cloudevents_sdk(rabbit, db, listener):
    """CONTRACT §6: the CloudEvents Python SDK's RabbitMQ binding reads every message as is."""
    from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_rabbitmq
    from cloudevents.core.formats.json import JSONFormat

    setup_tracing("test")
    sessions = make_sessionmaker(db, on_outbox_commit=lambda rows: relay.wake(rows))
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=60)
    await relay.start()
    try:
        with tracer().start_as_current_span("sdk"):
            async with sessions.begin() as session:
                message_id = await outbox.stage(session, Pinged(n=7), service="test", subject="ord-7")
        [message] = await _take(listener, 1)
    finally:
        await relay.stop()
    event = from_rabbitmq(
        RabbitMQMessage(
            headers=dict(message.headers or {}), content_type=message.content_type, body=message.body
        ),
        JSONFormat(),
    )
    assert event.get_id() == message_id
    assert event.get_type() == "oms.test.pinged.v1"
    assert event.get_source() == "oms/test"
    assert event.get_subject() == "ord-7"
    assert event.get_data() == {"n": 7}
    assert event.get_extension("correlationid") == "ord-7"
    assert event.get_extension("traceparent").startswith("00-")


def _count_due_reads(engine) -> list[int]:
    """Counts the relay's reads of due rows (its query is the only one that filters on next_attempt_at)."""
    reads = [0]

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args) -> None:
        if "FROM outbox_message" in statement and "next_attempt_at" in statement:
            reads[0] += 1

    return reads


async def test_a_commit_hands_its_rows_to_the_relay_which_publishes_them_without_reading_them_back(
    rabbit, db, listener
):
    reads = _count_due_reads(db)
    sessions = make_sessionmaker(db, on_outbox_commit=lambda rows: relay.wake(rows))
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=60)
    await relay.start()
    try:
        await eventually(
            lambda: _as_coroutine(reads[0]), lambda n: n >= 1, timeout=10, what="the relay's first read"
        )
        reads[0] = 0
        async with sessions.begin() as session:
            message_id = await outbox.stage(session, Pinged(n=4), service="test", subject="ord-4")
        [message] = await _take(listener, 1)
        assert message.message_id == message_id
        await eventually(
            lambda: _pending(sessions), lambda n: n == 0, timeout=10, what="the row marked published"
        )
        assert reads[0] == 0  # published from the hand-over, and marked without a read
    finally:
        await relay.stop()


async def test_a_row_handed_over_after_a_read_published_it_is_not_sent_again(rabbit, db, listener):
    handed = []
    sessions = make_sessionmaker(db, on_outbox_commit=handed.append)  # kept back: the relay must read it
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=0.05)
    await relay.start()
    try:
        async with sessions.begin() as session:
            session.info[HANDED_OVER] = (
                False  # written with no lease for the hand-over (as if it had run out)
            )
            await outbox.stage(session, Pinged(n=5), service="test", subject="ord-5")
        [message] = await _take(listener, 1)
        await eventually(
            lambda: _pending(sessions), lambda n: n == 0, timeout=10, what="the row marked published"
        )
        relay.wake(handed[0])  # the hand-over arrives late, after a read published the row
        await eventually(
            lambda: _as_coroutine(len(relay._handed)),
            lambda n: n == 0,
            timeout=10,
            what="the hand-over taken",
        )
        assert await _take(listener, 1, timeout=0.5) == []
        assert relay.published == 1
    finally:
        await relay.stop()


async def _as_coroutine(value: int) -> int:
    """Relay state, read at once, for ``eventually``'s probe."""
    return value


async def test_confirmed_rows_are_marked_together_and_marked_before_the_relay_stops(rabbit, db, listener):
    marks = [0]

    @event.listens_for(db.sync_engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args) -> None:
        if statement.startswith("UPDATE outbox_message SET published_at"):
            marks[0] += 1

    sessions = make_sessionmaker(db, on_outbox_commit=lambda rows: relay.wake(rows))
    reads = _count_due_reads(db)
    relay = OutboxRelay(sessions, rabbit.url, service="test", poll_seconds=60, mark_seconds=60)
    await relay.start()
    try:
        await eventually(
            lambda: _as_coroutine(reads[0]), lambda n: n >= 1, timeout=10, what="the relay's first read"
        )
        for n in range(5):
            async with sessions.begin() as session:
                await outbox.stage(session, Pinged(n=n), service="test", subject=f"ord-{n}")
        assert len(await _take(listener, 5)) == 5
        assert await _pending(sessions) == 5  # confirmed, not marked yet: the relay remembers them
    finally:
        await relay.stop()
    assert await _pending(sessions) == 0
    assert marks[0] == 1
