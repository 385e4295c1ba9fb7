"""What settles a customer-paid payment besides the capture command: the provider's verified
notification (``apply_notification``, from ``POST /v1/providers/{provider}/notify``), the end of
its payment window (``expire_windows``, a background job), and its order's cancellation
(``close_pending``, for ``payments.cancel_payment``). Each in its own transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chassis import inbox, outbox
from chassis.logs import get_logger
from events.payments import PaymentCaptured, PaymentFailed
from events.types import PaymentStatus
from payments.adapters.base import Adapter, Notification, Transient
from payments.adapters.registry import Providers
from payments.config import Settings
from payments.db import CAPTURING, PENDING, Payment

SERVICE = "payments"
NOTIFY = "payments.provider_notification"

log = get_logger(__name__)


def captured_event(p: Any) -> PaymentCaptured:
    return PaymentCaptured(
        order_id=p.order_id, payment_id=p.payment_id, amount=p.amount, currency=p.currency, method=p.method
    )


async def apply_notification(sessions: async_sessionmaker, provider: Adapter, note: Notification) -> str:
    """A verified notification from ``provider``: the money arrived (or the payment closed). Once
    per notification id; a payment already decided is not decided again, except that money that
    arrives after the window closed is recorded captured (and the cancelled order refunds it).

    An approval (PayPal) is captured first, outside any transaction (the capture's idempotency key
    makes a resent approval the same capture), and only while the payment waits for it: an
    approval that comes after the window closed takes no money."""
    if note.status == "approved":
        async with sessions() as session:
            waiting = await session.scalar(
                select(Payment).where(Payment.provider == provider.name, Payment.idempotency_key == note.key)
            )
        if waiting is None or waiting.status not in (PENDING, CAPTURING) or note.reference is None:
            return "ignored"
        charge = await provider.complete(note.key, reference=note.reference)
        if charge.status != "captured":
            return "ignored"
        note = Notification(
            id=note.id, key=note.key, status="captured", reference=charge.reference, amount=charge.amount
        )
    if note.status != "captured":
        return "ignored"  # only money that arrived changes a payment
    async with sessions() as session:  # most tell what is recorded already (a card's webhook): no write
        known = await session.scalar(
            select(Payment.status).where(
                Payment.provider == provider.name, Payment.idempotency_key == note.key
            )
        )
    if known is not None and known not in (PENDING, CAPTURING, PaymentStatus.FAILED):
        return "ignored"
    async with sessions.begin() as session:
        if not await inbox.claim(session, f"{provider.name}:{note.id}"[: inbox.MAX_MESSAGE_ID], NOTIFY):
            return "duplicate"
        payment = await session.scalar(
            select(Payment)
            .where(Payment.provider == provider.name, Payment.idempotency_key == note.key)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if payment is None:
            log.warning("payment.notification_unknown", provider=provider.name)
            return "unknown"
        if payment.status not in (PENDING, CAPTURING, PaymentStatus.FAILED):
            return "ignored"
        if note.amount is not None and note.amount != payment.amount:
            _mismatches().labels(provider.name).inc()
            log.error(
                "payment.amount_mismatch",
                order_id=payment.order_id,
                provider=provider.name,
                notified=str(note.amount),
                expected=str(payment.amount),
            )
            return "mismatch"
        await _record_captured(session, payment, note.reference)
    log.info("payment.captured_by_notification", order_id=payment.order_id, provider=provider.name)
    return "captured"


async def _record_captured(session: AsyncSession, payment: Payment, reference: str | None) -> None:
    payment.status, payment.failure_reason, payment.provider_ref = PaymentStatus.CAPTURED, None, reference
    payment.updated_at = datetime.now(UTC)
    await session.flush()
    await outbox.stage(session, captured_event(payment), service=SERVICE, subject=payment.order_id)


async def expire_windows(sessions: async_sessionmaker, providers: Providers, settings: Settings) -> int:
    """Close the payments whose window passed unpaid: each at its provider first (so that it can
    never be paid later), then ``payment.failed`` (``payment_timeout``), in its own transaction. A
    payment the provider says was paid meanwhile (its notification lost or late) is captured."""
    now = datetime.now(UTC)
    async with sessions() as session:
        due = (
            (
                await session.execute(
                    select(Payment.order_id)
                    .where(Payment.status == PENDING, Payment.expires_at <= now)
                    .limit(50)
                )
            )
            .scalars()
            .all()
        )
    for order_id in due:
        await close_pending(
            sessions, providers, order_id, "payment_timeout", settings.provider_timeout_seconds
        )
    return len(due)


async def close_pending(
    sessions: async_sessionmaker,
    providers: Providers,
    order_id: str,
    reason: str,
    timeout: float,
    *,
    cause: Any = None,
) -> bool:
    """Close a payment still waiting for its customer at its provider first (so that it can never
    be paid later), then record it failed with ``reason`` and stage ``payment.failed``. A payment the
    provider says was paid meanwhile (its notification lost or late) is captured. False when the
    provider could not be asked (the caller tries again); True when decided, here or before."""
    async with sessions() as session:
        p = await session.get(Payment, order_id)
    provider = providers.get(p.provider) if p is not None else None
    if p is None or p.status != PENDING:
        return True  # decided meanwhile, or never waited for a customer
    if provider is None or p.idempotency_key is None:
        return False
    try:
        charge = await asyncio.wait_for(
            provider.close(p.idempotency_key, amount=p.amount, currency=p.currency, reference=p.provider_ref),
            timeout=timeout,
        )
    except (TimeoutError, Transient, OSError) as exc:
        log.warning("payment.close_failed", order_id=order_id, error=type(exc).__name__)
        return False
    async with sessions.begin() as session:
        payment = await session.scalar(
            select(Payment)
            .where(Payment.order_id == order_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if payment.status != PENDING:
            return True  # decided meanwhile (its notification)
        if charge.status == "captured" and charge.amount == payment.amount:
            await _record_captured(session, payment, charge.reference)
            log.info("payment.captured_when_closed", order_id=order_id, reason=reason)
            return True
        payment.status, payment.failure_reason = PaymentStatus.FAILED, reason
        payment.updated_at = datetime.now(UTC)
        await outbox.stage(
            session,
            PaymentFailed(order_id=order_id, reason=reason),
            service=SERVICE,
            subject=order_id,
            causation=cause,
        )
    log.info("payment.closed", order_id=order_id, reason=reason)
    return True


_METRICS: dict[str, Any] = {}


def _mismatches() -> Any:
    """Notifications whose amount is not the payment's: raised for ops, never captured."""
    if not _METRICS:  # once per process: the default registry refuses a second registration
        _METRICS["mismatch"] = Counter(
            "oms_payment_amount_mismatches", "Provider notifications with another amount", ["provider"]
        )
    return _METRICS["mismatch"]
