"""The service for real: its lifespan against a real RabbitMQ, a migrated SQLite file and a real SMTP
server. The event is published before the recipient's command, so the retry with back-off is real too."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest
from asgi_lifespan import LifespanManager

from chassis.migrations import upgrade
from events.envelope import Message, build
from events.names import CLOUDEVENTS_CONTENT_TYPE, COMMANDS_EXCHANGE, EVENTS_EXCHANGE
from events.notifications import RegisterRecipient
from events.orders import OrderStatusChanged
from notifications.app import create_app
from notifications.config import Settings

from .test_smtp import smtp  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T] | T], accept: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if accept(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {value!r}")
        await asyncio.sleep(0.05)


async def publish(
    channel: aio_pika.abc.AbstractChannel, exchange: str, payload: Message, subject: str
) -> str:
    envelope = build(payload, service="orders", subject=subject)
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(  # the channel confirms: this returns once the broker has the message
        aio_pika.Message(
            json.dumps(envelope).encode(),
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            message_id=envelope["id"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=payload.routing_key,
        mandatory=True,
    )
    return envelope["id"]


async def test_an_event_on_the_broker_reaches_the_customers_inbox(amqp_url, smtp, tmp_path):  # noqa: F811
    controller, inbox = smtp
    settings = Settings(
        amqp_url=amqp_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/notifications.db",
        environment="test",
        smtp_port=controller.port,
        outbox_poll_seconds=0.2,
    )
    await asyncio.to_thread(upgrade, MIGRATIONS, settings.database_url)
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    address = f"{order_id}@example.com"

    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30):
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            watch = await channel.declare_queue(exclusive=True, auto_delete=True)
            await watch.bind(EVENTS_EXCHANGE, routing_key="notification.*")

            event = OrderStatusChanged(
                order_id=order_id,
                customer_id="cust-42",
                from_status=None,
                to_status="submitted",
                at=datetime.now(UTC),
            )
            event_id = await publish(channel, EVENTS_EXCHANGE, event, order_id)
            await publish(
                channel,
                COMMANDS_EXCHANGE,
                RegisterRecipient(
                    order_id=order_id,
                    customer_id="cust-42",
                    name="Lin Mei",
                    email=address,
                    locale="zh-CN",
                ),
                order_id,
            )

            mails = await eventually(
                lambda: [m for m in inbox.messages if address in str(m["To"])],
                lambda m: len(m) >= 1,
                timeout=30,
                what="the e-mail at the SMTP server",
            )
            assert mails[0]["Subject"] == f"我们已收到您的订单 {order_id}"
            assert order_id in mails[0].get_content()

            async def sent_event() -> dict[str, Any] | None:
                message = await watch.get(no_ack=True, fail=False)
                return json.loads(message.body) if message else None

            sent = await eventually(sent_event, lambda e: e is not None, timeout=30, what="notification.sent")
            assert sent["type"] == "oms.notification.sent.v1"
            assert sent["data"] == {
                "order_id": order_id,
                "channel": "email",
                "template": "order.submitted",
                "locale": "zh-CN",
            }
            assert sent["causationid"] == event_id and address not in json.dumps(sent)

            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                listed = (
                    await client.get(
                        "/v1/notifications",
                        params={"order_id": order_id},
                        headers={"Authorization": "Bearer dev-ops-key"},
                    )
                ).json()["items"]
            assert [(n["status"], n["recipient"]) for n in listed] == [("sent", "o***@example.com")]
            assert len(inbox.messages) == 1, "one event, one e-mail"
        finally:
            await connection.close()
