"""The consume policy against a real broker: ack after success, retry with back-off on a transient
error, dead-letter at once what is malformed and after the delivery limit what keeps failing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import aio_pika
import pytest
from faststream.rabbit import RabbitMessage, RabbitQueue
from integration.helpers import eventually

from chassis import broker as broker_mod
from chassis.broker import make_broker
from chassis.telemetry import current_trace_id
from events import topology
from events.envelope import Command, Envelope, build
from events.names import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE

pytestmark = pytest.mark.integration


class Sample(Command):
    routing_key = "test.sample"
    fail_times: int = 0
    kind: str = ""


async def _dead_letters(
    channel: aio_pika.abc.AbstractChannel, queue: str, wanted: set[str], timeout: float
) -> set[str]:
    """Take from the dead-letter queue the messages that died in ``queue`` until ``wanted`` are all there."""
    dlq = await channel.get_queue(DEAD_LETTER_QUEUE, ensure=False)
    found: set[str] = set()
    deadline = asyncio.get_running_loop().time() + timeout
    while found < wanted and asyncio.get_running_loop().time() < deadline:
        message = await dlq.get(no_ack=False, fail=False)
        if message is None:
            await asyncio.sleep(0.1)
            continue
        deaths = message.headers.get("x-death") or [{}]
        if deaths[0].get("queue") == queue:
            found.add(message.message_id)
            await message.ack()
        else:
            await message.nack(requeue=True)
    return found


async def test_transient_errors_retry_and_poison_messages_are_dead_lettered(rabbit, monkeypatch, capfd):
    monkeypatch.setattr(broker_mod, "RETRY_MAX_SECONDS", 0.05)
    name = f"test.policy.{uuid.uuid4().hex[:8]}"
    arguments: dict[str, Any] = {**topology.queue_arguments(name), "x-delivery-limit": 3}

    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    await topology.declare(channel)
    await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)

    attempts: Counter[str] = Counter()
    handled: list[str] = []
    broker = make_broker(rabbit.url, service="test")

    @broker.subscriber(RabbitQueue(name, durable=True, declare=False, arguments=arguments))
    async def handle_sample(msg: Envelope[Sample]) -> None:
        attempts[msg.id] += 1
        if attempts[msg.id] <= msg.data.fail_times:
            raise RuntimeError("provider busy")
        handled.append(msg.id)

    await broker.start()
    try:

        async def send(body: bytes, message_id: str) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(body, message_id=message_id, content_type="application/cloudevents+json"),
                routing_key=name,
            )

        def event(fail_times: int) -> tuple[bytes, str]:
            envelope = build(Sample(fail_times=fail_times), service="test", subject="order-1")
            return json.dumps(envelope).encode(), envelope["id"]

        ok_body, ok_id = event(0)
        flaky_body, flaky_id = event(2)
        doomed_body, doomed_id = event(100)
        wrong = json.loads(event(0)[0])
        wrong["data"] = {"fail_times": "jane.doe@example.com"}  # the log says where and what kind, not this
        await send(ok_body, ok_id)
        await send(flaky_body, flaky_id)
        await send(b"{not json", "garbage-1")
        await send(json.dumps(wrong).encode(), "invalid-1")
        await send(doomed_body, doomed_id)

        dead = await _dead_letters(channel, name, {"garbage-1", "invalid-1", doomed_id}, timeout=30)
        assert dead == {"garbage-1", "invalid-1", doomed_id}
        assert sorted(handled) == sorted([ok_id, flaky_id])
        assert attempts[flaky_id] == 3  # failed twice, then handled
        assert attempts[doomed_id] == 4  # the first delivery and three redeliveries, then dead-lettered
        assert "garbage-1" not in attempts and "invalid-1" not in attempts
        logged = capfd.readouterr()
        assert "fail_times" in logged.out + logged.err and "int_parsing" in logged.out + logged.err
        assert "jane.doe" not in logged.out + logged.err
    finally:
        await broker.stop()
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()


def _now(read: Any) -> Any:
    async def probe() -> Any:
        return read()

    return probe


class FakeDatabase:
    """What the consume policy probes: a service runtime whose database is up or down."""

    def __init__(self) -> None:
        self.up = True
        self.stopping = False

    async def database_ok(self) -> bool:
        return self.up


async def test_an_outage_is_waited_out_without_spending_the_delivery_limit(rabbit, monkeypatch):
    """Unavailable, and a database error while the database does not answer its probe: the handler
    runs again in place for as long as it takes (here far more runs than the delivery limit),
    readiness reports the wait, and nothing is dead-lettered. A database error while the database
    answers is the message's own failure and is dead-lettered after the limit."""
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(broker_mod, "RETRY_MAX_SECONDS", 0.05)
    monkeypatch.setattr(broker_mod, "WAIT_MAX_SECONDS", 0.05)
    name = f"test.outage.{uuid.uuid4().hex[:8]}"
    arguments: dict[str, Any] = {**topology.queue_arguments(name), "x-delivery-limit": 2}

    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    await topology.declare(channel)
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)

    database = FakeDatabase()
    runs: Counter[str] = Counter()
    deliveries: dict[str, set[int]] = {}
    handled: list[str] = []
    waiting_seen: set[str] = set()
    snapshots: list[list[str]] = []
    broker = make_broker(rabbit.url, service="test")
    broker.context.set_global("runtime", database)
    outages = broker.context.get("oms_outages")

    @broker.subscriber(RabbitQueue(name, durable=True, declare=False, arguments=arguments))
    async def handle_sample(msg: Envelope[Sample], message: RabbitMessage) -> None:
        runs[msg.data.kind] += 1
        deliveries.setdefault(msg.data.kind, set()).add(
            int((message.headers or {}).get("x-delivery-count") or 0)
        )
        waiting_seen.update(outages.waiting())
        if msg.data.kind == "smtp" and runs["smtp"] <= 8:
            raise broker_mod.Unavailable("smtp", "ConnectionRefusedError")
        if msg.data.kind == "database" and runs["database"] <= 8:
            database.up = runs["database"] == 8  # down for seven runs, up again before the last failure
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
        if msg.data.kind == "switch":  # the SMTP server twice, then the database twice
            snapshots.append(outages.waiting())
            if runs["switch"] <= 2:
                raise broker_mod.Unavailable("smtp")
            if runs["switch"] <= 4:
                database.up = runs["switch"] == 4
                raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
            database.up = True
        if msg.data.kind == "bug":
            raise OperationalError("SELECT nope", {}, Exception("no such column: nope"))
        handled.append(msg.data.kind)

    await broker.start()
    try:
        sent: dict[str, str] = {}

        async def send(kind: str) -> None:
            envelope = build(Sample(kind=kind), service="test", subject="order-1")
            sent[kind] = envelope["id"]
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps(envelope).encode(), message_id=envelope["id"]), routing_key=name
            )

        await send("smtp")
        await send("bug")
        dead = await _dead_letters(channel, name, {sent["bug"]}, timeout=30)
        assert dead == {sent["bug"]}
        assert runs["bug"] == 3  # the first delivery and two redeliveries: the database answered
        await eventually(
            _now(lambda: list(handled)), lambda h: h == ["smtp"], timeout=30, what="smtp handled"
        )
        assert runs["smtp"] == 9 and deliveries["smtp"] == {0}, "waited in place: never redelivered"

        await send("database")  # alone: the fake database is down for every message while it is
        await eventually(
            _now(lambda: list(handled)), lambda h: len(h) == 2, timeout=30, what="database handled"
        )
        # the 8th run failed while the probe answered: that one counts, the seven before did not
        assert runs["database"] == 9 and deliveries["database"] == {0, 1}
        await send("switch")
        await eventually(
            _now(lambda: list(handled)), lambda h: len(h) == 3, timeout=30, what="switch handled"
        )
        # waiting for one dependency at a time; the 4th run failed with the database up: counted
        assert snapshots == [[], ["smtp"], ["smtp"], ["database"], []] and deliveries["switch"] == {0, 1}
        assert {"smtp", "database"} <= waiting_seen and outages.waiting() == []
        assert await _dead_letters(channel, name, {sent["smtp"], sent["database"]}, timeout=0.5) == set()
    finally:
        await broker.stop()
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()


async def test_a_message_waiting_out_an_outage_is_left_for_redelivery_when_the_consumer_stops(
    rabbit, monkeypatch
):
    monkeypatch.setattr(broker_mod, "WAIT_MAX_SECONDS", 0.05)
    name = f"test.outage-stop.{uuid.uuid4().hex[:8]}"
    arguments: dict[str, Any] = {**topology.queue_arguments(name), "x-delivery-limit": 2}

    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    await topology.declare(channel)
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
    runs = 0

    broker = make_broker(rabbit.url, service="test")

    @broker.subscriber(RabbitQueue(name, durable=True, declare=False, arguments=arguments))
    async def handle_sample(msg: Envelope[Sample]) -> None:
        nonlocal runs
        runs += 1
        raise broker_mod.Unavailable("smtp")

    await broker.start()
    try:
        envelope = build(Sample(), service="test", subject="order-1")
        await channel.default_exchange.publish(
            aio_pika.Message(json.dumps(envelope).encode(), message_id=envelope["id"]), routing_key=name
        )
        await eventually(_now(lambda: runs), lambda n: n >= 3, timeout=30, what="the handler waiting")
    finally:
        await broker.stop()
    try:
        # neither acknowledged nor returned by us: back in its queue once the connection closed
        message = await eventually(
            lambda: queue.get(no_ack=True, fail=False),
            lambda m: m is not None,
            timeout=30,
            what="the message back",
        )
        assert message.message_id == envelope["id"]
        assert await _dead_letters(channel, name, {envelope["id"]}, timeout=0.5) == set()
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()


@pytest.mark.parametrize("trace_messages", [True, False])
async def test_the_messages_trace_reaches_its_handler_with_or_without_a_span_per_message(
    rabbit, trace_messages
):
    """Where nothing records spans, no span is built per message, and the handler still runs in the
    message's trace: what it logs and emits carries the same trace id."""
    name = f"test.trace.{uuid.uuid4().hex[:8]}"
    arguments = topology.queue_arguments(name)
    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    await topology.declare(channel)
    await channel.declare_queue(name, durable=True, arguments=arguments)
    seen: list[str | None] = []
    broker = make_broker(rabbit.url, service="test", trace_messages=trace_messages)

    @broker.subscriber(RabbitQueue(name, durable=True, declare=False, arguments=arguments))
    async def handle_sample(msg: Envelope[Sample]) -> None:
        seen.append(current_trace_id())

    await broker.start()
    try:
        trace_id = uuid.uuid4().hex
        envelope = build(Sample(), service="test", subject="order-1")
        await channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps(envelope).encode(),
                message_id=envelope["id"],
                headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-00"},
            ),
            routing_key=name,
        )
        await eventually(lambda: asyncio.sleep(0, seen), bool, timeout=15, what="the message handled")
        assert seen == [trace_id]
        middlewares = {type(m).__name__ for m in broker.config.broker_middlewares}
        assert ("RabbitTelemetryMiddleware" in middlewares) is trace_messages
    finally:
        await broker.stop()
        await connection.close()
