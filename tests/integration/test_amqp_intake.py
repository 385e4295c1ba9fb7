"""Gateways that place orders with a command on RabbitMQ (CONTRACT §6): a good one is answered
with order.placed, a bad one with order.rejected naming the fields, never dropped in silence; the
CloudEvents id is the idempotency key."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import pytest
from integration.helpers import GATEWAY, MARKETPLACE, eventually, order_body

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("manual_carrier")]


def _command(data: dict, command_id: str) -> bytes:
    """A gateway's command; its ``source`` names the gateway, and the key of that name reads it."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": command_id,
            "type": "oms.command.orders.place_order.v1",
            "source": "dev-gateway",
            "time": "2026-11-24T12:00:00Z",
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


@pytest.fixture
async def gateway(rabbit):
    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    replies = await channel.declare_queue(exclusive=True)
    events = await channel.get_exchange("oms.events")
    for key in ("order.placed", "order.rejected"):
        await replies.bind(events, routing_key=key)
    commands = await channel.get_exchange("oms.commands")

    async def send(data: dict, command_id: str) -> None:
        await commands.publish(
            aio_pika.Message(
                _command(data, command_id),
                content_type="application/cloudevents+json",
                message_id=command_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="orders.place_order",
            mandatory=True,
        )

    async def reply_to(command_id: str, timeout: float = 20) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            message = await replies.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            event = json.loads(message.body)
            if event.get("causationid") == command_id or event["data"].get("command_id") == command_id:
                return event
        raise AssertionError(f"no reply to command {command_id}")

    yield send, reply_to
    await connection.close()


async def test_a_good_place_order_command_is_answered_with_order_placed(gateway, orders):
    send, reply_to = gateway
    command_id = str(uuid.uuid4())
    await send(order_body(), command_id)
    placed = await reply_to(command_id)
    assert placed["type"] == "oms.order.placed.v1"
    order_id = placed["data"]["order_id"]
    assert placed["subject"] == order_id and placed["correlationid"] == order_id
    assert "email" not in json.dumps(placed) and "Lin Mei" not in json.dumps(placed), (
        "events carry no contact details"
    )
    r = await eventually(
        lambda: orders.get(f"/v1/orders/{order_id}", headers=GATEWAY), lambda r: r.status_code == 200
    )
    assert r.json()["channel"] == "web"
    assert r.json()["history"][0]["actor"] == "dev-gateway"
    assert (await orders.get(f"/v1/orders/{order_id}", headers=MARKETPLACE)).status_code == 404, (
        "another gateway's"
    )


async def test_the_same_command_id_twice_is_one_order(gateway, orders):
    send, reply_to = gateway
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    command_id, marker_id = str(uuid.uuid4()), str(uuid.uuid4())
    await send(order_body(customer_id=customer), command_id)
    await reply_to(command_id)
    await send(order_body(customer_id=customer), command_id)  # redelivered or re-sent by the gateway
    await send(order_body(customer_id=customer), marker_id)  # a different order, sent after it
    await reply_to(marker_id)
    listed = await orders.get("/v1/orders", params={"customer_id": customer, "limit": 10}, headers=GATEWAY)
    assert len(listed.json()["items"]) == 2


async def test_a_bad_command_is_answered_with_order_rejected_naming_the_fields(gateway):
    send, reply_to = gateway
    bad = order_body()
    bad["items"][0]["quantity"] = 0
    bad["payment"]["method"] = "cash"
    del bad["shipping_address"]
    command_id = str(uuid.uuid4())
    await send(bad, command_id)
    rejected = await reply_to(command_id)
    assert rejected["type"] == "oms.order.rejected.v1"
    fields = {e["field"] for e in rejected["data"]["errors"]}
    assert {"items.0.quantity", "payment.method", "shipping_address"} <= fields, fields
