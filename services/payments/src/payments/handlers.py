"""Subscribers: decode → provider → payment row + outbox event in ONE transaction.

The provider is called outside any transaction (it may take seconds); the order id is its
idempotency key, and the payment row's primary key is the order id, so an order is charged once
whatever is redelivered or sent twice. A capture command taken after its ``not_after`` (it waited
in its queue longer than the saga waits for the answer) is not charged: it is recorded failed,
reason ``expired``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Annotated, Any
from uuid import uuid4

from faststream.rabbit import RabbitRouter
from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from events import inbox, outbox
from events.broker import Permanent, Resource, queue
from events.envelope import Envelope
from events.logs import get_logger
from events.payments import CapturePayment, PaymentCaptured, PaymentFailed, PaymentRefunded, RefundPayment
from events.types import PaymentStatus
from payments.config import Settings
from payments.db import HELD_BY_PENDING_REFUNDS, REFUND_PENDING, REFUNDED, Payment, Refund
from payments.domain import RefundRefused, decide_refund, mask_token, status_after_refunds
from payments.provider import Declined, SandboxProvider, Transient

SERVICE = "payments"
CAPTURE = "payments.capture_payment"
REFUND = "payments.refund_payment"

log = get_logger(__name__)
router = RabbitRouter()

Sessions = Annotated[async_sessionmaker, Resource("sessions")]
Provider = Annotated[SandboxProvider, Resource("provider")]
Config = Annotated[Settings, Resource("settings")]


class Expired(Exception):
    """The asker's deadline (``CapturePayment.not_after``) passed before the provider was called."""


def _expired(not_after: datetime | None) -> bool:
    return not_after is not None and datetime.now(UTC) >= not_after


async def _with_retries(call, settings: Settings, not_after: datetime | None = None):
    """Call the provider, retrying transient failures with exponential back-off; no call, first
    or retried, starts after ``not_after`` (:class:`Expired`)."""
    for attempt in range(1, settings.provider_attempts + 1):
        if _expired(not_after):
            raise Expired()
        try:
            return await asyncio.wait_for(call(), timeout=settings.provider_timeout_seconds)
        except Transient as exc:
            if attempt == settings.provider_attempts:
                raise
            delay = settings.provider_retry_base_seconds * 2 ** (attempt - 1)
            log.info("payment.provider_retry", attempt=attempt, delay_s=delay, error=str(exc))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _captured_event(p: Any) -> PaymentCaptured:
    return PaymentCaptured(
        order_id=p.order_id, payment_id=p.payment_id, amount=p.amount, currency=p.currency, method=p.method
    )


# Built once: a statement built per command (and the ORM's get and flush) cost SQLAlchemy more
# than SQLite took to run it.
_payment = Payment.__table__
_DECIDED = select(
    _payment.c.order_id, _payment.c.payment_id, _payment.c.amount, _payment.c.currency, _payment.c.method,
    _payment.c.status, _payment.c.failure_reason,
).where(_payment.c.order_id == bindparam("order_id"))
_INSERT_PAYMENT = insert(_payment)


async def _restage_outcome(session: AsyncSession, p: Any, msg: Envelope) -> None:
    """Tell the asker the order's outcome (again, when it was decided before). ``p``: a row of
    ``_DECIDED``, or the values just written."""
    if p.status == PaymentStatus.FAILED:
        event = PaymentFailed(order_id=p.order_id, reason=p.failure_reason or "declined")
    else:
        event = _captured_event(p)
    await outbox.stage(session, event, service=SERVICE, subject=p.order_id, causation=msg)


@router.subscriber(queue(CAPTURE))
async def handle_capture_payment(
    msg: Envelope[CapturePayment], sessions: Sessions, provider: Provider, settings: Config
) -> None:
    cmd = msg.data
    async with sessions.begin() as session:
        existing = (await session.execute(_DECIDED, {"order_id": cmd.order_id})).first()
        if existing is not None:
            if await inbox.claim(session, msg.id, CAPTURE):
                log.info("payment.already_decided", status=existing.status)
                await _restage_outcome(session, existing, msg)
            return

    reason: str | None = None
    provider_ref: str | None = None
    try:
        provider_ref = await _with_retries(
            lambda: provider.capture(order_id=cmd.order_id, token=cmd.token, amount=cmd.amount, currency=cmd.currency),
            settings,
            cmd.not_after,
        )
    except Expired:  # the saga has stopped waiting: a charge now would only be refunded
        reason = "expired"
    except Declined:
        reason = "declined"
    except Transient:
        reason = "provider_unavailable"
    except TimeoutError:
        reason = "provider_timeout"

    now = datetime.now(UTC)
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, CAPTURE):
            return
        payment = SimpleNamespace(
            order_id=cmd.order_id,
            payment_id=f"pay-{uuid4()}",
            method=cmd.method,
            token_hint=mask_token(cmd.token),
            currency=cmd.currency,
            amount=cmd.amount,
            status=PaymentStatus.FAILED if reason else PaymentStatus.CAPTURED,
            failure_reason=reason,
            refunded_amount=Decimal("0"),
            provider_ref=provider_ref,
            created_at=now,
            updated_at=now,
        )
        # The primary key (order id) refuses a second payment for the order.
        await session.execute(_INSERT_PAYMENT, vars(payment))
        await _restage_outcome(session, payment, msg)
    log.info("payment.decided", status=payment.status, reason=reason, amount=str(cmd.amount))


@router.subscriber(queue(REFUND))
async def handle_refund_payment(
    msg: Envelope[RefundPayment], sessions: Sessions, provider: Provider, settings: Config
) -> None:
    """Hold the refund against the capture, then ask the provider, then record its answer.

    The first transaction decides the amount under the payment's lock and writes the refund
    ``pending``, so a concurrent refund (another key) counts it and can never take the capture
    past its amount. The provider is called outside any transaction with the refund key as its
    idempotency key: after a crash, a redelivery continues the pending refund with the same key
    and amount, and the provider pays once."""
    cmd = msg.data
    async with sessions.begin() as session:
        payment = await _locked_payment(session, cmd.order_id)
        refund = await session.scalar(select(Refund).where(Refund.refund_key == cmd.refund_key))
        if refund is not None and refund.status == REFUNDED:  # done before: told again
            if await inbox.claim(session, msg.id, REFUND):
                await outbox.stage(session, _refunded_event(payment, refund), service=SERVICE, subject=cmd.order_id, causation=msg)
            return
        if refund is None:  # else: held by an earlier delivery that did not finish; the same refund
            if payment is None or payment.status == PaymentStatus.FAILED:
                raise Permanent(f"no captured payment for order {cmd.order_id}")
            held = await session.scalar(HELD_BY_PENDING_REFUNDS, {"order_id": cmd.order_id})
            try:
                decision = decide_refund(captured=payment.amount, refunded=payment.refunded_amount + (held or 0),
                                         requested=cmd.amount)
            except RefundRefused as exc:
                raise Permanent(str(exc)) from exc
            refund = Refund(
                refund_id=f"ref-{uuid4()}", refund_key=cmd.refund_key, order_id=cmd.order_id, amount=decision.amount,
                reason=cmd.reason[:200], status=REFUND_PENDING, provider_ref=None, created_at=datetime.now(UTC),
            )
            session.add(refund)
        refund_id, amount, payment_ref = refund.refund_id, refund.amount, payment.provider_ref

    refund_ref = await _with_retries(
        lambda: provider.refund(payment_ref=payment_ref, amount=amount, idempotency_key=cmd.refund_key), settings
    )

    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, REFUND):
            return
        payment = await _locked_payment(session, cmd.order_id)
        refund = await session.get(Refund, refund_id)
        if refund.status == REFUND_PENDING:  # else finished meanwhile by another message with the same key
            refund.status, refund.provider_ref = REFUNDED, refund_ref
            payment.refunded_amount += refund.amount
            payment.status = status_after_refunds(payment.amount, payment.refunded_amount)
            payment.updated_at = datetime.now(UTC)
            await session.flush()
        await outbox.stage(session, _refunded_event(payment, refund), service=SERVICE, subject=cmd.order_id, causation=msg)
    log.info("payment.refunded", amount=str(amount), refunded_total=str(payment.refunded_amount))


async def _locked_payment(session: AsyncSession, order_id: str) -> Payment | None:
    """The order's payment, read afresh and locked for this transaction (refunds change it)."""
    return await session.scalar(
        select(Payment).where(Payment.order_id == order_id).with_for_update().execution_options(populate_existing=True)
    )


def _refunded_event(payment: Payment, refund: Refund) -> PaymentRefunded:
    return PaymentRefunded(
        order_id=payment.order_id,
        payment_id=payment.payment_id,
        refund_id=refund.refund_id,
        refund_key=refund.refund_key,
        amount=refund.amount,
        refunded_total=payment.refunded_amount,
        currency=payment.currency,
    )
