"""A dependency down for a minute under a stream of orders (issue 14): the handlers that need it
wait it out (events.broker), nothing is dead-lettered, and once it is back everything is done,
each thing once. Each scenario prints its score: placed, delivered, cancelled, lost, twice.

The outage lasts 60 s, twice the ~31 s in which the delivery limit used to dead-letter every
message in flight; the streams are small and slow, so each test takes little more than the outage.
"""

from __future__ import annotations

import asyncio
import collections
import re
import uuid

import httpx
import pytest
from integration.faults import SCORES, Stream, dead_letters, settle
from integration.helpers import OPS, eventually, new_sku, receive

from notifications.templates import TEMPLATES
from omstools.system import SMTP
from omstools.verify import verify

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 60.0
ORDERS = 35
RATE = 2.0  # orders per second: the stream runs through most of the outage


async def _stocked_sku(inventory_url: str) -> str:
    sku = new_sku()
    async with httpx.AsyncClient(base_url=inventory_url, timeout=30) as inventory:
        for warehouse in ("SH", "BJ"):
            await receive(inventory, warehouse, sku, 1000)
    return sku


async def _orders(orders_url: str, customer: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=orders_url, timeout=30) as client:
        r = await client.get("/v1/orders", params={"customer_id": customer, "limit": 200}, headers=OPS)
        r.raise_for_status()
        return r.json()["items"]


async def _ready(url: str) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        try:
            r = await client.get("/readyz")
        except httpx.TransportError:
            return {"status": "unreachable"}
        return r.json()


async def _score(scenario: str, stream: Stream, orders_url: str, **extra: int) -> dict[str, int]:
    """Wait until every order is final; record and return placed, delivered, cancelled, lost, twice."""
    settled = await settle(stream)
    orders = await _orders(orders_url, stream.customer)
    counts = {
        "placed": settled.placed,
        "delivered": sum(o["status"] == "delivered" for o in orders),
        "cancelled": sum(o["status"] == "cancelled" for o in orders),
        "lost": settled.lost,
        "twice": settled.duplicated,
        **extra,
    }
    SCORES.append(f"{scenario}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def _urls(oms) -> dict[str, str]:
    return {s: oms.url(s) for s in ("orders", "inventory", "payments", "shipping")}


_SUBJECTS = [
    (re.compile(re.escape(subject).replace(re.escape("$order_id"), r"(?P<order>\S+)") + "$"), template)
    for template, locales in TEMPLATES.items()
    for subject, _ in locales.values()
]


def _mails_by_order_and_status(mailbox, order_ids: set[str]) -> collections.Counter[tuple[str, str]]:
    """How many e-mails each (order, status) got: the status read back from the subject."""
    sent: collections.Counter[tuple[str, str]] = collections.Counter()
    for mail in mailbox.all():
        for pattern, template in _SUBJECTS:
            match = pattern.match(mail.subject)
            if match and match["order"] in order_ids:
                sent[(match["order"], template.removeprefix("order."))] += 1
                break
    return sent


@pytest.mark.usefixtures("simulated_carrier")
async def test_the_smtp_server_down_for_a_minute_sends_every_email_once_when_it_is_back(oms, mailbox):
    sku = await _stocked_sku(oms.url("inventory"))
    parked_before = {d["id"] for d in await dead_letters(oms.url("orders"))}
    stream = Stream(oms.url("orders"), sku, ORDERS, rate=RATE, customer=f"cust-smtp-{uuid.uuid4().hex[:8]}")

    await asyncio.to_thread(oms.stop_service, SMTP)
    down_at = asyncio.get_running_loop().time()
    try:
        placing = asyncio.create_task(stream.run())
        waiting = await eventually(
            lambda: _ready(oms.url("notifications")), lambda r: "smtp" in r.get("waiting_for", []),
            timeout=OUTAGE_SECONDS, what="notifications not ready, waiting for the SMTP server",
        )
        assert waiting["checks"]["dependencies"] is False
        await placing
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (asyncio.get_running_loop().time() - down_at)))  # the outage
    finally:
        await asyncio.to_thread(oms.start_smtp)

    score = await _score("SMTP server down 60 s", stream, oms.url("orders"))
    assert score["placed"] == ORDERS and score["lost"] == 0 and score["twice"] == 0, score
    assert score["cancelled"] == 0 and score["delivered"] == ORDERS, score

    orders = await _orders(oms.url("orders"), stream.customer)
    expected = {(o["id"], h["status"]) for o in orders for h in (await _history(oms, o["id"]))}
    sent = await eventually(
        lambda: asyncio.to_thread(_mails_by_order_and_status, mailbox, {o["id"] for o in orders}),
        lambda s: set(s) >= expected, timeout=120, what="an e-mail for every status of every order",
    )
    twice = {k: n for k, n in sent.items() if n > 1}
    assert not twice and set(sent) == expected, (twice, set(sent) ^ expected)
    SCORES.append(f"SMTP server down 60 s: e-mails expected={len(expected)} sent={sum(sent.values())} twice={len(twice)}")

    parked = [d for d in await dead_letters(oms.url("orders")) if d["id"] not in parked_before]
    assert parked == [], "nothing is dead-lettered by an outage"
    assert (await _ready(oms.url("notifications")))["status"] == "ready"
    report = await verify(_urls(oms), settle=60)
    assert report.ok, report.render()


async def _history(oms, order_id: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=oms.url("orders"), timeout=30) as client:
        r = await client.get(f"/v1/orders/{order_id}", headers=OPS)
        r.raise_for_status()
        return r.json()["history"]
