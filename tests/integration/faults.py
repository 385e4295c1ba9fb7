"""Tools of the fault tests: a gateway-like order stream, a message duplicator, a scorecard."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field

import aio_pika
import httpx
from integration.helpers import ADMIN, FINAL, GATEWAY, OPS, order_body

DUPLICATE_HEADER = "x-oms-test-duplicate"
SCORES: list[str] = []  # one line per fault scenario, printed at the end of the run


@dataclass
class Stream:
    """Places ``count`` orders at ``rate`` per second like a real gateway: one Idempotency-Key per
    order, retried (same key) on a refused connection, a 5xx or a 409 until it gets its 202."""

    orders_url: str
    sku: str
    count: int
    rate: float = 40.0
    customer: str = field(default_factory=lambda: f"cust-{uuid.uuid4().hex[:10]}")
    placed: dict[str, str] = field(default_factory=dict)  # idempotency key -> order id
    retries: int = 0
    given_up: list[str] = field(default_factory=list)

    async def run(self, *, give_up_after: float = 120.0) -> None:
        async with httpx.AsyncClient(base_url=self.orders_url, timeout=10) as client:
            tasks = []
            for i in range(self.count):
                tasks.append(asyncio.create_task(self._place(client, f"{self.customer}-{i}", give_up_after)))
                await asyncio.sleep(1 / self.rate)
            await asyncio.gather(*tasks)

    async def _place(self, client: httpx.AsyncClient, key: str, give_up_after: float) -> None:
        body = order_body(
            customer_id=self.customer, items=[{"sku": self.sku, "quantity": 1, "unit_price": "3.00"}]
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        delay = 0.2
        while loop.time() < deadline:
            try:
                r = await client.post("/v1/orders", json=body, headers={**GATEWAY, "Idempotency-Key": key})
                if r.status_code == 202 or r.status_code == 200:
                    self.placed[key] = r.json()["id"]
                    return
                assert r.status_code in (409, 500, 502, 503), f"unexpected answer {r.status_code}: {r.text}"
            except httpx.TransportError:
                pass
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.given_up.append(key)


@dataclass
class Score:
    placed: int
    final: int
    lost: int
    duplicated: int
    delivered: int = 0
    cancelled: dict[str, int] = field(default_factory=dict)  # by reason

    def line(self, scenario: str) -> str:
        cancelled = sum(self.cancelled.values())
        reasons = f" {self.cancelled}" if cancelled else ""
        return (
            f"{scenario}: placed={self.placed} delivered={self.delivered} cancelled={cancelled}{reasons} "
            f"final={self.final} lost={self.lost} twice={self.duplicated}"
        )


async def settle(stream: Stream, *, timeout: float = 180.0) -> Score:
    """Wait until every placed order is final; count lost (never placed or never final) and
    duplicated (more orders for the customer than keys, or a payment taken twice)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(base_url=stream.orders_url, timeout=30) as client:
        while True:
            orders = await _orders_of(client, stream.customer)
            final = [o for o in orders if o["status"] in FINAL]
            if len(final) >= len(stream.placed) or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)
    ids = {o["id"] for o in orders}
    lost = len(stream.given_up) + len(set(stream.placed.values()) - {o["id"] for o in final})
    duplicated = len(ids - set(stream.placed.values())) + (
        len(stream.placed) - len(set(stream.placed.values()))
    )
    cancelled: dict[str, int] = {}
    for o in final:
        if o["status"] == "cancelled":
            cancelled[o["status_reason"]] = cancelled.get(o["status_reason"], 0) + 1
    delivered = sum(1 for o in final if o["status"] == "delivered")
    return Score(
        placed=len(stream.placed),
        final=len(final),
        lost=lost,
        duplicated=duplicated,
        delivered=delivered,
        cancelled=cancelled,
    )


async def _orders_of(client: httpx.AsyncClient, customer: str) -> list[dict]:
    items, cursor = [], None
    while True:
        params = {"customer_id": customer, "limit": 200, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/orders", params=params, headers=OPS)
        r.raise_for_status()
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


class Duplicator:
    """Publishes every event and command a second time, concurrently with the first delivery:
    a queue bound to everything on both exchanges, each message re-published with the same body
    (so the same CloudEvents id) and a header that keeps the copy from being copied again."""

    def __init__(self, amqp_url: str) -> None:
        self.url = amqp_url
        self.copied = 0
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        from events import topology

        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=200)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        events = await channel.get_exchange("oms.events")
        commands = await channel.get_exchange("oms.commands")
        await queue.bind(events, routing_key="#")
        for spec in topology.QUEUES:
            if spec.exchange == "oms.commands":
                await queue.bind(commands, routing_key=spec.routing_key)
        exchanges = {"oms.events": events, "oms.commands": commands}

        async def copy(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                if (message.headers or {}).get(DUPLICATE_HEADER):
                    return
                twin = aio_pika.Message(
                    message.body,
                    content_type=message.content_type,
                    message_id=message.message_id,
                    type=message.type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={**(message.headers or {}), DUPLICATE_HEADER: 1},
                )
                await exchanges[message.exchange].publish(twin, routing_key=message.routing_key)
                self.copied += 1

        await queue.consume(copy)

    async def stop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()


async def dead_letters(orders_url: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=orders_url, timeout=30) as client:
        r = await client.get("/v1/dead-letters", params={"limit": 500}, headers=ADMIN)
        r.raise_for_status()
        return r.json()["items"]


def poison_bodies(message_id: str) -> dict[str, bytes]:
    """Messages no consumer can ever handle: not JSON, JSON but no CloudEvent, a CloudEvent whose
    data does not validate (with ``message_id`` as its id)."""
    return {
        "not-json": b"\x00\x01 this is not json",
        "not-an-event": json.dumps({"hello": "world"}).encode(),
        "bad-data": json.dumps(
            {
                "specversion": "1.0",
                "id": message_id,
                "type": "oms.unknown.v1",
                "source": "test",
                "time": "2026-11-24T00:00:00Z",
                "data": {"order_id": 42},
            }
        ).encode(),
    }
