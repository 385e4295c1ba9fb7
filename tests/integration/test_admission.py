"""Admission control on the real system: a burst of orders faster than the services take them is
refused at the door (503 with Retry-After, nothing stored) once too many are in flight for the
pace they are paid at, and each refused request is placed when sent again later with its key.

Orders runs with a tight door here (5 in flight, 0.5 s of waiting), so a short burst is enough;
its defaults are put back afterwards."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from integration.helpers import GATEWAY, eventually, new_sku, order_body, receive, wait_status

from orders.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("manual_carrier")]

DEFAULTS = Settings()
TIGHT = {"ORDERS_ADMISSION_MIN_IN_FLIGHT": "5", "ORDERS_ADMISSION_MAX_WAIT_SECONDS": "0.5"}
BURST, RATE = 120, 40.0


async def test_a_burst_past_what_the_system_takes_is_refused_at_the_door_and_placed_later(
    oms, orders, inventory
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 2 * BURST)
    items = [{"sku": sku, "quantity": 1, "unit_price": "10.00"}]

    async def post(key: str) -> httpx.Response:
        return await orders.post(
            "/v1/orders", json=order_body(items=items), headers={**GATEWAY, "Idempotency-Key": key}
        )

    await asyncio.to_thread(oms.restart, "orders", TIGHT)
    try:
        keys = [str(uuid.uuid4()) for _ in range(BURST)]
        answers: dict[str, httpx.Response] = {}

        async def one(key: str) -> None:
            answers[key] = await post(key)

        tasks = []
        for key in keys:
            tasks.append(asyncio.create_task(one(key)))
            await asyncio.sleep(1 / RATE)
        await asyncio.gather(*tasks)
        accepted = [k for k in keys if answers[k].status_code == 202]
        refused = [k for k in keys if answers[k].status_code == 503]
        assert len(accepted) + len(refused) == BURST, {r.status_code for r in answers.values()}
        assert accepted and refused, f"{len(accepted)} accepted, {len(refused)} refused"
        assert all(answers[k].headers["Retry-After"].isdigit() for k in refused)
        assert answers[refused[0]].json()["type"].endswith("/overloaded")

        for key in accepted:
            await wait_status(orders, answers[key].json()["id"], "picking", timeout=90)
        # sent again with the same keys once the burst is over: placed, each once
        for key in refused[:5]:
            placed = await eventually(
                lambda key=key: post(key),
                lambda r: r.status_code == 202,
                what="a refused order to be placed when sent again",
            )
            assert (await wait_status(orders, placed.json()["id"], "picking"))["payment"][
                "status"
            ] == "captured"
            assert (await post(key)).json()["id"] == placed.json()["id"]
    finally:
        await asyncio.to_thread(
            oms.restart,
            "orders",
            {
                "ORDERS_ADMISSION_MIN_IN_FLIGHT": str(DEFAULTS.admission_min_in_flight),
                "ORDERS_ADMISSION_MAX_WAIT_SECONDS": str(DEFAULTS.admission_max_wait_seconds),
            },
        )
