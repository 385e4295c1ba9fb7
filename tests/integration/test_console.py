"""The ops console in a real browser (the system's Chromium, driven by Playwright) on the running
system: an admin finds an order by the customer's e-mail and cancels it, an ops session is
refused the actions, the dashboard's charts move while orders flow, a dead letter is replayed.

The dashboard and the order page are photographed into docs/ (the README shows them).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import httpx
import pytest
from integration.helpers import (
    ADMIN,
    OPS,
    eventually,
    get_order,
    new_sku,
    order_body,
    place,
    receive,
    stock,
    wait_status,
)
from playwright.async_api import Browser, Page, async_playwright, expect

from events import topology

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("manual_carrier")]

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 (once, before the browser starts)
        pytest.fail(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in(browser: Browser, oms, key: str) -> Page:
    context = await browser.new_context(viewport={"width": 1366, "height": 900}, locale="en-US")
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    await page.goto(f"{oms.url('orders')}/ops")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page


async def stocked_order(orders, inventory, email: str) -> tuple[str, str, int]:
    """An order of 2 units of a SKU of its own, paid and with the (manual) carrier's warehouse;
    returns its id, the SKU and the units available before it."""
    sku = new_sku()
    await receive(inventory, "SH", sku, 10)
    before = (await stock(inventory, sku))["available"]
    body = order_body(email=email, items=[{"sku": sku, "quantity": 2, "unit_price": "12.50"}])
    order = await place(orders, body)
    await wait_status(orders, order["id"], "picking")
    return order["id"], sku, before


async def test_an_admin_finds_an_order_by_email_and_cancels_it_with_the_stock_back(
    oms, orders, inventory, browser
):
    email = f"console.{uuid.uuid4().hex[:8]}@example.com"
    order_id, sku, before = await stocked_order(orders, inventory, email)
    assert (await stock(inventory, sku))["available"] == before - 2

    page = await signed_in(browser, oms, "dev-admin-key")
    await page.get_by_role("link", name="Orders", exact=True).click()
    await page.get_by_label("Search orders").fill(email.upper())  # e-mails match whatever their case
    await page.get_by_label("Search orders").press("Enter")
    await page.get_by_role("link", name=order_id).click()
    await expect(page).to_have_url(f"{oms.url('orders')}/ops/orders/{order_id}")

    timeline = page.get_by_role("region", name="History").get_by_role("listitem")
    await expect(timeline).to_have_count(4)
    await expect(timeline).to_contain_text(["submitted", "confirmed", "paid", "picking"])
    await expect(page.get_by_role("region", name="Saga messages")).to_contain_text("inventory.reserve_stock")
    await page.screenshot(path=str(DOCS / "console-order.png"), full_page=True)

    # keyboard only: the button opens its form with the focus in Reason; Escape closes it again
    await page.get_by_role("button", name="Cancel order").focus()
    await page.keyboard.press("Enter")
    form = page.get_by_role("form", name="Cancel order")
    await expect(form.get_by_label("Reason")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(form).to_be_hidden()
    await expect(page.get_by_role("button", name="Cancel order")).to_be_focused()
    await page.get_by_role("button", name="Cancel order").click()
    await form.get_by_label("Reason").fill("the customer phoned to cancel")
    await form.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#order-status")).to_have_text("cancelled")
    await expect(page.get_by_role("status")).to_contain_text("Cancel requested.")
    await expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)
    await expect(timeline.last).to_contain_text("dev-admin")  # who did it, and why
    await expect(timeline.last).to_contain_text("the customer phoned to cancel")

    order = await get_order(orders, order_id)
    assert order["status"] == "cancelled" and order["status_reason"] == "customer_request"
    await eventually(
        lambda: stock(inventory, sku), lambda s: s["available"] == before, what="the stock released"
    )
    await page.get_by_role("link", name="Stock", exact=True).click()
    await page.get_by_label("Look up a SKU").fill(sku)
    await page.get_by_role("button", name="Show").click()
    total = page.get_by_role("row", name="Total")
    await expect(total.get_by_role("cell").nth(2)).to_have_text(str(before))  # available: all back
    await page.context.close()


async def test_an_ops_session_sees_no_action_and_is_refused_if_it_posts_anyway(
    oms, orders, inventory, browser
):
    order_id, _sku, _before = await stocked_order(
        orders, inventory, f"ops.{uuid.uuid4().hex[:8]}@example.com"
    )
    page = await signed_in(browser, oms, "dev-ops-key")
    await page.goto(f"{oms.url('orders')}/ops/orders/{order_id}")
    await expect(page.locator("#order-status")).to_have_text("picking")
    for name in ("Cancel order", "Refund", "Change address", "Resolve", "Confirm"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)

    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")  # the sign-out form's
    refused = await page.request.post(
        f"{oms.url('orders')}/ops/orders/{order_id}/cancel",
        form={"reason": "not mine to do", "csrf_token": token},
        max_redirects=0,
    )
    assert refused.status == 403
    assert (await get_order(orders, order_id))["status"] == "picking"
    await page.context.close()


CHART_SUM = "id => Chart.getChart(id).data.datasets[0].data.reduce((a, b) => a + (b || 0), 0)"


async def test_the_dashboard_charts_draw_and_change_without_a_reload(oms, orders, inventory, browser):
    sku = new_sku()
    await receive(inventory, "SH", sku, 50)
    page = await signed_in(browser, oms, "dev-ops-key")
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    await page.wait_for_function(
        "() => window.Chart && Chart.getChart('chart-throughput')"
        " && Chart.getChart('chart-throughput').data.labels.length === 60"
    )
    for chart in ("chart-status", "chart-latency"):
        assert await page.evaluate("id => Chart.getChart(id) !== undefined", chart)
    await page.evaluate("() => { window.notReloaded = true }")
    placed = await page.evaluate(f"({CHART_SUM})('chart-throughput')")
    status_total = await page.evaluate(f"({CHART_SUM})('chart-status')")
    updated = await page.locator("#live time").get_attribute("datetime")

    for _ in range(5):
        await place(orders, order_body(items=[{"sku": sku, "quantity": 1, "unit_price": "3.00"}]))
    await page.wait_for_function(f"n => ({CHART_SUM})('chart-throughput') >= n + 5", arg=placed)
    await page.wait_for_function(f"n => ({CHART_SUM})('chart-status') >= n + 5", arg=status_total)
    await page.wait_for_function(
        "t => document.querySelector('#live time').getAttribute('datetime') !== t", arg=updated
    )
    assert await page.evaluate("() => window.notReloaded === true"), "the page was reloaded"
    await page.screenshot(path=str(DOCS / "console-dashboard.png"), full_page=True)
    await page.context.close()


async def parked(orders, marker: str) -> list[dict]:
    """The dead letters whose body carries ``marker`` (a replay goes out under a message id of its own)."""
    r = await orders.get("/v1/dead-letters", params={"status": "all", "limit": 500}, headers=ADMIN)
    r.raise_for_status()
    return [d for d in r.json()["items"] if marker in d["body"]]


async def test_a_dead_letter_is_replayed_from_its_page(oms, rabbit, orders, browser):
    queue = next(q.name for q in topology.QUEUES if q.name != "orders.place_order")
    message_id = f"console-poison-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(oms.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        body = json.dumps({"hello": message_id, "customer": {"email": "lin@example.com"}}).encode()
        await channel.default_exchange.publish(
            aio_pika.Message(body, message_id=message_id, content_type="application/cloudevents+json"),
            routing_key=queue,
        )
    finally:
        await connection.close()
    first = (
        await eventually(lambda: parked(orders, message_id), lambda d: len(d) == 1, what="the poison parked")
    )[0]

    page = await signed_in(browser, oms, "dev-admin-key")
    await page.get_by_role("link", name="Dead letters", exact=True).click()
    letter = page.get_by_role("article").filter(has_text=message_id)
    await expect(letter).to_contain_text(queue)
    await letter.get_by_text("Body (personal data and tokens masked)").click()
    await expect(letter.locator("pre")).to_contain_text('"email": "***"')  # masked when it was parked
    await expect(letter.locator("pre")).not_to_contain_text("@example.com")
    await letter.get_by_role("button", name="Replay").click()
    await expect(page.get_by_role("status")).to_contain_text("Replayed.")

    # Back in the queue it died in, where it fails again and is parked anew: it was re-sent.
    letters = await eventually(
        lambda: parked(orders, message_id), lambda d: len(d) == 2, what="the replay parked again"
    )
    assert {d["id"]: d["status"] for d in letters}[first["id"]] == "replayed"
    assert [d["queue"] for d in letters] == [queue, queue]
    await page.context.close()


async def test_an_admin_refunds_and_receives_stock_through_the_other_services(
    oms, orders, inventory, payments
):
    """Without a browser: the console's forms sent as a browser would, to show refunds reach
    payments and receipts reach inventory, each naming the admin who acted."""
    order_id, sku, before = await stocked_order(
        orders, inventory, f"refund.{uuid.uuid4().hex[:8]}@example.com"
    )
    async with httpx.AsyncClient(base_url=oms.url("orders"), timeout=30) as console:
        signed = await console.post("/ops/sign-in", data={"api_key": "dev-admin-key"})
        assert signed.status_code == 303
        token = re.search(r'name="csrf_token" value="([^"]+)"', (await console.get("/ops/stock")).text).group(
            1
        )

        r = await console.post(
            f"/ops/orders/{order_id}/refund",
            data={"amount": "5.00", "reason": "a mug arrived chipped", "csrf_token": token},
        )
        assert r.status_code == 303, r.text
        order = await eventually(
            lambda: get_order(orders, order_id),
            lambda o: o["payment"]["refunded_amount"] == "5.00",
            what="the refund by hand",
        )
        assert order["payment"]["status"] == "partially_refunded"
        refunds = (await payments.get(f"/v1/payments/{order_id}", headers=OPS)).json()["refunds"]
        assert [r["reason"] for r in refunds] == ["dev-admin: a mug arrived chipped"]
        too_much = await console.post(
            f"/ops/orders/{order_id}/refund",
            data={"amount": "999.00", "reason": "again", "csrf_token": token},
        )
        assert too_much.status_code == 409 and "can still be refunded" in too_much.text

        r = await console.post(
            "/ops/stock/receipts", data={"warehouse": "SH", "sku": sku, "quantity": "7", "csrf_token": token}
        )
        assert r.status_code == 303, r.text
        assert (await stock(inventory, sku))["available"] == before - 2 + 7
