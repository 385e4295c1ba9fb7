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

from chassis.broker import Permanent
from chassis.db import outbox_message
from events.envelope import Envelope, build
from events.payments import CapturePayment, RefundPayment
from payments import service
from payments.adapters.registry import Providers
from payments.config import Settings
from payments.db import Payment, Refund
from payments.handlers import handle_capture_payment, handle_refund_payment
from payments.provider import Ledger, SandboxProvider

SETTINGS = Settings(provider_retry_base_seconds=0.001, provider_timeout_seconds=0.2, database_url="sqlite://")


def capture(
    order_id: str, token: str, amount: str = "25.00", not_after: datetime | None = None
) -> Envelope[CapturePayment]:
    cmd = CapturePayment(
        order_id=order_id,
        amount=Decimal(amount),
        currency="CNY",
        method="card",
        token=token,
        not_after=not_after,
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


@pytest.mark.parametrize(
    ("token", "status", "event"),
    [
        ("tok_ok", "captured", "payment.captured"),
        ("tok_visa", "captured", "payment.captured"),
        ("tok_declined", "failed", "payment.failed"),
        ("tok_flaky", "captured", "payment.captured"),
        ("tok_slow", "failed", "payment.failed"),
    ],
)
async def test_sandbox_tokens(sessions, token, status, event):
    await handle_capture_payment(capture("o1", token), sessions, Providers.of(SandboxProvider()), SETTINGS)
    async with sessions() as session:
        payment = await session.get(Payment, "o1")
    assert payment.status == status
    assert payment.token_hint == "tok_***"
    events = await published(sessions)
    assert [e["key"] for e in events] == [event]
    assert "tok_" not in json.dumps(events), "a token must never reach an event"


async def test_a_saved_wallet_agreement_is_never_charged_by_the_card_processor(sessions):
    """A token with a wallet method belongs to that wallet's provider: with Alipay not configured
    the payment fails ``method_unavailable``, and the card processor never hears of it."""
    card = SandboxProvider()
    cmd = CapturePayment(
        order_id="o1", amount=Decimal("25.00"), currency="CNY", method="alipay", token="tok_ok"
    )
    msg = Envelope[CapturePayment].model_validate(build(cmd, service="orders", subject="o1"))
    await handle_capture_payment(msg, sessions, Providers.of(card), SETTINGS)
    async with sessions() as session:
        payment = await session.get(Payment, "o1")
    assert (payment.status, payment.failure_reason, payment.provider) == (
        "failed",
        "method_unavailable",
        "alipay",
    )
    assert [(e["key"], e["data"]["reason"]) for e in await published(sessions)] == [
        ("payment.failed", "method_unavailable")
    ]
    assert card.ledger.charges() == []


async def test_slow_provider_fails_with_provider_timeout_and_the_attempt_is_voided(sessions):
    provider = SandboxProvider()
    await handle_capture_payment(capture("o1", "tok_slow"), sessions, Providers.of(provider), SETTINGS)
    assert (await published(sessions))[0]["data"]["reason"] == "provider_timeout"
    assert [c.status for c in provider.ledger.charges()] == ["voided"]  # it can never complete later


async def test_flaky_exhausting_its_retries_fails_as_provider_unavailable(sessions):
    stingy = SETTINGS.model_copy(update={"provider_attempts": 2})
    await handle_capture_payment(
        capture("o1", "tok_flaky"), sessions, Providers.of(SandboxProvider()), stingy
    )
    assert (await published(sessions))[0]["data"]["reason"] == "provider_unavailable"


async def test_the_same_command_twice_charges_once(sessions):
    msg = capture("o1", "tok_ok")
    provider = SandboxProvider()
    await handle_capture_payment(msg, sessions, Providers.of(provider), SETTINGS)
    await handle_capture_payment(msg, sessions, Providers.of(provider), SETTINGS)
    assert len(await published(sessions)) == 1


async def test_a_second_capture_command_for_the_order_repeats_the_outcome_without_charging(sessions):
    provider = SandboxProvider()
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, Providers.of(provider), SETTINGS)
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, Providers.of(provider), SETTINGS)
    events = await published(sessions)
    assert [e["key"] for e in events] == ["payment.captured", "payment.captured"]
    assert events[0]["data"]["payment_id"] == events[1]["data"]["payment_id"]
    assert len(provider.ledger.charges()) == 1
    async with sessions() as session:
        assert len((await session.scalars(select(Payment))).all()) == 1


async def test_a_late_command_is_still_charged_never_expired(sessions):
    """No deadline turns a command into "expired": the money may already have moved."""
    provider = SandboxProvider()
    late = capture("o1", "tok_ok", not_after=datetime.now(UTC) - timedelta(minutes=5))
    await handle_capture_payment(late, sessions, Providers.of(provider), SETTINGS)
    assert [e["key"] for e in await published(sessions)] == ["payment.captured"]
    assert [c.status for c in provider.ledger.charges()] == ["captured"]


class Killed(BaseException):
    """The process dies (nothing in payments catches it)."""


class DiesAfterCharging(SandboxProvider):
    """Charges, then the process dies before payments hears the answer."""

    async def capture(self, **kwargs):
        await super().capture(**kwargs)
        raise Killed("killed between the provider's charge and the commit")


async def test_the_attempt_is_recorded_before_the_provider_is_asked_and_finished_after_a_crash(
    sessions, tmp_path
):
    ledger_file = tmp_path / "provider.db"
    command = capture("o1", "tok_ok")
    with pytest.raises(Killed):
        await handle_capture_payment(
            command, sessions, Providers.of(DiesAfterCharging(ledger=Ledger(ledger_file))), SETTINGS
        )
    async with sessions() as session:
        attempt = await session.get(Payment, "o1")
    assert (attempt.status, attempt.idempotency_key) == ("capturing", "capture:o1")
    assert await published(sessions) == []
    # payments starts again (a new provider client, the provider's ledger as it was) and the
    # command is redelivered: the attempt is finished from the provider's answer, charged once.
    restarted = SandboxProvider(ledger=Ledger(ledger_file))
    await handle_capture_payment(command, sessions, Providers.of(restarted), SETTINGS)
    [charge] = restarted.ledger.charges()
    async with sessions() as session:
        payment = await session.get(Payment, "o1")
    assert (payment.status, payment.provider_ref) == ("captured", charge.reference)
    assert [e["key"] for e in await published(sessions)] == ["payment.captured"]


class ChargesThenHangs(SandboxProvider):
    """The provider charges but its answer never arrives (a timeout after the money moved)."""

    async def capture(self, **kwargs):
        await super().capture(**kwargs)
        await asyncio.Event().wait()


async def test_a_timeout_is_unknown_and_resolved_by_asking_the_provider_never_failed(sessions):
    provider = ChargesThenHangs()
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, Providers.of(provider), SETTINGS)
    assert [e["key"] for e in await published(sessions)] == ["payment.captured"]
    assert [c.status for c in provider.ledger.charges()] == ["captured"]


class Unreachable(ChargesThenHangs):
    async def lookup(self, key):
        raise ConnectionRefusedError("provider unreachable")


async def test_an_attempt_the_provider_cannot_account_for_stays_capturing_and_is_retried(sessions):
    command = capture("o1", "tok_ok")
    with pytest.raises(service.Unresolved):
        await handle_capture_payment(command, sessions, Providers.of(Unreachable()), SETTINGS)
    async with sessions() as session:
        assert (await session.get(Payment, "o1")).status == "capturing"
    assert await published(sessions) == []


def test_the_sandbox_ledger_survives_a_restart(tmp_path):
    Ledger(tmp_path / "l.db").record_charge("capture:o1", "captured", Decimal("1.00"), "CNY")
    assert Ledger(tmp_path / "l.db").charge("capture:o1").status == "captured"


async def test_refund_is_once_per_key_and_never_above_the_capture(sessions):
    provider = SandboxProvider()
    await handle_capture_payment(capture("o1", "tok_ok", "25.00"), sessions, Providers.of(provider), SETTINGS)
    await handle_refund_payment(refund("o1", "o1:cancel"), sessions, Providers.of(provider), SETTINGS)
    await handle_refund_payment(
        refund("o1", "o1:cancel"), sessions, Providers.of(provider), SETTINGS
    )  # another message, same key
    refunds = [e for e in await published(sessions) if e["key"] == "payment.refunded"]
    assert len(refunds) == 2 and refunds[0]["data"]["refund_id"] == refunds[1]["data"]["refund_id"]
    assert refunds[0]["data"]["refund_key"] == "o1:cancel"
    async with sessions() as session:
        payment = await session.get(Payment, "o1")
    assert (payment.refunded_amount, payment.status) == (Decimal("25.00"), "refunded")
    with pytest.raises(Permanent):
        await handle_refund_payment(
            refund("o1", "o1:more", "1.00"), sessions, Providers.of(provider), SETTINGS
        )


async def test_refund_without_a_capture_is_permanent(sessions):
    with pytest.raises(Permanent):
        await handle_refund_payment(refund("nope", "k"), sessions, Providers.of(SandboxProvider()), SETTINGS)


async def test_payments_are_listed_for_the_consistency_check(sessions):

    import httpx
    from fastapi import FastAPI

    from chassis.web import install
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
        await handle_capture_payment(
            capture(f"o{i}", "tok_ok"), sessions, Providers.of(SandboxProvider()), SETTINGS
        )
    await handle_refund_payment(
        refund("o1", "o1:cancel"), sessions, Providers.of(SandboxProvider()), SETTINGS
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        ops = {"Authorization": "Bearer dev-ops-key"}
        page = (await client.get("/v1/payments", params={"limit": 2}, headers=ops)).json()
        assert [p["order_id"] for p in page["items"]] == ["o0", "o1"] and page["next"] == "o1"
        assert page["items"][1]["refunded_amount"] == "25.00" and len(page["items"][1]["refunds"]) == 1
        rest = (await client.get("/v1/payments", params={"after": "o1"}, headers=ops)).json()
        assert [p["order_id"] for p in rest["items"]] == ["o2"] and rest["next"] is None
        assert (
            await client.get("/v1/payments", headers={"Authorization": "Bearer dev-gateway-key"})
        ).status_code == 403
        assert (await client.get("/v1/payments")).status_code == 401


async def test_two_refunds_racing_for_one_capture_never_pay_back_more_than_it(any_sessions, monkeypatch):
    """Each one alone fits; together they would not. The first holds its amount, under the
    payment's lock, before the provider is asked, so the second is refused before it pays anything."""
    sessions, provider = any_sessions, SandboxProvider()
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, Providers.of(provider), SETTINGS)

    # Both read the payment before either goes on (unless its lock keeps one from reading it).
    monkeypatch.setattr(service, "payment_of", Meeting().after(service.payment_of))
    outcomes = await asyncio.gather(
        *(
            handle_refund_payment(refund("o1", key, "15.00"), sessions, Providers.of(provider), SETTINGS)
            for key in ("o1:a", "o1:b")
        ),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "Permanent"]
    assert [r.amount for r in provider.ledger.refunds()] == [Decimal("15.00")]
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


async def test_a_capture_whose_answer_was_lost_is_looked_up_and_charged_once(sessions):
    provider, command = AnswerLost(), capture("o1", "tok_ok")
    await handle_capture_payment(command, sessions, Providers.of(provider), SETTINGS)
    await handle_capture_payment(command, sessions, Providers.of(provider), SETTINGS)  # redelivered
    [charge] = provider.ledger.charges()
    async with sessions() as session:
        assert (await session.get(Payment, "o1")).provider_ref == charge.reference
    [captured] = await published(sessions)
    assert captured["data"]["amount"] == "25.00"


async def test_a_refund_whose_answer_was_lost_is_paid_once_when_redelivered(sessions):
    provider = AnswerLost()
    provider.lost = True  # the capture's answer arrives
    await handle_capture_payment(capture("o1", "tok_ok"), sessions, Providers.of(provider), SETTINGS)
    provider.lost = False
    command = refund("o1", "o1:cancel")
    with pytest.raises(ConnectionResetError):
        await handle_refund_payment(command, sessions, Providers.of(provider), SETTINGS)
    async with sessions() as session:  # held meanwhile: nothing counted as refunded yet
        assert (await session.get(Payment, "o1")).refunded_amount == Decimal("0")
        assert (await session.execute(select(Refund.status))).scalars().all() == ["pending"]
    await handle_refund_payment(command, sessions, Providers.of(provider), SETTINGS)  # redelivered
    assert [r.amount for r in provider.ledger.refunds()] == [Decimal("25.00")]
    async with sessions() as session:
        assert (await session.get(Payment, "o1")).refunded_amount == Decimal("25.00")
        assert (await session.execute(select(Refund.status))).scalars().all() == ["refunded"]
    assert [e["key"] for e in await published(sessions)] == ["payment.captured", "payment.refunded"]
