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
from faststream.rabbit import RabbitQueue

from events import broker as broker_mod
from events import topology
from events.broker import make_broker
from events.envelope import Command, Envelope, build
from events.names import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE

pytestmark = pytest.mark.integration


class Sample(Command):
    routing_key = "test.sample"
    fail_times: int = 0


async def _dead_letters(channel: aio_pika.abc.AbstractChannel, queue: str, wanted: set[str], timeout: float) -> set[str]:
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


async def test_transient_errors_retry_and_poison_messages_are_dead_lettered(rabbit, monkeypatch):
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
        wrong["data"] = {"fail_times": "many"}
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
    finally:
        await broker.stop()
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()
