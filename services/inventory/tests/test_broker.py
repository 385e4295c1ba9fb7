"""The service for real: its lifespan (ServiceRuntime) against a real RabbitMQ and a migrated SQLite
file. A reserve_stock command published to ``oms.commands`` is answered with ``stock.reserved`` on
``oms.events``; the same message again is not answered twice; a release gives the units back."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest
from asgi_lifespan import LifespanManager

from chassis.migrations import upgrade
from events.envelope import Message, build
from events.inventory import ReleaseStock, ReserveStock
from events.names import CLOUDEVENTS_CONTENT_TYPE, COMMANDS_EXCHANGE, EVENTS_EXCHANGE
from events.types import LineItem
from inventory.app import create_app
from inventory.config import Settings
from inventory.seed import load_demo_data

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
OPS = {"Authorization": "Bearer dev-ops-key"}
T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {value!r}")
        await asyncio.sleep(0.05)


async def send(channel: aio_pika.abc.AbstractChannel, envelope: dict[str, Any]) -> None:
    """Publish a command; the channel confirms, so this returns once the broker has it."""
    commands = await channel.get_exchange(COMMANDS_EXCHANGE, ensure=False)
    await commands.publish(
        aio_pika.Message(
            json.dumps(envelope).encode(),
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            message_id=envelope["id"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=envelope["type"].removeprefix("oms.command.").removesuffix(".v1"),
        mandatory=True,
    )


def command(payload: Message, order_id: str) -> dict[str, Any]:
    return build(payload, service="orders", subject=order_id)


async def test_a_reserve_command_on_the_broker_is_answered_with_stock_reserved(amqp_url, tmp_path):
    settings = Settings(
        amqp_url=amqp_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db",
        environment="test",
        outbox_poll_seconds=0.2,
    )
    await asyncio.to_thread(upgrade, MIGRATIONS, settings.database_url)
    await load_demo_data(settings)
    order_id = f"ord_{uuid.uuid4().hex}"

    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30):
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            watch = await channel.declare_queue(exclusive=True, auto_delete=True)
            for answer in ("stock.reserved", "stock.reservation_failed", "stock.released"):
                await watch.bind(EVENTS_EXCHANGE, routing_key=answer)

            async def next_event() -> dict[str, Any] | None:
                message = await watch.get(no_ack=True, fail=False)
                return json.loads(message.body) if message else None

            reserve = command(
                ReserveStock(
                    order_id=order_id,
                    items=[LineItem(sku="SKU-TEA-POT", quantity=3)],
                    country="DE",
                    latitude=52.52,
                    longitude=13.40,
                ),
                order_id,
            )
            await send(channel, reserve)
            reserved = await eventually(
                next_event, lambda e: e is not None, timeout=30, what="stock.reserved"
            )
            assert reserved["type"] == "oms.stock.reserved.v1" and reserved["source"] == "oms/inventory"
            assert (reserved["subject"], reserved["correlationid"], reserved["causationid"]) == (
                order_id,
                order_id,
                reserve["id"],
            )
            assert reserved["data"] == {
                "order_id": order_id,
                "parcel": None,
                "allocations": [{"warehouse": "FRA", "sku": "SKU-TEA-POT", "quantity": 3}],
            }

            # The same message again, then another order's: one queue, consumed in order, so the
            # next answer shows whether the duplicate was answered (it must not be).
            await send(channel, reserve)
            other = f"ord_{uuid.uuid4().hex}"
            await send(
                channel,
                command(
                    ReserveStock(
                        order_id=other, items=[LineItem(sku="SKU-RED-MUG", quantity=1)], country="CN"
                    ),
                    other,
                ),
            )
            answer = await eventually(next_event, lambda e: e is not None, timeout=30, what="the next answer")
            assert answer["subject"] == other, "the duplicate reserve was answered again"
            assert answer["data"]["allocations"] == [{"warehouse": "BJ", "sku": "SKU-RED-MUG", "quantity": 1}]

            release = command(ReleaseStock(order_id=order_id, reason="customer_request"), order_id)
            await send(channel, release)
            released = await eventually(
                next_event, lambda e: e is not None, timeout=30, what="stock.released"
            )
            assert released["type"] == "oms.stock.released.v1" and released["causationid"] == release["id"]
            assert released["data"]["allocations"] == reserved["data"]["allocations"]

            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://inventory"
            ) as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                level = (await client.get("/v1/stock/SKU-TEA-POT", headers=OPS)).json()
            assert (level["on_hand"], level["reserved"]) == (1400, 0)
        finally:
            await connection.close()
