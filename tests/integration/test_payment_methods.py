"""Payment methods as their providers work, end to end on the real processes with the providers'
stand-ins (CONTRACT §4, §7): an Alipay order without a token shows a QR code, is paid by the
stand-in's customer and notified with Alipay's signature, and reaches ``delivered``; one whose
customer never pays (``tok_nopay``) is cancelled ``payment_timeout`` when the window passes, its
stock released and the trade closed at the provider. A token with a wallet method is the
customer's saved agreement, charged at once at that wallet's provider."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from integration.helpers import (
    GATEWAY,
    OPS,
    eventually,
    get_order,
    new_sku,
    order_body,
    payment,
    place,
    receive,
    stock,
    wait_settled,
    wait_status,
)

from omstools.verify import verify
from payments.adapters.wechat_pay import out_trade_no

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("simulated_carrier")]


def alipay_body(*, sku: str, email: str, token: str | None = None, method: str = "alipay") -> dict:
    body = order_body(items=[{"sku": sku, "quantity": 2, "unit_price": "19.90"}], email=email, locale="en")
    body["payment"] = {"method": method, **({"token": token} if token else {})}
    return body


async def test_an_alipay_order_shows_its_qr_code_is_paid_and_notified_and_delivered(
    oms, orders, inventory, payments, mailbox
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 5)
    created = await place(orders, alipay_body(sku=sku, email="alipay.buyer@example.com"))
    waiting = await eventually(
        lambda: get_order(orders, created["id"]),
        lambda o: "action" in o["payment"],
        what="the order shows what the customer is to do",
    )
    action = waiting["payment"]["action"]
    assert waiting["status"] == "confirmed" and waiting["payment"]["status"] == "pending"
    assert action["type"] == "qr_code" and action["url"].startswith(f"{oms.standin_url('alipay')}/qr/")
    assert datetime.fromisoformat(action["expires_at"]) > datetime.now(UTC)

    order = await wait_status(orders, created["id"], "delivered", timeout=60)
    assert order["payment"] == {
        "status": "captured",
        "method": "alipay",
        "amount": "39.80",
        "refunded_amount": "0.00",
    }
    paid = await payment(payments, created["id"])
    assert (paid["provider"], paid["status"]) == ("alipay", "captured")
    async with httpx.AsyncClient(base_url=oms.standin_url("alipay")) as standin:
        books = (await standin.get("/_standin/ledger")).json()
    [trade] = [t for t in books["trades"] if t["out_trade_no"] == created["id"]]
    assert (trade["status"], trade["trade_no"], trade["total_amount"]) == (
        "TRADE_SUCCESS",
        paid["provider_ref"],
        "39.80",
    )

    mails = await eventually(
        lambda: mailbox.to("alipay.buyer@example.com"),
        lambda m: (
            any("Please pay" in x.subject for x in m) and any("Payment received" in x.subject for x in m)
        ),
        what="the please-pay and payment-received e-mails",
    )
    [please_pay] = [m for m in mails if "Please pay" in m.subject]
    assert action["url"] in please_pay.body


async def test_an_alipay_customer_who_never_pays_is_cancelled_payment_timeout(
    oms, orders, inventory, payments
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 5)
    created = await place(orders, alipay_body(sku=sku, email="never.pays@example.com", token="tok_nopay"))
    await eventually(lambda: stock(inventory, sku), lambda s: s["reserved"] == 2, what="the stock reserved")
    order = await wait_settled(
        orders, created["id"], timeout=60
    )  # the window is 10 s in local runs and tests
    assert (order["status"], order["status_reason"]) == ("cancelled", "payment_timeout")
    assert order["payment"]["status"] == "failed" and "action" not in order["payment"]
    await eventually(
        lambda: stock(inventory, sku),
        lambda s: (s["on_hand"], s["reserved"], s["available"]) == (5, 0, 5),
        what="the stock released",
    )
    closed = await payment(payments, created["id"])
    assert (closed["status"], closed["failure_reason"]) == ("failed", "payment_timeout")
    async with httpx.AsyncClient(base_url=oms.standin_url("alipay")) as standin:
        books = (await standin.get("/_standin/ledger")).json()
    [trade] = [t for t in books["trades"] if t["out_trade_no"] == created["id"]]
    assert trade["status"] == "TRADE_CLOSED"  # it can no longer be paid


async def test_an_alipay_order_cancelled_while_the_customer_pays_closes_the_trade_at_once(
    oms, orders, inventory, payments
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 5)
    created = await place(orders, alipay_body(sku=sku, email="changed.mind@example.com", token="tok_nopay"))
    await wait_status(orders, created["id"], "confirmed")
    r = await orders.post(
        f"/v1/orders/{created['id']}/cancel", json={"reason": "changed my mind"}, headers=GATEWAY
    )
    assert r.status_code == 202, r.text
    closed = await eventually(
        lambda: payment(payments, created["id"]),
        lambda p: p["status"] == "failed",
        what="the payment closed",
    )
    assert closed["failure_reason"] == "cancelled", "closed by the cancel, not by the window's end"
    async with httpx.AsyncClient(base_url=oms.standin_url("alipay")) as standin:
        books = (await standin.get("/_standin/ledger")).json()
    [trade] = [t for t in books["trades"] if t["out_trade_no"] == created["id"]]
    assert trade["status"] == "TRADE_CLOSED"  # it can no longer be paid
    order = await wait_settled(orders, created["id"], timeout=60)
    assert (order["status"], order["status_reason"]) == ("cancelled", "customer_request")
    await eventually(
        lambda: stock(inventory, sku),
        lambda s: (s["on_hand"], s["reserved"], s["available"]) == (5, 0, 5),
        what="the stock released",
    )


async def test_a_wechat_pay_order_shows_its_native_code_is_paid_and_delivered(
    oms, orders, inventory, payments
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 5)
    created = await place(orders, alipay_body(sku=sku, email="wechat.buyer@example.com", method="wechat_pay"))
    waiting = await eventually(
        lambda: get_order(orders, created["id"]),
        lambda o: "action" in o["payment"],
        what="the order shows the code to scan",
    )
    assert waiting["payment"]["action"]["type"] == "qr_code"
    assert waiting["payment"]["action"]["url"].startswith("weixin://wxpay/bizpayurl?pr=")
    order = await wait_status(orders, created["id"], "delivered", timeout=60)
    assert order["payment"]["status"] == "captured"
    paid = await payment(payments, created["id"])
    assert (paid["provider"], paid["status"]) == ("wechat_pay", "captured")


async def test_a_paypal_order_is_approved_captured_and_delivered(oms, orders, inventory, payments):
    sku = new_sku()
    await receive(inventory, "SH", sku, 5)
    created = await place(orders, alipay_body(sku=sku, email="paypal.buyer@example.com", method="paypal"))
    waiting = await eventually(
        lambda: get_order(orders, created["id"]),
        lambda o: "action" in o["payment"],
        what="the order shows where the customer approves",
    )
    assert waiting["payment"]["action"]["type"] == "redirect"
    assert waiting["payment"]["action"]["url"].startswith(f"{oms.standin_url('paypal')}/checkoutnow?token=")
    order = await wait_status(orders, created["id"], "delivered", timeout=60)
    assert order["payment"]["status"] == "captured"
    paid = await payment(payments, created["id"])
    assert (paid["provider"], paid["status"]) == ("paypal", "captured")


async def test_saved_wallet_agreements_are_charged_at_their_own_providers(oms, orders, inventory, payments):
    """A token with alipay, wechat_pay or paypal is the customer's saved agreement: each is charged
    at once at that wallet's provider (no QR code, no redirect), never by the card processor, and a
    declined agreement cancels its order ``payment_declined`` with its stock released."""
    sku = new_sku()
    await receive(inventory, "SH", sku, 10)
    placed = {
        method: await place(
            orders, alipay_body(sku=sku, email=f"{method}.saved@example.com", token="tok_ok", method=method)
        )
        for method in ("alipay", "wechat_pay", "paypal")
    }
    declined = await place(
        orders, alipay_body(sku=sku, email="saved.declined@example.com", token="tok_declined")
    )
    for method, created in placed.items():
        order = await wait_status(orders, created["id"], "delivered", timeout=60)
        assert order["payment"]["status"] == "captured" and "action" not in order["payment"]
        paid = await payment(payments, created["id"])
        assert (paid["provider"], paid["status"]) == (method, "captured")
    async with httpx.AsyncClient() as client:
        alipay = (await client.get(oms.standin_url("alipay") + "/_standin/ledger")).json()
        wechat = (await client.get(oms.standin_url("wechat_pay") + "/_standin/ledger")).json()
        paypal = (await client.get(oms.standin_url("paypal") + "/_standin/ledger")).json()
    assert [
        t["status"] for t in alipay["trades"] if t["out_trade_no"] == f"capture_{placed['alipay']['id']}"
    ] == ["TRADE_SUCCESS"]
    wechat_no = out_trade_no(f"capture:{placed['wechat_pay']['id']}")
    assert [t["state"] for t in wechat["trades"] if t["out_trade_no"] == wechat_no] == ["SUCCESS"]
    [vaulted] = [
        o
        for o in paypal["orders"]
        if o["purchase_units"][0]["custom_id"] == f"capture:{placed['paypal']['id']}"
    ]
    assert vaulted["status"] == "COMPLETED"

    order = await wait_settled(orders, declined["id"], timeout=60)
    assert (order["status"], order["status_reason"]) == ("cancelled", "payment_declined")
    assert (await payment(payments, declined["id"]))["provider"] == "alipay"
    await eventually(
        lambda: stock(inventory, sku),
        lambda s: (s["on_hand"], s["reserved"]) == (4, 0),
        what="the delivered units shipped and the declined order's released",
    )


async def test_every_provider_agrees_with_payments(oms, payments):
    """make verify's reconciliation, per provider, on what the tests above paid: every provider's
    books agree with ours, so nothing is reported (disagreements: tests/test_reconcile.py)."""
    report = await verify({s: oms.url(s) for s in ("orders", "inventory", "payments", "shipping")}, settle=30)
    assert report.ok, report.render()
    assert not any("disagrees" in b for b in report.breaches)
    r = await payments.get(
        "/v1/providers/reconciliation", params={"run": "true", "settled_for": 0}, headers=OPS
    )
    assert r.status_code == 200 and r.json()["mismatches"] == [] and r.json()["checked"] >= 3
