"""A consumed message is decoded and its handler's shared resources resolved in the event loop.

FastStream runs a synchronous decoder, and fast_depends a synchronous ``Context`` look-up, in a
worker thread: a thread hop each, per message, for a ``json.loads`` or a dictionary look-up."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from faststream.rabbit import TestRabbitBroker

from chassis.broker import Resource, make_broker
from events.envelope import Command, Envelope, build


class Ping(Command):
    routing_key = "test.ping"
    n: int


async def test_decoding_and_resources_take_no_worker_thread(monkeypatch):
    hops: list[object] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(func, *args, **kwargs):
        hops.append(func)
        return await real_run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)

    broker = make_broker("amqp://guest:guest@127.0.0.1:1/", service="test")
    broker.context.set_global("greeting", "hello")
    seen: list[tuple[int, str]] = []

    @broker.subscriber("test.ping")
    async def handle_ping(msg: Envelope[Ping], greeting: Annotated[str, Resource("greeting")]) -> None:
        seen.append((msg.data.n, greeting))

    async with TestRabbitBroker(broker) as test_broker:
        await test_broker.publish(build(Ping(n=7), service="test", subject=None), "test.ping")

    assert seen == [(7, "hello")]
    assert hops == []
