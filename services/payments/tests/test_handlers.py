"""The capture and refund handlers on a real SQLite database, with the sandbox provider; refunds
racing for one capture on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from concurrency import Meeting
from sqlalchemy import select

from events.broker import Permanent
from events.db import outbox_message
from events.envelope import Envelope, build
from events.payments import CapturePayment, RefundPayment
from payments import handlers
from payments.config import Settings
from payments.db import Payment, Refund
from payments.handlers import handle_capture_payment, handle_refund_payment
from payments.provider import SandboxProvider

SETTINGS = Settings(provider_retry_base_seconds=0.001, provider_timeout_seconds=0.2, database_url="sqlite://")


def capture(
    order_id: str, token: str, amount: str = "25.00", not_after: datetime | None = None
) -> Envelope[CapturePayment]:
    cmd = CapturePayment(
        order_id=order_id, amount=Decimal(amount), currency="CNY", method="card", token=token, not_after=not_after
    )
    return Envelope[CapturePayment].model_validate(build(cmd, service="orders", subject=order_id))


def refund(order_id: str, key: str, amount: str | None = None) -> Envelope[RefundPayment]:
    cmd = RefundPayment(order_id=order_id, amount=Decimal(amount) if amount else None, reason="test", refund_key=key)
    return Envelope[RefundPayment].model_validate(build(cmd, service="orders", subject=order_id))


async def published(sessions) -> list[dict]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]


@pytest.mark.parametrize(
    ("token", "status", "event"),
    [("tok_ok", "captured", "payment.captured"), ("tok_visa", "captured", "payment.captured"),
     ("tok_declined", "failed", "payment.failed"), ("tok_flaky", "captured", "payment.captured"),
     ("tok_slow", "failed", "payment.failed")],
)
async def test_sandbox_tokens(sessions, token, status, event):
    await handle_capture_payment(capture("o1", token), sessions, SandboxProvider(), SETTINGS)
    async with sessions() as session:
        payment = await session.get(Payment, "o1")
    assert payment.status == status
    assert payment.token_hint == "tok_***"
    events = await published(sessions)
    assert [e["key"] for e in events] == [event]
    assert "tok_" not in json.dumps(events), "a token must never reach an event"


async def test_slow_provider_fails_with_provider_timeout(sessions):
    await handle_capture_payment(capture("o1", "tok_slow"), sessions, SandboxProvider(), SETTINGS)
    assert (await published(sessions))[0]["data"]["reason"] == "provider_timeout"


async def test_flaky_exhausting_its_retries_fails_as_provider_unavailable(sessions):
    stingy = SETTINGS.model_copy(update={"provider_attempts": 2})
    await handle_capture_payment(capture("o1", "tok_flaky"), sessions, SandboxProvider(), stingy)
    assert (await published(sessions))[0]["data"]["reason"] == "provider_unavailable"


async def test_the_same_command_twice_charges_once(sessions):
    msg = capture("o1", "tok_ok")
    provider = SandboxProvider()
    await handle_capture_payment(msg, sessions, provider, SETTINGS)
    await handle_capture_payment(msg, sessions, provider, SETTINGS)
    assert len(await published(sessions)) == 1


async def test_a_second_capture_command_for_the_order_repeats_the_outcome_without_charging(sessions):
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, SandboxProvider(), SETTINGS)
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, SandboxProvider(), SETTINGS)
    events = await published(sessions)
    assert [e["key"] for e in events] == ["payment.captured", "payment.captured"]
    assert events[0]["data"]["payment_id"] == events[1]["data"]["payment_id"]
    async with sessions() as session:
        assert len((await session.scalars(select(Payment))).all()) == 1


async def test_a_capture_taken_after_its_deadline_charges_nothing_and_says_expired(sessions):
    provider = SandboxProvider()
    late = capture("o1", "tok_ok", not_after=datetime.now(UTC) - timedelta(milliseconds=1))
    await handle_capture_payment(late, sessions, provider, SETTINGS)
    assert provider.charges == {}
    events = await published(sessions)
    assert [(e["key"], e["data"]["reason"]) for e in events] == [("payment.failed", "expired")]
    async with sessions() as session:
        assert (await session.get(Payment, "o1")).status == "failed"
    # a command for the same order later is told the same: the order is never charged after all
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, provider, SETTINGS)
    assert provider.charges == {}


async def test_a_capture_before_its_deadline_is_charged(sessions):
    provider = SandboxProvider()
    await handle_capture_payment(capture("o1", "tok_ok", not_after=datetime.now(UTC) + timedelta(minutes=1)),
                                 sessions, provider, SETTINGS)
    assert list(provider.charges) == ["o1"]


async def test_no_retry_of_a_flaky_provider_starts_after_the_deadline(sessions):
    provider = SandboxProvider()
    patient = SETTINGS.model_copy(update={"provider_retry_base_seconds": 0.2})
    soon = capture("o1", "tok_flaky", not_after=datetime.now(UTC) + timedelta(milliseconds=100))
    await handle_capture_payment(soon, sessions, provider, patient)
    assert provider.charges == {}
    assert (await published(sessions))[0]["data"]["reason"] == "expired"


async def test_refund_is_once_per_key_and_never_above_the_capture(sessions):
    provider = SandboxProvider()
    await handle_capture_payment(capture("o1", "tok_ok", "25.00"), sessions, provider, SETTINGS)
    await handle_refund_payment(refund("o1", "o1:cancel"), sessions, provider, SETTINGS)
    await handle_refund_payment(refund("o1", "o1:cancel"), sessions, provider, SETTINGS)  # another message, same key
    refunds = [e for e in await published(sessions) if e["key"] == "payment.refunded"]
    assert len(refunds) == 2 and refunds[0]["data"]["refund_id"] == refunds[1]["data"]["refund_id"]
    assert refunds[0]["data"]["refund_key"] == "o1:cancel"
    async with sessions() as session:
        payment = await session.get(Payment, "o1")
    assert (payment.refunded_amount, payment.status) == (Decimal("25.00"), "refunded")
    with pytest.raises(Permanent):
        await handle_refund_payment(refund("o1", "o1:more", "1.00"), sessions, provider, SETTINGS)


async def test_refund_without_a_capture_is_permanent(sessions):
    with pytest.raises(Permanent):
        await handle_refund_payment(refund("nope", "k"), sessions, SandboxProvider(), SETTINGS)


async def test_payments_are_listed_for_the_consistency_check(sessions):

    import httpx
    from fastapi import FastAPI

    from events.web import install
    from payments.api import router

    app = FastAPI()
    install(app, "payments")
    app.include_router(router)

    class Runtime:
        pass

    rt = Runtime()
    rt.sessions = sessions
    rt.settings = SETTINGS
    app.state.runtime = rt
    for i in range(3):
        await handle_capture_payment(capture(f"o{i}", "tok_ok"), sessions, SandboxProvider(), SETTINGS)
    await handle_refund_payment(refund("o1", "o1:cancel"), sessions, SandboxProvider(), SETTINGS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        ops = {"Authorization": "Bearer dev-ops-key"}
        page = (await client.get("/v1/payments", params={"limit": 2}, headers=ops)).json()
        assert [p["order_id"] for p in page["items"]] == ["o0", "o1"] and page["next"] == "o1"
        assert page["items"][1]["refunded_amount"] == "25.00" and len(page["items"][1]["refunds"]) == 1
        rest = (await client.get("/v1/payments", params={"after": "o1"}, headers=ops)).json()
        assert [p["order_id"] for p in rest["items"]] == ["o2"] and rest["next"] is None
        assert (await client.get("/v1/payments", headers={"Authorization": "Bearer dev-gateway-key"})).status_code == 403
        assert (await client.get("/v1/payments")).status_code == 401


async def test_two_refunds_racing_for_one_capture_never_pay_back_more_than_it(any_sessions, monkeypatch):
    """Each one alone fits; together they would not. The first holds its amount, under the
    payment's lock, before the provider is asked, so the second is refused before it pays anything."""
    sessions, provider = any_sessions, SandboxProvider()
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, provider, SETTINGS)

    # Both read the payment before either goes on (unless its lock keeps one from reading it).
    monkeypatch.setattr(handlers, "_locked_payment", Meeting().after(handlers._locked_payment))
    outcomes = await asyncio.gather(
        *(handle_refund_payment(refund("o1", key, "15.00"), sessions, provider, SETTINGS) for key in ("o1:a", "o1:b")),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "Permanent"]
    assert [amount for _, amount in provider.refunds.values()] == [Decimal("15.00")]
    async with sessions() as session:
        payment = await session.get(Payment, "o1")
        refunds = (await session.execute(select(Refund.status, Refund.amount))).all()
    assert (payment.refunded_amount, payment.status) == (Decimal("15.00"), "partially_refunded")
    assert refunds == [("refunded", Decimal("15.00"))]


class AnswerLost(SandboxProvider):
    """Charges or refunds, then loses the answer the first time (a timeout after the provider acted)."""

    lost = False

    def _lose_once(self) -> None:
        if not self.lost:
            self.lost = True
            raise ConnectionResetError("the answer was lost")

    async def capture(self, **kwargs):
        ref = await super().capture(**kwargs)
        self.answers = [*getattr(self, "answers", []), ref]
        self._lose_once()
        return ref

    async def refund(self, **kwargs):
        ref = await super().refund(**kwargs)
        self._lose_once()
        return ref


async def test_a_capture_whose_answer_was_lost_charges_once_when_redelivered(sessions):
    provider, command = AnswerLost(), capture("o1", "tok_ok")
    with pytest.raises(ConnectionResetError):
        await handle_capture_payment(command, sessions, provider, SETTINGS)
    await handle_capture_payment(command, sessions, provider, SETTINGS)  # redelivered
    assert len(provider.answers) == 2 and len(set(provider.answers)) == 1, "charged twice"
    async with sessions() as session:
        assert (await session.get(Payment, "o1")).provider_ref == provider.answers[0]
    [captured] = await published(sessions)
    assert captured["data"]["amount"] == "25.00"


async def test_a_refund_whose_answer_was_lost_is_paid_once_when_redelivered(sessions):
    provider = AnswerLost()
    provider.lost = True  # the capture's answer arrives
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, provider, SETTINGS)
    provider.lost = False
    command = refund("o1", "o1:cancel")
    with pytest.raises(ConnectionResetError):
        await handle_refund_payment(command, sessions, provider, SETTINGS)
    async with sessions() as session:  # held meanwhile: nothing counted as refunded yet
        assert (await session.get(Payment, "o1")).refunded_amount == Decimal("0")
        assert (await session.execute(select(Refund.status))).scalars().all() == ["pending"]
    await handle_refund_payment(command, sessions, provider, SETTINGS)  # redelivered
    assert [amount for _, amount in provider.refunds.values()] == [Decimal("25.00")]
    async with sessions() as session:
        assert (await session.get(Payment, "o1")).refunded_amount == Decimal("25.00")
        assert (await session.execute(select(Refund.status))).scalars().all() == ["refunded"]
    assert [e["key"] for e in await published(sessions)] == ["payment.captured", "payment.refunded"]
