"""The Alipay adapter against its stand-in (a real process speaking Alipay's gateway protocol),
with the capture, refund and notification paths of payments on a real SQLite database and the
real notification endpoint served over HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from sqlalchemy import select

from chassis import web
from chassis.db import outbox_message
from events.envelope import Envelope, build
from events.payments import CancelPayment, CapturePayment, RefundPayment
from omstools.standins.alipay import ensure_keys
from payments import api, service
from payments.adapters.alipay import AlipayAdapter, content_to_sign, load_private_key, sign
from payments.adapters.base import Notification, Transient
from payments.adapters.registry import Providers
from payments.config import Settings
from payments.db import Payment
from payments.handlers import handle_cancel_payment, handle_capture_payment, handle_refund_payment
from payments.service import Unresolved

APP_ID = "2021000000000042"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


@dataclass
class StandIn:
    url: str
    keys: dict[str, Path]

    def fail_refunds(self, count: int) -> None:
        httpx.post(f"{self.url}/_standin/fail-refunds", params={"count": count}).raise_for_status()

    def ledger(self, out_trade_no: str) -> dict:
        """The stand-in's books of one order (it serves every test of the module)."""
        books = httpx.get(f"{self.url}/_standin/ledger").json()
        trades = [t for t in books["trades"] if t["out_trade_no"] == out_trade_no]
        numbers = {t["trade_no"] for t in trades}
        return {"trades": trades, "refunds": [r for r in books["refunds"] if r["trade_no"] in numbers]}


@pytest.fixture
def oid() -> str:
    return f"ord_{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Iterator[StandIn]:
    folder, port = tmp_path_factory.mktemp("alipay"), _free_port()
    keys = ensure_keys(folder)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omstools.standins.alipay",
            "--port",
            str(port),
            "--dir",
            str(folder),
            "--app-id",
            APP_ID,
            "--pay-after",
            "0.3",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the Alipay stand-in did not start"
        time.sleep(0.05)
    yield StandIn(url, keys)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def payments_http(sessions) -> AsyncIterator[str]:
    """The real notification endpoint, served over HTTP for the stand-in to call."""
    app = FastAPI()
    web.install(app, "payments")
    app.include_router(api.providers)
    app.dependency_overrides[web.runtime] = lambda: SimpleNamespace(sessions=sessions)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await until(lambda: asyncio.sleep(0, server.started), what="the notification endpoint is up")
    app.state.url = f"http://127.0.0.1:{port}"
    yield app
    server.should_exit = True
    await task


@pytest.fixture
def settings() -> Settings:
    return Settings(
        provider_retry_base_seconds=0.001,
        provider_timeout_seconds=5,
        payment_window_seconds=600,
        database_url="sqlite://",
    )


@pytest.fixture
async def providers(standin, payments_http) -> AsyncIterator[Providers]:
    adapter = AlipayAdapter(
        gateway=f"{standin.url}/gateway.do",
        app_id=APP_ID,
        private_key=standin.keys["app_private"].read_text(),
        alipay_public_key=standin.keys["alipay_public"].read_text(),
        notify_url=f"{payments_http.state.url}/v1/providers/alipay/notify",
    )
    registry = Providers.of(adapter)
    payments_http.state.providers = registry
    yield registry
    await adapter.aclose()


def capture(order_id: str, amount: str = "88.80", token: str | None = None) -> Envelope[CapturePayment]:
    cmd = CapturePayment(
        order_id=order_id, amount=Decimal(amount), currency="CNY", method="alipay", token=token
    )
    return Envelope[CapturePayment].model_validate(build(cmd, service="orders", subject=order_id))


def refund(order_id: str, key: str, amount: str | None = None) -> Envelope[RefundPayment]:
    cmd = RefundPayment(
        order_id=order_id, amount=Decimal(amount) if amount else None, reason="test", refund_key=key
    )
    return Envelope[RefundPayment].model_validate(build(cmd, service="orders", subject=order_id))


async def published(sessions) -> list[dict]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]


async def payment(sessions, order_id: str) -> Payment:
    async with sessions() as session:
        return await session.get(Payment, order_id)


def notification(
    standin: StandIn,
    out_trade_no: str,
    amount: str,
    *,
    key: rsa.RSAPrivateKey | None = None,
    notify_id: str = "n-1",
    trade_no: str = "2026120200001",
) -> dict[str, str]:
    fields = {
        "notify_time": "2026-12-02 10:00:00",
        "notify_type": "trade_status_sync",
        "notify_id": notify_id,
        "app_id": APP_ID,
        "charset": "utf-8",
        "version": "1.0",
        "sign_type": "RSA2",
        "trade_no": trade_no,
        "out_trade_no": out_trade_no,
        "trade_status": "TRADE_SUCCESS",
        "total_amount": amount,
    }
    key = key or load_private_key(standin.keys["alipay_private"].read_text())
    fields["sign"] = sign(content_to_sign(fields, drop=("sign", "sign_type")), key)
    return fields


async def test_the_customer_pays_the_qr_code_and_the_notification_captures(
    oid, sessions, providers, settings, standin
):
    await handle_capture_payment(capture(oid), sessions, providers, settings)
    waiting = await payment(sessions, oid)
    assert waiting.status == "pending" and waiting.provider == "alipay"
    [action] = [e for e in await published(sessions) if e["key"] == "payment.action_required"]
    assert action["data"]["action_type"] == "qr_code"
    assert action["data"]["url"].startswith(f"{standin.url}/qr/")
    assert datetime.fromisoformat(action["data"]["expires_at"]) > datetime.now(UTC) + timedelta(seconds=500)

    paid = await until(lambda: _status(sessions, oid, "captured"), what="the payment is captured")
    assert paid.provider_ref == standin.ledger(oid)["trades"][0]["trade_no"]
    assert [e["key"] for e in await published(sessions)] == ["payment.action_required", "payment.captured"]

    async def acknowledged() -> bool:  # the stand-in stops resending
        return standin.ledger(oid)["trades"][0]["notified"] == 1

    await until(acknowledged, what="the notification is acknowledged")


async def _status(sessions, order_id: str, status: str) -> Payment | None:
    p = await payment(sessions, order_id)
    return p if p is not None and p.status == status else None


async def test_a_redelivered_capture_opens_the_same_payment(oid, sessions, providers, settings, standin):
    msg = capture(oid, token="tok_nopay")
    await handle_capture_payment(msg, sessions, providers, settings)
    await handle_capture_payment(
        capture(oid, token="tok_nopay"), sessions, providers, settings
    )  # the saga's resend
    assert len(standin.ledger(oid)["trades"]) == 1
    actions = [e for e in await published(sessions) if e["key"] == "payment.action_required"]
    assert len(actions) == 2 and actions[0]["data"] == actions[1]["data"]


async def test_the_provider_refuses_the_payment(oid, sessions, providers, settings):
    await handle_capture_payment(capture(oid, amount="200000000.00"), sessions, providers, settings)
    refused = await payment(sessions, oid)
    assert (refused.status, refused.failure_reason) == ("failed", "declined")
    assert [e["key"] for e in await published(sessions)] == ["payment.failed"]


async def test_unpaid_when_the_window_passes_closed_at_the_provider_and_failed(
    oid, sessions, providers, standin
):
    short = Settings(provider_retry_base_seconds=0.001, payment_window_seconds=0.5, database_url="sqlite://")
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, short)
    assert await service.expire_windows(sessions, providers, short) == 0  # not yet
    await until(lambda: _expired(sessions, providers, short), what="the window passes")
    failed = await payment(sessions, oid)
    assert (failed.status, failed.failure_reason) == ("failed", "payment_timeout")
    assert standin.ledger(oid)["trades"][0]["status"] == "TRADE_CLOSED"  # it can never be paid now
    events = await published(sessions)
    assert events[-1]["key"] == "payment.failed" and events[-1]["data"]["reason"] == "payment_timeout"


async def test_a_cancel_while_the_customer_pays_closes_the_trade_at_once(
    oid, sessions, providers, settings, standin
):
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, settings)
    assert standin.ledger(oid)["trades"][0]["status"] == "WAIT_BUYER_PAY"
    cancel = Envelope[CancelPayment].model_validate(
        build(CancelPayment(order_id=oid, reason="customer_request"), service="orders", subject=oid)
    )
    await handle_cancel_payment(cancel, sessions, providers, settings)
    await handle_cancel_payment(cancel, sessions, providers, settings)  # redelivered: closed once
    closed = await payment(sessions, oid)
    assert (closed.status, closed.failure_reason) == ("failed", "cancelled")
    assert standin.ledger(oid)["trades"][0]["status"] == "TRADE_CLOSED", "it can no longer be paid"
    failed = [e for e in await published(sessions) if e["key"] == "payment.failed"]
    assert [e["data"]["reason"] for e in failed] == ["cancelled"]


async def _expired(sessions, providers, settings) -> bool:
    return await service.expire_windows(sessions, providers, settings) == 1


async def test_a_notification_with_a_bad_signature_is_refused_and_changes_nothing(
    oid, sessions, providers, settings, standin, payments_http
):
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, settings)
    forged = notification(
        standin, oid, "88.80", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    tampered = {**notification(standin, oid, "0.01"), "total_amount": "88.80"}
    async with httpx.AsyncClient(base_url=payments_http.state.url) as client:
        for fields in (forged, tampered, {k: v for k, v in forged.items() if k != "sign"}):
            answer = await client.post("/v1/providers/alipay/notify", data=fields)
            assert answer.status_code == 401
    assert (await payment(sessions, oid)).status == "pending"
    assert [e["key"] for e in await published(sessions)] == ["payment.action_required"]


async def test_the_same_notification_twice_captures_once(
    oid, sessions, providers, settings, standin, payments_http
):
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, settings)
    fields = notification(standin, oid, "88.80")
    async with httpx.AsyncClient(base_url=payments_http.state.url) as client:
        answers = [await client.post("/v1/providers/alipay/notify", data=fields) for _ in range(2)]
        again = notification(
            standin, oid, "88.80", notify_id="n-2"
        )  # another notification of the same payment
        answers.append(await client.post("/v1/providers/alipay/notify", data=again))
    assert [(a.status_code, a.text) for a in answers] == [(200, "success")] * 3
    assert (await payment(sessions, oid)).status == "captured"
    assert [e["key"] for e in await published(sessions)] == ["payment.action_required", "payment.captured"]


async def test_a_notification_of_another_amount_is_not_captured(
    oid, sessions, providers, settings, standin, payments_http
):
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, settings)
    async with httpx.AsyncClient(base_url=payments_http.state.url) as client:
        await client.post("/v1/providers/alipay/notify", data=notification(standin, oid, "0.01"))
    assert (await payment(sessions, oid)).status == "pending"


async def test_partial_then_full_refund_at_the_provider(
    oid, sessions, providers, settings, standin, refunds_agree
):
    await handle_capture_payment(capture(oid, amount="100.00"), sessions, providers, settings)
    await until(lambda: _status(sessions, oid, "captured"), what="the payment is captured")
    await handle_refund_payment(refund(oid, f"{oid}:parcel:W1", "30.00"), sessions, providers, settings)
    assert (await payment(sessions, oid)).status == "partially_refunded"
    await handle_refund_payment(refund(oid, f"{oid}:cancel"), sessions, providers, settings)
    done = await payment(sessions, oid)
    assert (done.status, done.refunded_amount) == ("refunded", Decimal("100.00"))
    assert sorted(r["amount"] for r in standin.ledger(oid)["refunds"]) == ["30.00", "70.00"]
    await refunds_agree("alipay", oid, 2)  # the provider's books


async def test_a_refund_failing_at_the_provider_is_retried_and_pays_once(
    oid, sessions, providers, settings, standin
):
    await handle_capture_payment(capture(oid, amount="100.00"), sessions, providers, settings)
    await until(lambda: _status(sessions, oid, "captured"), what="the payment is captured")
    standin.fail_refunds(settings.provider_attempts)
    msg = refund(oid, f"{oid}:cancel")
    with pytest.raises(Transient):
        await handle_refund_payment(msg, sessions, providers, settings)
    assert standin.ledger(oid)["refunds"] == []
    await handle_refund_payment(msg, sessions, providers, settings)  # redelivered
    await handle_refund_payment(msg, sessions, providers, settings)  # and again: nothing more
    assert [r["amount"] for r in standin.ledger(oid)["refunds"]] == ["100.00"]
    assert (await payment(sessions, oid)).status == "refunded"


async def test_an_answer_not_signed_by_alipay_is_not_believed(oid, sessions, standin, settings):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = stranger.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    adapter = AlipayAdapter(
        gateway=f"{standin.url}/gateway.do",
        app_id=APP_ID,
        private_key=standin.keys["app_private"].read_text(),
        alipay_public_key=pem,
        notify_url="http://127.0.0.1:9/notify",
    )
    with pytest.raises(Unresolved):
        await handle_capture_payment(capture(oid), sessions, Providers.of(adapter), settings)
    await adapter.aclose()
    assert (await payment(sessions, oid)).status == "capturing"  # resumed by the next delivery


async def test_a_saved_agreement_is_deducted_at_alipay_at_once(oid, sessions, providers, settings, standin):
    """A token with method alipay is the customer's agreement: Alipay charges it (the card
    processor is not even configured here), and a redelivered capture charges nothing more."""
    await handle_capture_payment(capture(oid, token="tok_agreement_ok"), sessions, providers, settings)
    paid = await payment(sessions, oid)
    [trade] = standin.ledger(f"capture_{oid}")["trades"]
    assert (paid.status, paid.provider, paid.provider_ref) == ("captured", "alipay", trade["trade_no"])
    assert (trade["status"], trade["total_amount"]) == ("TRADE_SUCCESS", "88.80")
    await handle_capture_payment(capture(oid, token="tok_agreement_ok"), sessions, providers, settings)
    assert len(standin.ledger(f"capture_{oid}")["trades"]) == 1
    assert [e["key"] for e in await published(sessions)] == ["payment.captured", "payment.captured"]
    # Alipay's notification of the deduction names the payment as recorded: known, nothing to change
    note = Notification(
        id="n-agreement",
        key=trade["out_trade_no"],
        status="captured",
        reference=trade["trade_no"],
        amount=Decimal("88.80"),
    )
    assert await service.apply_notification(sessions, providers.get("alipay"), note) == "ignored"


async def test_a_declined_agreement_fails_and_a_flaky_one_is_retried_and_charged_once(
    sessions, providers, settings, standin
):
    declined, flaky = f"ord_{uuid.uuid4().hex}", f"ord_{uuid.uuid4().hex}"
    await handle_capture_payment(capture(declined, token="tok_declined"), sessions, providers, settings)
    refused = await payment(sessions, declined)
    assert (refused.status, refused.failure_reason) == ("failed", "declined")
    assert standin.ledger(f"capture_{declined}")["trades"] == []

    await handle_capture_payment(capture(flaky, token="tok_flaky"), sessions, providers, settings)
    paid = await payment(sessions, flaky)
    assert (paid.status, paid.provider) == ("captured", "alipay")
    assert len(standin.ledger(f"capture_{flaky}")["trades"]) == 1


async def test_an_agreement_deduction_is_refunded_at_alipay(oid, sessions, providers, settings, standin):
    await handle_capture_payment(capture(oid, "50.00", token="tok_ok"), sessions, providers, settings)
    await handle_refund_payment(refund(oid, f"{oid}:cancel"), sessions, providers, settings)
    done = await payment(sessions, oid)
    assert (done.status, done.refunded_amount) == ("refunded", Decimal("50.00"))
    assert [r["amount"] for r in standin.ledger(f"capture_{oid}")["refunds"]] == ["50.00"]
