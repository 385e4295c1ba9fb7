"""The PayPal adapter against its stand-in (a real process): an order the customer approves on
PayPal's page, the approval webhook verified by PayPal's verify API at the real notification
endpoint, then captured; forged and repeated webhooks; an approval after the window takes no
money; partial, full and failing refunds of the capture."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from chassis import web
from chassis.db import outbox_message
from events.envelope import Envelope, build
from events.payments import CapturePayment, RefundPayment
from omstools.standins.paypal import CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID
from payments import api, service
from payments.adapters.alipay import load_private_key, sign
from payments.adapters.base import Transient
from payments.adapters.paypal import PayPalAdapter
from payments.adapters.registry import Providers
from payments.config import Settings
from payments.db import Payment
from payments.handlers import handle_capture_payment, handle_refund_payment

SETTINGS = Settings(
    provider_retry_base_seconds=0.001,
    provider_timeout_seconds=5,
    payment_window_seconds=600,
    database_url="sqlite://",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await condition():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


@pytest.fixture(scope="module")
def webhook_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("paypal")


@pytest.fixture(scope="module")
def standin(folder, webhook_port) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omstools.standins.paypal",
            "--port",
            str(port),
            "--dir",
            str(folder),
            "--pay-after",
            "0.3",
            "--webhook-url",
            f"http://127.0.0.1:{webhook_port}/v1/providers/paypal/notify",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the PayPal stand-in did not start"
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def providers(standin, sessions, webhook_port) -> AsyncIterator[Providers]:
    adapter = PayPalAdapter(
        base_url=standin,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        webhook_id=WEBHOOK_ID,
        return_url="https://shop.example/paid",
    )
    registry = Providers.of(adapter)
    app = FastAPI()
    web.install(app, "payments")
    app.include_router(api.providers)
    app.dependency_overrides[web.runtime] = lambda: SimpleNamespace(sessions=sessions)
    app.state.providers = registry
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=webhook_port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield registry
    server.should_exit = True
    await task
    await adapter.aclose()


@pytest.fixture
def oid() -> str:
    return f"ord_{uuid.uuid4().hex}"


def capture(order_id: str, amount: str = "88.80", token: str | None = None) -> Envelope[CapturePayment]:
    cmd = CapturePayment(
        order_id=order_id, amount=Decimal(amount), currency="USD", method="paypal", token=token
    )
    return Envelope[CapturePayment].model_validate(build(cmd, service="orders", subject=order_id))


def refund(order_id: str, key: str, amount: str | None = None) -> Envelope[RefundPayment]:
    cmd = RefundPayment(
        order_id=order_id, amount=Decimal(amount) if amount else None, reason="test", refund_key=key
    )
    return Envelope[RefundPayment].model_validate(build(cmd, service="orders", subject=order_id))


async def published(sessions) -> list[str]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [r["routing_key"] for r in rows]


async def payment(sessions, order_id: str) -> Payment:
    async with sessions() as session:
        return await session.get(Payment, order_id)


async def _status(sessions, order_id: str, status: str) -> Payment | None:
    p = await payment(sessions, order_id)
    return p if p is not None and p.status == status else None


async def paypal_order(standin: str, order_id: str) -> dict:
    async with httpx.AsyncClient(base_url=standin) as client:
        books = (await client.get("/_standin/ledger")).json()
    return next(o for o in books["orders"] if o["purchase_units"][0]["custom_id"] == order_id)


async def test_the_customer_approves_and_the_approval_is_captured(sessions, providers, standin, oid):
    await handle_capture_payment(capture(oid), sessions, providers, SETTINGS)
    waiting = await payment(sessions, oid)
    assert (waiting.status, waiting.action_type) == ("pending", "redirect")
    assert waiting.action_url.startswith(f"{standin}/checkoutnow?token=")
    paid = await until(lambda: _status(sessions, oid, "captured"), what="the approval is captured")
    order = await paypal_order(standin, oid)
    [done] = order["purchase_units"][0]["payments"]["captures"]
    assert (order["status"], paid.provider_ref, done["amount"]["value"]) == (
        "COMPLETED",
        f"{order['id']}/{done['id']}",
        "88.80",
    )
    assert await published(sessions) == ["payment.action_required", "payment.captured"]


async def test_a_forged_webhook_is_refused_and_a_repeated_one_captures_once(
    sessions, providers, standin, oid, webhook_port, folder
):
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, SETTINGS)
    p = await payment(sessions, oid)
    approved = {**(await paypal_order(standin, oid)), "status": "APPROVED"}
    approved.pop("notified")
    body = json.dumps(
        {
            "id": f"WH-{p.provider_ref}-APPROVED",
            "event_type": "CHECKOUT.ORDER.APPROVED",
            "resource": approved,
        },
        separators=(",", ":"),
    ).encode()
    at = "2026-12-02T10:00:00Z"
    key = load_private_key((folder / "alipay_private.pem").read_text())  # the stand-in's webhook key
    genuine = sign(f"t-1|{at}|{WEBHOOK_ID}|{zlib.crc32(body)}", key)
    headers = {
        "PAYPAL-TRANSMISSION-ID": "t-1",
        "PAYPAL-TRANSMISSION-TIME": at,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        "PAYPAL-CERT-URL": "https://api.paypal.com/cert.pem",
        "PAYPAL-TRANSMISSION-SIG": genuine,
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{webhook_port}") as client:
        forged = await client.post(
            "/v1/providers/paypal/notify", content=body, headers={**headers, "PAYPAL-TRANSMISSION-ID": "t-2"}
        )
        unsigned = await client.post("/v1/providers/paypal/notify", content=body)
        assert (forged.status_code, unsigned.status_code) == (401, 401)
        assert (await payment(sessions, oid)).status == "pending"
        async with httpx.AsyncClient(base_url=standin) as paypal:  # the customer approves on PayPal's page
            assert (await paypal.post("/checkoutnow", params={"token": p.provider_ref})).status_code == 200
        for _ in range(2):  # the approval told again (as PayPal resends): captured once
            assert (
                await client.post("/v1/providers/paypal/notify", content=body, headers=headers)
            ).status_code == 200
    captured = await until(lambda: _status(sessions, oid, "captured"), what="the approval is captured")
    order = await paypal_order(standin, oid)
    assert [f"{order['id']}/{c['id']}" for c in order["purchase_units"][0]["payments"]["captures"]] == [
        captured.provider_ref
    ]
    assert await published(sessions) == ["payment.action_required", "payment.captured"]


async def test_an_approval_after_the_window_takes_no_money(sessions, providers, standin, oid):
    short = Settings(provider_retry_base_seconds=0.001, payment_window_seconds=0.3, database_url="sqlite://")
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, short)

    async def expired() -> bool:
        return await service.expire_windows(sessions, providers, short) == 1

    await until(expired, what="the window passes")
    failed = await payment(sessions, oid)
    assert (failed.status, failed.failure_reason) == ("failed", "payment_timeout")
    async with httpx.AsyncClient(base_url=standin) as client:  # the customer approves too late
        await client.post("/checkoutnow", params={"token": failed.provider_ref})

    async def told() -> bool:
        order = await paypal_order(standin, oid)
        return order["status"] == "APPROVED" and order["notified"]

    await until(told, what="the late approval is delivered and answered")
    assert (await paypal_order(standin, oid))["status"] == "APPROVED"  # never captured
    assert (await payment(sessions, oid)).status == "failed"


async def test_partial_full_and_failing_refunds_of_the_capture(
    sessions, providers, standin, oid, refunds_agree
):
    await handle_capture_payment(capture(oid, amount="100.00"), sessions, providers, SETTINGS)
    await until(lambda: _status(sessions, oid, "captured"), what="the approval is captured")
    await handle_refund_payment(refund(oid, f"{oid}:parcel", "30.00"), sessions, providers, SETTINGS)
    async with httpx.AsyncClient(base_url=standin) as client:
        await client.post("/_standin/fail-refunds", params={"count": SETTINGS.provider_attempts})
    msg = refund(oid, f"{oid}:cancel")
    with pytest.raises(Transient):
        await handle_refund_payment(msg, sessions, providers, SETTINGS)
    await handle_refund_payment(msg, sessions, providers, SETTINGS)  # redelivered
    await handle_refund_payment(msg, sessions, providers, SETTINGS)
    done = await payment(sessions, oid)
    assert (done.status, done.refunded_amount) == ("refunded", Decimal("100.00"))
    async with httpx.AsyncClient(base_url=standin) as client:
        refunds = (await client.get("/_standin/ledger")).json()["refunds"]
    capture_id = done.provider_ref.split("/")[1]
    assert sorted(r["value"] for r in refunds if r["capture_id"] == capture_id) == ["30.00", "70.00"]
    await refunds_agree("paypal", oid, 2, never="NOPE")  # the provider's books


async def test_a_saved_paypal_is_charged_at_once_and_a_declined_one_fails(sessions, providers, standin, oid):
    """A token with method paypal is the customer's vault id: PayPal completes the order at once
    (no approval page); a flaky call is sent again under the same PayPal-Request-Id, paying once."""
    await handle_capture_payment(capture(oid, token="tok_flaky"), sessions, providers, SETTINGS)
    paid = await payment(sessions, oid)
    order = await paypal_order(standin, f"capture:{oid}")
    [done] = order["purchase_units"][0]["payments"]["captures"]
    assert (paid.status, paid.provider, paid.provider_ref) == (
        "captured",
        "paypal",
        f"{order['id']}/{done['id']}",
    )
    assert await published(sessions) == ["payment.captured"]
    await handle_refund_payment(refund(oid, f"{oid}:cancel", "10.00"), sessions, providers, SETTINGS)
    assert (await payment(sessions, oid)).refunded_amount == Decimal("10.00")

    declined = f"ord_{uuid.uuid4().hex}"
    await handle_capture_payment(capture(declined, token="tok_declined"), sessions, providers, SETTINGS)
    refused = await payment(sessions, declined)
    assert (refused.status, refused.failure_reason) == ("failed", "declined")
