"""Admission control on the real system: with inventory down, accepted orders wait for their stock
answer; once too many have waited too long, a new order is refused with 503 and Retry-After, and
the same request is placed once inventory is back and the backlog drains."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from integration.helpers import GATEWAY, eventually, new_sku, order_body, place, receive, wait_status

from orders.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("manual_carrier")]

DEFAULTS = Settings()


async def test_the_door_closes_while_orders_pile_up_and_opens_when_they_move(oms, orders, inventory):
    sku = new_sku()
    await receive(inventory, "SH", sku, 100)
    items = [{"sku": sku, "quantity": 1, "unit_price": "10.00"}]
    await asyncio.to_thread(oms.stop_service, "inventory")
    accepted: list[str] = []
    try:
        for _ in range(DEFAULTS.admission_late_orders):
            accepted.append((await place(orders, order_body(items=items)))["id"])

        async def attempt(key: str | None = None) -> httpx.Response:
            r = await orders.post("/v1/orders", json=order_body(items=items),
                                  headers={**GATEWAY, "Idempotency-Key": key or str(uuid.uuid4())})
            if r.status_code == 202:  # the door still open: one more order waits
                accepted.append(r.json()["id"])
            return r

        refused = await eventually(attempt, lambda r: r.status_code == 503,
                                   timeout=DEFAULTS.admission_max_wait_seconds + 20, what="the door to close")
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["type"].endswith("/overloaded")
        key = refused.request.headers["Idempotency-Key"]
    finally:
        await asyncio.to_thread(oms.start, "inventory")
        await asyncio.to_thread(oms.wait_ready, ["inventory"])
    for order_id in accepted:
        await wait_status(orders, order_id, "picking", timeout=60)
    placed = await eventually(lambda: attempt(key), lambda r: r.status_code == 202, what="the door to open again")
    assert (await wait_status(orders, placed.json()["id"], "picking"))["payment"]["status"] == "captured"
    assert (await attempt(key)).json()["id"] == placed.json()["id"]  # the same key: the same order, once
