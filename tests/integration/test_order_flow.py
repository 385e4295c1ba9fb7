"""The walking skeleton, end to end: five real service processes on a real broker.

An order placed over HTTP goes submitted → confirmed → paid → picking → shipped → in_transit →
delivered, driven by the simulated carrier; the customer gets an e-mail at each step, in their
language, and one with the parcel's carrier, tracking number and link; the stock it took leaves the
shelf for good.
"""

from __future__ import annotations

import pytest
from integration.helpers import GATEWAY, OPS, eventually, get_order, order_body, place, stock, wait_status

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("simulated_carrier")]

HAPPY = ["submitted", "confirmed", "paid", "picking", "shipped", "in_transit", "delivered"]


async def test_an_order_reaches_delivered_with_nobody_touching_it(orders, inventory, mailbox):
    before = await stock(inventory, "SKU-RED-MUG")
    email = "walk.skeleton@example.com"
    created = await place(orders, order_body(email=email, locale="zh-CN"))
    assert created["status"] == "submitted"
    assert created["total"] == "79.80" and created["currency"] == "CNY"

    order = await wait_status(orders, created["id"], "delivered", timeout=60)
    assert [h["status"] for h in order["history"]] == HAPPY
    assert order["payment"] == {
        "status": "captured",
        "method": "card",
        "amount": "79.80",
        "refunded_amount": "0.00",
    }
    shipment = order["shipment"]
    assert shipment["carrier"] and shipment["tracking_number"] and shipment["estimated_delivery"]
    assert shipment["status"] == "delivered"

    after = await stock(inventory, "SKU-RED-MUG")
    assert after["on_hand"] == before["on_hand"] - 2, "delivered units leave the shelf"
    assert after["reserved"] == before["reserved"]

    # One e-mail per step, and one when the parcel left with its carrier, tracking number and
    # link: to the customer, in Chinese.
    mails = await eventually(
        lambda: mailbox.to(email), lambda m: len(m) >= len(HAPPY) + 1, timeout=30, what="an e-mail per status"
    )
    assert len(mails) == len(HAPPY) + 1
    assert all(created["id"] in m.body for m in mails)
    [shipped] = [m for m in mails if shipment["tracking_number"] in m.subject]
    assert shipment["carrier"] in shipped.body and shipment["tracking_url"] in shipped.body
    assert any("订单" in m.subject for m in mails), [m.subject for m in mails]


async def test_english_customers_are_written_to_in_english(orders, mailbox):
    email = "english.reader@example.com"
    created = await place(orders, order_body(email=email, locale="en"))
    await wait_status(orders, created["id"], "delivered", timeout=60)
    mails = await eventually(
        lambda: mailbox.to(email), lambda m: len(m) >= len(HAPPY), timeout=30, what="e-mails"
    )
    assert all(m.subject.isascii() for m in mails), [m.subject for m in mails]


async def test_every_service_is_healthy_ready_and_measured(clients):
    for name, client in clients.items():
        assert (await client.get("/healthz")).status_code == 200, name
        ready = await client.get("/readyz")
        assert ready.status_code == 200, (name, ready.text)
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "oms_http_requests" in metrics.text, name


async def test_orders_can_be_listed_newest_first_by_status_and_customer(orders):
    ids = [(await place(orders, order_body()))["id"] for _ in range(3)]
    page = (await orders.get("/v1/orders", params={"customer_id": "cust-42", "limit": 2}, headers=OPS)).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert page["items"][0]["id"] == ids[-1]
    rest = (
        await orders.get(
            "/v1/orders",
            params={"customer_id": "cust-42", "limit": 2, "cursor": page["next_cursor"]},
            headers=OPS,
        )
    ).json()
    assert rest["items"][0]["id"] == ids[0]
    for order_id in ids:
        await wait_status(orders, order_id, "delivered", timeout=60)
    delivered = (
        await orders.get("/v1/orders", params={"status": "delivered", "limit": 100}, headers=GATEWAY)
    ).json()
    assert set(ids) <= {o["id"] for o in delivered["items"]}
    assert (await get_order(orders, ids[0]))["status"] == "delivered"
