"""The WeChat Pay (API v3) adapter against its stand-in (a real process): a Native QR code paid by
the stand-in's customer and notified encrypted and signed to the real notification endpoint; a
forged or replayed notification; the window closing; partial, full and failing refunds."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI
from sqlalchemy import select

from chassis import web
from chassis.db import outbox_message
from events.envelope import Envelope, build
from events.payments import CapturePayment, RefundPayment
from omstools.standins.wechat_pay import MCHID, MERCHANT_SERIAL, PLATFORM_SERIAL, ensure_keys
from payments import api, service
from payments.adapters.alipay import load_private_key, sign
from payments.adapters.base import Transient
from payments.adapters.registry import Providers
from payments.adapters.wechat_pay import WechatPayAdapter
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


@dataclass
class StandIn:
    url: str
    keys: dict[str, Path]

    def ledger(self, no: str) -> dict:
        books = httpx.get(f"{self.url}/_standin/ledger").json()
        trades = [t for t in books["trades"] if t["out_trade_no"] == no]
        ids = {t["transaction_id"] for t in trades}
        return {"trades": trades, "refunds": [r for r in books["refunds"] if r["transaction_id"] in ids]}

    def fail_refunds(self, count: int) -> None:
        httpx.post(f"{self.url}/_standin/fail-refunds", params={"count": count}).raise_for_status()


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Iterator[StandIn]:
    folder, port = tmp_path_factory.mktemp("wechat"), _free_port()
    keys = ensure_keys(folder)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omstools.standins.wechat_pay",
            "--port",
            str(port),
            "--dir",
            str(folder),
            "--pay-after",
            "0.3",
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
        assert proc.poll() is None and time.monotonic() < deadline, "the WeChat Pay stand-in did not start"
        time.sleep(0.05)
    yield StandIn(url, keys)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def endpoint(sessions) -> AsyncIterator[FastAPI]:
    app = FastAPI()
    web.install(app, "payments")
    app.include_router(api.providers)
    app.dependency_overrides[web.runtime] = lambda: SimpleNamespace(sessions=sessions)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    app.state.url = f"http://127.0.0.1:{server.config.port}"
    yield app
    server.should_exit = True
    await task


@pytest.fixture
async def providers(standin, endpoint) -> AsyncIterator[Providers]:
    adapter = WechatPayAdapter(
        base_url=standin.url,
        mchid=MCHID,
        appid="wx0000000000000001",
        serial_no=MERCHANT_SERIAL,
        private_key=standin.keys["app_private"].read_text(),
        platform_public_key=standin.keys["platform_public"].read_text(),
        platform_serial=PLATFORM_SERIAL,
        apiv3_key=standin.keys["apiv3_key"].read_text().strip(),
        notify_url=f"{endpoint.state.url}/v1/providers/wechat_pay/notify",
    )
    endpoint.state.providers = registry = Providers.of(adapter)
    yield registry
    await adapter.aclose()


@pytest.fixture
def oid() -> str:
    return f"ord_{uuid.uuid4().hex}"


def trade_no(oid: str) -> str:
    return oid[-32:]


def capture(order_id: str, amount: str = "88.80", token: str | None = None) -> Envelope[CapturePayment]:
    cmd = CapturePayment(
        order_id=order_id, amount=Decimal(amount), currency="CNY", method="wechat_pay", token=token
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


def notification(
    standin: StandIn, no: str, total: int, *, key: rsa.RSAPrivateKey | None = None, event_id: str = "EV-1"
) -> tuple[bytes, dict[str, str]]:
    transaction = {
        "mchid": MCHID,
        "out_trade_no": no,
        "transaction_id": "4200000001",
        "trade_state": "SUCCESS",
        "amount": {"total": total, "currency": "CNY"},
    }
    nonce = secrets.token_hex(6)
    cipher = AESGCM(standin.keys["apiv3_key"].read_text().strip().encode()).encrypt(
        nonce.encode(), json.dumps(transaction).encode(), b"transaction"
    )
    body = json.dumps(
        {
            "id": event_id,
            "event_type": "TRANSACTION.SUCCESS",
            "resource": {
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(cipher).decode(),
                "associated_data": "transaction",
                "nonce": nonce,
            },
        }
    )
    ts, n = str(int(time.time())), secrets.token_hex(8)
    key = key or load_private_key(standin.keys["platform_private"].read_text())
    return body.encode(), {
        "Content-Type": "application/json",
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": n,
        "Wechatpay-Serial": PLATFORM_SERIAL,
        "Wechatpay-Signature": sign(f"{ts}\n{n}\n{body}\n", key),
    }


async def test_the_customer_scans_pays_and_the_encrypted_notification_captures(
    sessions, providers, standin, oid
):
    await handle_capture_payment(capture(oid), sessions, providers, SETTINGS)
    waiting = await payment(sessions, oid)
    assert (waiting.status, waiting.provider, waiting.action_type) == ("pending", "wechat_pay", "qr_code")
    assert waiting.action_url.startswith("weixin://wxpay/bizpayurl?pr=")
    paid = await until(lambda: _status(sessions, oid, "captured"), what="the payment is captured")
    [trade] = standin.ledger(trade_no(oid))["trades"]
    assert (paid.provider_ref, trade["state"], trade["total"]) == (trade["transaction_id"], "SUCCESS", 8880)

    async def acknowledged() -> bool:  # the stand-in stops resending
        return standin.ledger(trade_no(oid))["trades"][0]["notified"] == 1

    await until(acknowledged, what="the notification is acknowledged")
    assert await published(sessions) == ["payment.action_required", "payment.captured"]


async def test_a_forged_notification_is_refused_and_the_same_one_twice_captures_once(
    sessions, providers, standin, endpoint, oid
):
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, SETTINGS)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with httpx.AsyncClient(base_url=endpoint.state.url) as client:
        body, headers = notification(standin, trade_no(oid), 8880, key=stranger)
        assert (
            await client.post("/v1/providers/wechat_pay/notify", content=body, headers=headers)
        ).status_code == 401
        body, headers = notification(standin, trade_no(oid), 8880)
        tampered = body.replace(b'"EV-1"', b'"EV-2"')
        assert (
            await client.post("/v1/providers/wechat_pay/notify", content=tampered, headers=headers)
        ).status_code == 401
        assert (await payment(sessions, oid)).status == "pending"
        for _ in range(2):
            assert (
                await client.post("/v1/providers/wechat_pay/notify", content=body, headers=headers)
            ).status_code == 200
    assert (await payment(sessions, oid)).status == "captured"
    assert await published(sessions) == ["payment.action_required", "payment.captured"]


async def test_unpaid_when_the_window_passes_closed_at_the_provider(sessions, providers, standin, oid):
    short = Settings(provider_retry_base_seconds=0.001, payment_window_seconds=0.5, database_url="sqlite://")
    await handle_capture_payment(capture(oid, token="tok_nopay"), sessions, providers, short)

    async def expired() -> bool:
        return await service.expire_windows(sessions, providers, short) == 1

    await until(expired, what="the window passes")
    failed = await payment(sessions, oid)
    assert (failed.status, failed.failure_reason) == ("failed", "payment_timeout")
    assert standin.ledger(trade_no(oid))["trades"][0]["state"] == "CLOSED"


async def test_partial_full_and_failing_refunds(sessions, providers, standin, oid, refunds_agree):
    await handle_capture_payment(capture(oid, amount="100.00"), sessions, providers, SETTINGS)
    await until(lambda: _status(sessions, oid, "captured"), what="the payment is captured")
    await handle_refund_payment(refund(oid, f"{oid}:parcel", "30.00"), sessions, providers, SETTINGS)
    standin.fail_refunds(SETTINGS.provider_attempts)
    msg = refund(oid, f"{oid}:cancel")
    with pytest.raises(Transient):
        await handle_refund_payment(msg, sessions, providers, SETTINGS)
    await handle_refund_payment(msg, sessions, providers, SETTINGS)  # redelivered
    await handle_refund_payment(msg, sessions, providers, SETTINGS)
    done = await payment(sessions, oid)
    assert (done.status, done.refunded_amount) == ("refunded", Decimal("100.00"))
    assert sorted(r["amount"] for r in standin.ledger(trade_no(oid))["refunds"]) == [3000, 7000]
    await refunds_agree("wechat_pay", oid, 2)  # the provider's books


async def test_a_saved_agreement_is_deducted_at_wechat_pay_and_a_declined_one_fails(
    sessions, providers, standin, oid
):
    """A token with method wechat_pay is the customer's contract: WeChat Pay's deduction charges
    it, a flaky one is retried under the same out_trade_no and charged once, a declined one fails."""
    await handle_capture_payment(capture(oid, token="tok_flaky"), sessions, providers, SETTINGS)
    paid = await payment(sessions, oid)
    [trade] = standin.ledger(trade_no(f"capture:{oid}"))["trades"]
    assert (paid.status, paid.provider, paid.provider_ref) == (
        "captured",
        "wechat_pay",
        trade["transaction_id"],
    )
    assert (trade["state"], trade["total"]) == ("SUCCESS", 8880)

    declined = f"ord_{uuid.uuid4().hex}"
    await handle_capture_payment(capture(declined, token="tok_declined"), sessions, providers, SETTINGS)
    refused = await payment(sessions, declined)
    assert (refused.status, refused.failure_reason) == ("failed", "declined")
    assert standin.ledger(trade_no(f"capture:{declined}"))["trades"] == []
