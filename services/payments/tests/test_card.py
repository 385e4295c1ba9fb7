"""Cards through the ``stripe`` SDK against the card processor's stand-in (a real process): the
sandbox tokens of CONTRACT §7, Stripe-signed webhooks at the real notification endpoint, refunds."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
import stripe
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from chassis import web
from chassis.db import outbox_message
from events.envelope import Envelope, build
from events.payments import CapturePayment, RefundPayment
from omstools.standins.stripe import API_KEY, WEBHOOK_SECRET, stripe_signature
from payments import api
from payments.adapters.base import Transient
from payments.adapters.card import StripeCardAdapter
from payments.adapters.registry import Providers
from payments.config import Settings
from payments.db import Payment
from payments.handlers import handle_capture_payment, handle_refund_payment

SETTINGS = Settings(provider_retry_base_seconds=0.001, provider_timeout_seconds=1.5, database_url="sqlite://")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webhook_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def standin(tmp_path_factory, webhook_port) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omstools.standins.stripe",
            "--port",
            str(port),
            "--dir",
            str(tmp_path_factory.mktemp("stripe")),
            "--webhook-url",
            f"http://127.0.0.1:{webhook_port}/v1/providers/stripe/notify",
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
        assert proc.poll() is None and time.monotonic() < deadline, (
            "the card processor's stand-in did not start"
        )
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def providers(standin, sessions, webhook_port) -> AsyncIterator[Providers]:
    adapter = StripeCardAdapter(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, api_base=standin, timeout=5)
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


def capture(order_id: str, token: str, amount: str = "25.00") -> Envelope[CapturePayment]:
    cmd = CapturePayment(
        order_id=order_id, amount=Decimal(amount), currency="CNY", method="card", token=token
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


async def books(standin: str, oid: str) -> dict:
    async with httpx.AsyncClient(base_url=standin) as client:
        ledger = (await client.get("/_standin/ledger")).json()
    intents = [i for i in ledger["payment_intents"] if i["oms_key"] == f"capture:{oid}"]
    ids = {i["id"] for i in intents}
    return {"intents": intents, "refunds": [r for r in ledger["refunds"] if r["payment_intent"] in ids]}


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [
        ("tok_ok", "captured", None),
        ("tok_declined", "failed", "declined"),
        ("tok_flaky", "captured", None),
        ("tok_slow", "failed", "provider_timeout"),
    ],
)
async def test_the_sandbox_tokens_keep_their_meaning(
    sessions, providers, standin, oid, token, status, reason
):
    await handle_capture_payment(capture(oid, token), sessions, providers, SETTINGS)
    p = await payment(sessions, oid)
    assert (p.status, p.failure_reason, p.provider) == (status, reason, "stripe")
    charged = [i for i in (await books(standin, oid))["intents"] if i["status"] == "succeeded"]
    assert len(charged) == (1 if status == "captured" else 0)
    if charged:
        assert (p.provider_ref, charged[0]["amount"]) == (charged[0]["id"], 2500)


async def test_a_redelivered_capture_charges_once(sessions, providers, standin, oid):
    msg = capture(oid, "tok_ok")
    await handle_capture_payment(msg, sessions, providers, SETTINGS)
    await handle_capture_payment(msg, sessions, providers, SETTINGS)
    assert len((await books(standin, oid))["intents"]) == 1
    assert await published(sessions) == ["payment.captured"]


def _event(oid: str, *, amount: int = 2500, event_id: str = "evt_1") -> bytes:
    intent = {
        "id": "pi_lost",
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": "cny",
        "status": "succeeded",
        "metadata": {"oms_key": f"capture:{oid}"},
    }
    return json.dumps(
        {"id": event_id, "object": "event", "type": "payment_intent.succeeded", "data": {"object": intent}}
    ).encode()


async def test_a_signed_webhook_captures_a_payment_whose_answer_was_lost_once(
    sessions, providers, oid, webhook_port
):
    now = datetime.now(UTC)
    async with (
        sessions.begin() as session
    ):  # the write-ahead record of an attempt whose answer never came back
        session.add(
            Payment(
                order_id=oid,
                payment_id="pay-1",
                method="card",
                token_hint="tok_***",
                currency="CNY",
                amount=Decimal("25.00"),
                status="capturing",
                refunded_amount=Decimal("0"),
                idempotency_key=f"capture:{oid}",
                provider="stripe",
                created_at=now,
                updated_at=now,
            )
        )
    body = _event(oid)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{webhook_port}") as client:
        forged = await client.post(
            "/v1/providers/stripe/notify",
            content=body,
            headers={"Stripe-Signature": stripe_signature(body, "whsec_someone_else")},
        )
        stale = await client.post(
            "/v1/providers/stripe/notify",
            content=body,
            headers={"Stripe-Signature": stripe_signature(body, WEBHOOK_SECRET, t=int(time.time()) - 3600)},
        )
        assert (forged.status_code, stale.status_code) == (401, 401)
        assert (await payment(sessions, oid)).status == "capturing"
        for _ in range(2):
            ok = await client.post(
                "/v1/providers/stripe/notify",
                content=body,
                headers={"Stripe-Signature": stripe_signature(body, WEBHOOK_SECRET)},
            )
            assert ok.status_code == 200
    p = await payment(sessions, oid)
    assert (p.status, p.provider_ref) == ("captured", "pi_lost")
    assert await published(sessions) == ["payment.captured"]


async def test_partial_then_full_refund(sessions, providers, standin, oid, refunds_agree):
    await handle_capture_payment(capture(oid, "tok_ok", "100.00"), sessions, providers, SETTINGS)
    await handle_refund_payment(refund(oid, f"{oid}:parcel", "30.00"), sessions, providers, SETTINGS)
    await handle_refund_payment(refund(oid, f"{oid}:cancel"), sessions, providers, SETTINGS)
    p = await payment(sessions, oid)
    assert (p.status, p.refunded_amount) == ("refunded", Decimal("100.00"))
    assert sorted(r["amount"] for r in (await books(standin, oid))["refunds"]) == [3000, 7000]
    await refunds_agree("stripe", oid, 2, never="re_nope")  # the provider's books


async def test_a_refund_failing_at_the_processor_is_retried_and_pays_once(sessions, providers, standin, oid):
    await handle_capture_payment(capture(oid, "tok_ok", "100.00"), sessions, providers, SETTINGS)
    async with httpx.AsyncClient(base_url=standin) as client:
        await client.post("/_standin/fail-refunds", params={"count": SETTINGS.provider_attempts})
    msg = refund(oid, f"{oid}:cancel")
    with pytest.raises(Transient):
        await handle_refund_payment(msg, sessions, providers, SETTINGS)
    assert (await books(standin, oid))["refunds"] == []
    await handle_refund_payment(msg, sessions, providers, SETTINGS)  # redelivered
    await handle_refund_payment(msg, sessions, providers, SETTINGS)
    assert [r["amount"] for r in (await books(standin, oid))["refunds"]] == [10000]
    assert (await payment(sessions, oid)).status == "refunded"


@pytest.mark.parametrize(
    ("dropped", "status", "reason"),
    [
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "captured", None),
        (httpx.ConnectError("Connection refused"), "captured", None),
        (httpx.ReadTimeout("timed out"), "failed", "provider_timeout"),
    ],
)
async def test_a_connection_that_fails_is_tried_again_and_only_silence_is_a_timeout(
    sessions, providers, standin, oid, monkeypatch, dropped, status, reason
):
    """The processor closed the kept-alive connection the request went out on, or refused it: the
    same idempotency key again charges once. Only a request that got no answer in time is unknown
    (looked up, then closed: provider_timeout)."""
    intents = providers.get("stripe")._client.v1.payment_intents
    create = intents.create_async
    calls = 0

    async def drops_the_first(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise stripe.APIConnectionError("Unexpected error communicating with Stripe.") from dropped
        return await create(*args, **kwargs)

    monkeypatch.setattr(intents, "create_async", drops_the_first)
    await handle_capture_payment(capture(oid, "tok_ok"), sessions, providers, SETTINGS)
    p = await payment(sessions, oid)
    assert (p.status, p.failure_reason) == (status, reason)
    charged = [i for i in (await books(standin, oid))["intents"] if i["status"] == "succeeded"]
    assert len(charged) == (1 if status == "captured" else 0)
