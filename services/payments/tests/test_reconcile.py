"""Reconciliation asks each payment's provider about it and reports what disagrees: never a
correction. On a real SQLite database with the sandbox provider's own ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from prometheus_client import REGISTRY

from payments import reconcile
from payments.adapters.registry import Providers
from payments.db import REFUNDED, Payment, Refund
from payments.provider import SandboxProvider


def _payment(order_id: str, status: str, amount: str = "10.00", ref: str | None = None) -> Payment:
    at = datetime.now(UTC) - timedelta(minutes=5)
    return Payment(
        order_id=order_id,
        payment_id=f"pay-{order_id}",
        method="card",
        token_hint="tok_***",
        currency="CNY",
        amount=Decimal(amount),
        status=status,
        refunded_amount=Decimal("0"),
        provider_ref=ref,
        idempotency_key=f"capture:{order_id}",
        provider="sandbox",
        created_at=at,
        updated_at=at,
    )


async def test_each_disagreement_is_reported_and_nothing_is_changed(sessions):
    sandbox = SandboxProvider()
    ok = sandbox.ledger.record_charge("capture:ok", "captured", Decimal("10.00"), "CNY")
    gone = sandbox.ledger.record_charge("capture:charged", "captured", Decimal("10.00"), "CNY")
    other = sandbox.ledger.record_charge("capture:amount", "captured", Decimal("9.00"), "CNY")
    async with sessions.begin() as session:
        session.add_all(
            [
                _payment("ok", "captured", ref=ok.reference),
                _payment("charged", "failed"),  # the provider took money we recorded as failed
                _payment("missing", "captured", ref="pay_nowhere"),  # recorded captured, never charged
                _payment("amount", "refunded", ref=other.reference),
            ]
        )
    before = (
        REGISTRY.get_sample_value(
            "oms_payment_reconciliation_mismatches_total",
            {"provider": "sandbox", "kind": "charged_not_recorded"},
        )
        or 0
    )
    found = await reconcile.reconcile(sessions, Providers.of(sandbox))
    assert found.checked == 4 and found.unreachable == 0
    assert {(m.order_id, m.kind) for m in found.mismatches} == {
        ("charged", "charged_not_recorded"),
        ("missing", "recorded_not_charged"),
        ("amount", "amount"),
    }
    assert (
        REGISTRY.get_sample_value(
            "oms_payment_reconciliation_mismatches_total",
            {"provider": "sandbox", "kind": "charged_not_recorded"},
        )
        == before + 1
    )
    assert REGISTRY.get_sample_value("oms_payment_reconciliation_open", {"provider": "sandbox"}) == 3
    async with sessions() as session:  # reported, never corrected
        assert (await session.get(Payment, "charged")).status == "failed"
        assert (await session.get(Payment, "missing")).status == "captured"
    assert gone.status == "captured"


async def test_a_payment_decided_a_moment_ago_waits_for_the_next_round(sessions):
    async with sessions.begin() as session:
        p = _payment("fresh", "captured", ref="pay_x")
        p.updated_at = datetime.now(UTC)
        session.add(p)
    found = await reconcile.reconcile(sessions, Providers.of(SandboxProvider()))
    assert found.checked == 0 and found.mismatches == []


def _refund(order_id: str, key: str, amount: str, ref: str | None) -> Refund:
    return Refund(
        refund_id=f"ref-{key}",
        refund_key=key,
        order_id=order_id,
        amount=Decimal(amount),
        reason="customer_request",
        status=REFUNDED,
        provider_ref=ref,
        created_at=datetime.now(UTC) - timedelta(minutes=5),
    )


async def test_every_refund_we_recorded_is_looked_up_at_its_provider(sessions):
    sandbox = SandboxProvider()
    charge = sandbox.ledger.record_charge("capture:r", "captured", Decimal("10.00"), "CNY")
    paid_back = sandbox.ledger.record_refund("r:cancel", charge.reference, Decimal("4.00"))
    sandbox.ledger.record_refund("r:parcel", charge.reference, Decimal("2.00"))
    async with sessions.begin() as session:
        p = _payment("r", "partially_refunded", ref=charge.reference)
        session.add(p)
        await session.flush()
        session.add_all(
            [
                _refund("r", "r:cancel", "4.00", paid_back.reference),  # as the provider has it
                _refund("r", "r:parcel", "3.00", None),  # the provider paid back 2.00
                _refund("r", "r:lost", "1.00", None),  # the provider never paid it
            ]
        )
    found = await reconcile.reconcile(sessions, Providers.of(sandbox))
    assert found.refunds_checked == 3 and found.unreachable == 0
    assert {(m.order_id, m.kind, m.ours.split()[1]) for m in found.mismatches} == {
        ("r", "refund_amount", "r:parcel"),
        ("r", "refund_not_seen", "r:lost"),
    }
    assert found.view()["refunds_checked"] == 3
    async with sessions() as session:  # reported, never corrected
        assert (await session.get(Refund, "ref-r:lost")).status == REFUNDED
