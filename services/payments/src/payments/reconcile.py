"""Reconciliation, per provider: what each provider says of a payment against what payments
recorded, for every payment decided (a periodic job over the recent ones; ``make verify`` over all).

A mismatch is never corrected here: it is logged (``payment.reconciliation_mismatch``), counted
(``oms_payment_reconciliation_mismatches{provider,kind}``) and listed at
``GET /v1/providers/reconciliation`` for ops, who decide (the provider's books may be the wrong
ones). Kinds: ``charged_not_recorded`` (the provider took money on a payment recorded failed),
``recorded_not_charged`` (recorded captured, the provider has no such charge), ``amount`` (both
charged, not the same amount); and of each refund we recorded as paid back:
``refund_not_seen`` (the provider has no such refund, or it failed there), ``refund_amount``
(the provider paid back another amount).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.db import table
from chassis.logs import get_logger
from payments.adapters.base import RefundSeen, Transient
from payments.adapters.registry import Providers
from payments.db import CAPTURING, PENDING, REFUNDED, Payment, Refund

log = get_logger(__name__)
CHARGED = ("captured", "partially_refunded", "refunded")
_METRICS: dict[str, Any] = {}


def _metrics() -> tuple[Counter, Gauge]:
    if not _METRICS:  # once per process: the default registry refuses a second registration
        _METRICS["found"] = Counter(
            "oms_payment_reconciliation_mismatches",
            "Payments whose provider's books disagree with ours",
            ["provider", "kind"],
        )
        _METRICS["open"] = Gauge(
            "oms_payment_reconciliation_open",
            "Mismatches found by the last reconciliation round",
            ["provider"],
        )
    return _METRICS["found"], _METRICS["open"]


@dataclass(frozen=True)
class Mismatch:
    order_id: str
    provider: str
    kind: str
    ours: str
    theirs: str


@dataclass
class Round:
    at: datetime
    checked: int
    unreachable: int
    mismatches: list[Mismatch]
    refunds_checked: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "checked": self.checked,
            "refunds_checked": self.refunds_checked,
            "unreachable": self.unreachable,
            "mismatches": [asdict(m) for m in self.mismatches],
        }


def compare(p: Any, charge: Any) -> Mismatch | None:
    """Our record of ``p`` against the provider's ``charge`` (None: it knows of none)."""
    taken = charge is not None and charge.status == "captured"
    ours = f"{p.status} {p.amount} {p.currency}"
    theirs = "no charge" if charge is None else f"{charge.status} {charge.amount} {charge.currency}"
    if p.status in CHARGED and not taken:
        return Mismatch(p.order_id, p.provider, "recorded_not_charged", ours, theirs)
    if p.status not in CHARGED and taken:
        return Mismatch(p.order_id, p.provider, "charged_not_recorded", ours, theirs)
    if taken and charge.amount != p.amount:
        return Mismatch(p.order_id, p.provider, "amount", ours, theirs)
    return None


def compare_refund(r: Any, provider: str, seen: RefundSeen | None) -> Mismatch | None:
    """Our record of a refund paid back against what the provider says of it."""
    ours = f"refund {r.refund_key} {r.amount}"
    if seen is None or seen.status == "failed":
        theirs = "no such refund" if seen is None else f"refund {seen.reference} failed"
        return Mismatch(r.order_id, provider, "refund_not_seen", ours, theirs)
    if seen.amount != r.amount:
        return Mismatch(r.order_id, provider, "refund_amount", ours, f"refund {seen.reference} {seen.amount}")
    return None


async def reconcile(
    sessions: async_sessionmaker,
    providers: Providers,
    *,
    since: datetime | None = None,
    settled_for: timedelta = timedelta(seconds=30),
    timeout: float = 10.0,
) -> Round:
    """Ask each payment's provider about every payment decided (updated since ``since``, and at
    least ``settled_for`` ago, so an answer on its way is not a mismatch); report, change nothing."""
    now = datetime.now(UTC)
    payment, refund = table(Payment), table(Refund)
    query = (
        select(payment)
        .where(payment.c.status.not_in((PENDING, CAPTURING)), payment.c.updated_at <= now - settled_for)
        .order_by(payment.c.order_id)
    )
    if since is not None:
        query = query.where(payment.c.updated_at >= since)
    refunds_query = (
        select(
            refund, payment.c.provider.label("payment_provider"), payment.c.provider_ref.label("payment_ref")
        )
        .join(payment, payment.c.order_id == refund.c.order_id)
        .where(refund.c.status == REFUNDED, refund.c.created_at <= now - settled_for)
        .order_by(refund.c.order_id, refund.c.refund_key)
    )
    if since is not None:
        refunds_query = refunds_query.where(refund.c.created_at >= since)
    async with sessions() as session:
        payments = (await session.execute(query)).all()
        refunds = (await session.execute(refunds_query)).all()
    found, unreachable = [], 0
    for p in payments:
        adapter = providers.get(p.provider)
        if adapter is None or p.idempotency_key is None:
            unreachable += 1
            continue
        try:
            charge = await asyncio.wait_for(adapter.query(p.idempotency_key, p.provider_ref), timeout=timeout)
        except (TimeoutError, Transient, OSError) as exc:
            log.warning(
                "payment.reconciliation_unreachable",
                order_id=p.order_id,
                provider=p.provider,
                error=type(exc).__name__,
            )
            unreachable += 1
            continue
        mismatch = compare(p, charge)
        if mismatch is not None:
            found.append(mismatch)
    for r in refunds:
        provider, payment_ref = r.payment_provider, r.payment_ref
        adapter = providers.get(provider)
        if adapter is None or payment_ref is None:
            unreachable += 1
            continue
        try:
            seen = await asyncio.wait_for(
                adapter.refund_status(
                    payment_ref=payment_ref, idempotency_key=r.refund_key, reference=r.provider_ref
                ),
                timeout=timeout,
            )
        except (TimeoutError, Transient, OSError) as exc:
            log.warning(
                "payment.reconciliation_unreachable",
                order_id=r.order_id,
                provider=provider,
                error=type(exc).__name__,
            )
            unreachable += 1
            continue
        mismatch = compare_refund(r, provider, seen)
        if mismatch is not None:
            found.append(mismatch)
    counter, gauge = _metrics()
    providers_seen = {p.provider for p in payments} | {r.payment_provider for r in refunds}
    for name in providers_seen | {m.provider for m in found}:
        gauge.labels(name).set(sum(1 for m in found if m.provider == name))
    for m in found:
        counter.labels(m.provider, m.kind).inc()
        log.error(
            "payment.reconciliation_mismatch",
            order_id=m.order_id,
            provider=m.provider,
            kind=m.kind,
            ours=m.ours,
            theirs=m.theirs,
        )
    return Round(
        at=now, checked=len(payments), unreachable=unreachable, mismatches=found, refunds_checked=len(refunds)
    )
