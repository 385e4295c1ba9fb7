"""The money path: every operation of payments, each in its own transactions, with the events it
emits. The subscribers (``payments.handlers``) and the HTTP endpoints (``payments.api``) call these.

A capture with a token is recorded ``capturing`` (with the provider's idempotency key) in its own
transaction *before* the provider is asked; the provider's answer then finishes it. Whatever
happens between the two (a crash, a lost answer, a timeout), the next delivery of the command, or
the saga's resend, finds the attempt ``capturing`` and asks the provider what became of it by that
key, whatever time it is: a charge the provider made is recorded captured, never forgotten. A
timeout at the provider is "unknown": payments looks the attempt up, and only when the provider
never completed it does payments void it (so it can never complete later) and answer
``payment.failed`` (``provider_timeout``). The payment row's primary key is the order id: an order
is charged once.

A payment the customer makes (a QR code, a redirect) is opened the same way write-ahead, and then
settled by the provider's verified notification (``apply_notification``, from ``POST
/v1/providers/{provider}/notify``), the end of its payment window (``expire_windows``, a
background job), or its order's cancellation (``close_pending``, for ``payments.cancel_payment``).
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from prometheus_client import Counter
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chassis import inbox, outbox
from chassis.broker import Permanent, Unavailable
from chassis.db import held_first, table
from chassis.logs import get_logger
from events import topology
from events.envelope import Envelope
from events.payments import (
    CancelPayment,
    CapturePayment,
    PaymentActionRequired,
    PaymentCaptured,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
)
from events.types import PaymentStatus
from payments.adapters.base import Adapter, Declined, Notification, Transient, Unsupported
from payments.adapters.registry import NOPAY, Providers
from payments.config import Settings
from payments.db import CAPTURING, HELD_BY_PENDING_REFUNDS, PENDING, REFUND_PENDING, REFUNDED, Payment, Refund
from payments.domain import RefundRefused, decide_refund, mask_token, status_after_refunds

SERVICE = "payments"
NOTIFY = "payments.provider_notification"
CAPTURE = topology.command_queue("payments.capture_payment")
REFUND = topology.command_queue("payments.refund_payment")
CANCEL = topology.command_queue("payments.cancel_payment")

log = get_logger(__name__)

# A row of payments is held one way: a Core row with its columns as attributes (a SimpleNamespace
# where it changes), read and written with these prebuilt statements (docs/operations.md).
_payment, _refund = table(Payment), table(Refund)
_PAYMENT = select(_payment).where(_payment.c.order_id == bindparam("order_id"))
_PAYMENT_LOCKED = _PAYMENT.with_for_update()
_PAYMENT_BY_KEY = select(_payment).where(
    _payment.c.provider == bindparam("provider"), _payment.c.idempotency_key == bindparam("key")
)
_PAYMENT_BY_KEY_LOCKED = _PAYMENT_BY_KEY.with_for_update()
_UPDATE_PAYMENT = update(_payment).where(_payment.c.order_id == bindparam("key_order_id"))
_REFUND = select(_refund).where(_refund.c.refund_key == bindparam("refund_key"))
_INSERT_REFUND = insert(_refund)
_UPDATE_REFUND = update(_refund).where(_refund.c.refund_id == bindparam("key_refund_id"))


async def payment_of(session: AsyncSession, order_id: str, *, lock: bool = False) -> SimpleNamespace | None:
    """The order's payment; ``lock``: read afresh and locked for this transaction (to change it)."""
    return held_first(await session.execute(_PAYMENT_LOCKED if lock else _PAYMENT, {"order_id": order_id}))


async def _payment_by_key(
    session: AsyncSession, provider: str, key: str, *, lock: bool = False
) -> SimpleNamespace | None:
    statement = _PAYMENT_BY_KEY_LOCKED if lock else _PAYMENT_BY_KEY
    return held_first(await session.execute(statement, {"provider": provider, "key": key}))


async def _change_payment(session: AsyncSession, payment: SimpleNamespace, **values: Any) -> None:
    """Write ``values`` to the payment's row, and to the row as held here."""
    for name, value in values.items():
        setattr(payment, name, value)
    await session.execute(_UPDATE_PAYMENT, {"key_order_id": payment.order_id, **values})


_MONEY_MAY_ARRIVE = (PENDING, CAPTURING, PaymentStatus.FAILED)
"""The payments a provider's notification of money may capture (one failed when its window closed
too: the money is recorded, and the cancelled order refunds it)."""


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
            waiting = await _payment_by_key(session, provider.name, note.key)
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
        known = await _payment_by_key(session, provider.name, note.key)
    if known is not None and known.status not in _MONEY_MAY_ARRIVE:
        return "ignored"
    async with sessions.begin() as session:
        if not await inbox.claim(session, f"{provider.name}:{note.id}"[: inbox.MAX_MESSAGE_ID], NOTIFY):
            return "duplicate"
        payment = await _payment_by_key(session, provider.name, note.key, lock=True)
        if payment is None:
            log.warning("payment.notification_unknown", provider=provider.name)
            return "unknown"
        if payment.status not in _MONEY_MAY_ARRIVE:
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


async def _record_captured(session: AsyncSession, payment: SimpleNamespace, reference: str | None) -> None:
    await _change_payment(
        session,
        payment,
        status=PaymentStatus.CAPTURED,
        failure_reason=None,
        provider_ref=reference,
        updated_at=datetime.now(UTC),
    )
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
        p = await payment_of(session, order_id)
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
        payment = await payment_of(session, order_id, lock=True)
        assert payment is not None
        if payment.status != PENDING:
            return True  # decided meanwhile (its notification)
        if charge.status == "captured" and charge.amount == payment.amount:
            await _record_captured(session, payment, charge.reference)
            log.info("payment.captured_when_closed", order_id=order_id, reason=reason)
            return True
        await _change_payment(
            session, payment, status=PaymentStatus.FAILED, failure_reason=reason, updated_at=datetime.now(UTC)
        )
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


# -- the commands of the saga ---------------------------------------------------------------


class Unresolved(Unavailable):
    """The provider could not say what became of an attempt: an outage of the provider, waited out
    (the message is tried again in place, its delivery limit untouched)."""

    def __init__(self, reason: str) -> None:
        super().__init__("payment provider", reason)


async def _with_retries(call, settings: Settings):
    """Call the provider, retrying transient failures with exponential back-off."""
    for attempt in range(1, settings.provider_attempts + 1):
        try:
            return await asyncio.wait_for(call(), timeout=settings.provider_timeout_seconds)
        except Transient as exc:
            if attempt == settings.provider_attempts:
                raise
            delay = settings.provider_retry_base_seconds * 2 ** (attempt - 1)
            log.info("payment.provider_retry", attempt=attempt, delay_s=delay, error=str(exc))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


_READ = select(
    _payment.c.order_id,
    _payment.c.payment_id,
    _payment.c.amount,
    _payment.c.currency,
    _payment.c.method,
    _payment.c.status,
    _payment.c.failure_reason,
    _payment.c.idempotency_key,
    _payment.c.provider,
    _payment.c.action_type,
    _payment.c.action_url,
    _payment.c.expires_at,
).where(_payment.c.order_id == bindparam("order_id"))
_INSERT_PAYMENT = insert(_payment)
_FINISH = (
    update(_payment)
    .where(_payment.c.order_id == bindparam("key_order_id"), _payment.c.status == CAPTURING)
    .values(
        status=bindparam("status"),
        failure_reason=bindparam("failure_reason"),
        provider_ref=bindparam("provider_ref"),
        updated_at=bindparam("updated_at"),
    )
)


def _subject(order_id: str) -> str:
    """What the customer sees of an order's payment at its provider."""
    return f"Order {order_id}"


def capture_key(order_id: str) -> str:
    """The provider's idempotency key of an order's capture."""
    return f"capture:{order_id}"


async def _restage_outcome(session: AsyncSession, p: Any, msg: Envelope | None) -> None:
    """Tell the asker the order's outcome (again, when it was decided before); for a payment that
    waits for the customer, what the customer is to do."""
    if p.status == PENDING:
        event: Any = PaymentActionRequired(
            order_id=p.order_id,
            payment_id=p.payment_id,
            method=p.method,
            action_type=p.action_type,
            url=p.action_url,
            expires_at=p.expires_at,
            amount=p.amount,
            currency=p.currency,
        )
    elif p.status == PaymentStatus.FAILED:
        event = PaymentFailed(order_id=p.order_id, reason=p.failure_reason or "declined")
    else:
        event = captured_event(p)
    await outbox.stage(session, event, service=SERVICE, subject=p.order_id, causation=msg)


async def _write_ahead(
    session: AsyncSession,
    msg: Envelope[CapturePayment],
    name: str,
    provider: Adapter | None,
    key: str,
    *,
    expires_at: datetime | None,
) -> Any:
    """The order's attempt at ``provider`` (``name``), recorded ``capturing`` before the provider
    hears of it, with ``key`` in the provider's own form (its merchant order number, as its
    notifications name it) and the end of its window; one left ``capturing`` is resumed. None when
    there is nothing to ask: the payment was decided before (its outcome is told again), or the
    method's provider is not configured (failed ``method_unavailable``)."""
    cmd = msg.data
    known = (await session.execute(_READ, {"order_id": cmd.order_id})).first()
    if known is not None and known.status != CAPTURING:
        if await inbox.claim(session, msg.id, CAPTURE):
            log.info("payment.already_decided", status=known.status)
            await _restage_outcome(session, known, msg)
        return None
    if known is not None:
        log.info("payment.resuming_attempt", order_id=cmd.order_id)
        return known
    now = datetime.now(UTC)
    attempt = SimpleNamespace(
        order_id=cmd.order_id,
        payment_id=f"pay-{uuid4()}",
        method=cmd.method,
        token_hint=mask_token(cmd.token or ""),
        provider=name,
        action_type=None,
        action_url=None,
        expires_at=expires_at,
        currency=cmd.currency,
        amount=cmd.amount,
        status=CAPTURING if provider is not None else PaymentStatus.FAILED,
        failure_reason=None if provider is not None else "method_unavailable",
        refunded_amount=Decimal("0"),
        provider_ref=None,
        idempotency_key=provider.trade_key(key) if provider is not None else key,
        created_at=now,
        updated_at=now,
    )
    await session.execute(_INSERT_PAYMENT, vars(attempt))
    if provider is None:
        await inbox.claim(session, msg.id, CAPTURE)
        await _restage_outcome(session, attempt, msg)
        log.error("payment.method_unavailable", method=cmd.method, provider=name)
        return None
    return attempt


async def capture(
    msg: Envelope[CapturePayment], sessions: async_sessionmaker, providers: Providers, settings: Settings
) -> None:
    cmd = msg.data
    if providers.customer_pays(cmd.method, cmd.token):
        return await _customer_pays(msg, sessions, providers, settings)
    name = providers.name_for(cmd.method, cmd.token)
    provider = providers.get(name)
    async with sessions.begin() as session:
        attempt = await _write_ahead(session, msg, name, provider, capture_key(cmd.order_id), expires_at=None)
    if attempt is None:
        return
    assert provider is not None
    key = attempt.idempotency_key or capture_key(cmd.order_id)
    status, reason, provider_ref = await _outcome(provider, settings, cmd, key)
    _maybe_crash(settings)

    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, CAPTURE):
            return
        await session.execute(
            _FINISH,
            {
                "key_order_id": cmd.order_id,
                "status": status,
                "failure_reason": reason,
                "provider_ref": provider_ref,
                "updated_at": datetime.now(UTC),
            },
        )
        # Finished here or by a concurrent delivery: tell what is recorded.
        decided = (await session.execute(_READ, {"order_id": cmd.order_id})).first()
        await _restage_outcome(session, decided, msg)
    log.info("payment.decided", status=decided.status, reason=decided.failure_reason, amount=str(cmd.amount))


async def _outcome(provider: Adapter, settings: Settings, cmd: CapturePayment, key: str):
    """(status, failure reason, provider reference) of the attempt ``key``, from the provider."""
    try:
        ref = await _with_retries(
            lambda: provider.charge(
                key=key,
                token=cmd.token or "",
                amount=cmd.amount,
                currency=cmd.currency,
                subject=_subject(cmd.order_id),
            ),
            settings,
        )
        return PaymentStatus.CAPTURED, None, ref
    except Declined:
        return PaymentStatus.FAILED, "declined", None
    except (TimeoutError, Transient, OSError) as exc:  # unknown: ask the provider what became of it
        log.warning("payment.outcome_unknown", error=type(exc).__name__)
        gave_up = "provider_unavailable" if isinstance(exc, Transient) else "provider_timeout"
    try:
        charge = await asyncio.wait_for(provider.query(key), timeout=settings.provider_timeout_seconds)
        if charge is None or charge.status == "voided":
            charge = await asyncio.wait_for(
                provider.close(key, amount=cmd.amount, currency=cmd.currency),
                timeout=settings.provider_timeout_seconds,
            )
    except (TimeoutError, Transient, OSError) as exc:
        raise Unresolved(f"the provider could not say what became of {key}") from exc
    if charge.status == "captured":
        return PaymentStatus.CAPTURED, None, charge.reference
    if charge.status == "declined":
        return PaymentStatus.FAILED, "declined", None
    return PaymentStatus.FAILED, gave_up, None


def _maybe_crash(settings: Settings) -> None:
    """Fault injection for the tests (off in production): die like ``kill -9`` between the
    provider's answer and the commit, once, when the marker file exists."""
    marker = settings.fault_crash_after_charge_file
    if marker and Path(marker).exists():
        Path(marker).unlink()
        log.warning("payment.fault_crash_after_charge")
        os._exit(137)


async def refund(
    msg: Envelope[RefundPayment], sessions: async_sessionmaker, providers: Providers, settings: Settings
) -> None:
    """Hold the refund against the capture, then ask the provider, then record its answer.

    The first transaction decides the amount under the payment's lock and writes the refund
    ``pending``, so a concurrent refund (another key) counts it and can never take the capture
    past its amount. The provider is called outside any transaction with the refund key as its
    idempotency key: after a crash, a redelivery continues the pending refund with the same key
    and amount, and the provider pays once."""
    cmd = msg.data
    async with sessions.begin() as session:
        payment = await payment_of(session, cmd.order_id, lock=True)
        refund = held_first(await session.execute(_REFUND, {"refund_key": cmd.refund_key}))
        if refund is not None and refund.status == REFUNDED:  # done before: told again
            if await inbox.claim(session, msg.id, REFUND):
                await outbox.stage(
                    session,
                    _refunded_event(payment, refund),
                    service=SERVICE,
                    subject=cmd.order_id,
                    causation=msg,
                )
            return
        if refund is None:  # else: held by an earlier delivery that did not finish; the same refund
            if payment is not None and payment.status == CAPTURING:
                raise Unresolved(f"the capture of order {cmd.order_id} is not finished yet")
            if payment is None or payment.status in (PaymentStatus.FAILED, PENDING):
                raise Permanent(f"no captured payment for order {cmd.order_id}")
            held = await session.scalar(HELD_BY_PENDING_REFUNDS, {"order_id": cmd.order_id})
            try:
                decision = decide_refund(
                    captured=payment.amount,
                    refunded=payment.refunded_amount + (held or 0),
                    requested=cmd.amount,
                )
            except RefundRefused as exc:
                raise Permanent(str(exc)) from exc
            refund = SimpleNamespace(
                refund_id=f"ref-{uuid4()}",
                refund_key=cmd.refund_key,
                order_id=cmd.order_id,
                amount=decision.amount,
                reason=cmd.reason[:200],
                status=REFUND_PENDING,
                provider_ref=None,
                created_at=datetime.now(UTC),
            )
            await session.execute(_INSERT_REFUND, vars(refund))
        assert payment is not None  # a refund is held only against a captured payment
        refund_id, amount, payment_ref, currency = (
            refund.refund_id,
            refund.amount,
            payment.provider_ref,
            payment.currency,
        )
        provider = providers.get(payment.provider)
    if provider is None:
        raise Unresolved(f"the provider {payment.provider!r} of order {cmd.order_id} is not configured")

    refund_ref = await _with_retries(
        lambda: provider.refund(
            payment_ref=payment_ref, amount=amount, idempotency_key=cmd.refund_key, currency=currency
        ),
        settings,
    )

    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, REFUND):
            return
        payment = await payment_of(session, cmd.order_id, lock=True)
        refund = held_first(await session.execute(_REFUND, {"refund_key": cmd.refund_key}))
        assert payment is not None and refund is not None and refund.refund_id == refund_id
        if refund.status == REFUND_PENDING:  # else finished meanwhile by another message with the same key
            refund.status, refund.provider_ref = REFUNDED, refund_ref
            await session.execute(
                _UPDATE_REFUND, {"key_refund_id": refund_id, "status": REFUNDED, "provider_ref": refund_ref}
            )
            refunded = payment.refunded_amount + refund.amount
            await _change_payment(
                session,
                payment,
                refunded_amount=refunded,
                status=status_after_refunds(payment.amount, refunded),
                updated_at=datetime.now(UTC),
            )
        await outbox.stage(
            session, _refunded_event(payment, refund), service=SERVICE, subject=cmd.order_id, causation=msg
        )
    log.info("payment.refunded", amount=str(amount), refunded_total=str(payment.refunded_amount))


def _refunded_event(payment: Any, refund: Any) -> PaymentRefunded:
    return PaymentRefunded(
        order_id=payment.order_id,
        payment_id=payment.payment_id,
        refund_id=refund.refund_id,
        refund_key=refund.refund_key,
        amount=refund.amount,
        refunded_total=payment.refunded_amount,
        currency=payment.currency,
    )


# --- the customer pays: a QR code or a redirect, a notification, a window ------------------------


async def _customer_pays(
    msg: Envelope[CapturePayment], sessions: async_sessionmaker, providers: Providers, settings: Settings
) -> None:
    """Open the payment at the method's provider and tell the order what the customer is to do.

    Write-ahead as a capture: the attempt is recorded ``capturing`` with its key and the end of its
    window before the provider hears of it, so a redelivery opens the same payment (the same key
    and window); once the provider answered, the payment is ``pending`` until its notification, or
    the window's end (``expire_windows``)."""
    cmd = msg.data
    name = providers.name_for(cmd.method, cmd.token)
    provider = providers.get(name)
    window = timedelta(seconds=settings.payment_window_seconds)
    async with sessions.begin() as session:
        attempt = await _write_ahead(
            session, msg, name, provider, cmd.order_id, expires_at=datetime.now(UTC) + window
        )
    if attempt is None:
        return
    assert provider is not None
    # The sandbox's customer who never pays is told to the stand-in by the order's subject.
    subject = _subject(cmd.order_id) + (f" {NOPAY}" if cmd.token == NOPAY else "")
    try:
        action = await _with_retries(
            lambda: provider.start(
                key=attempt.idempotency_key,
                amount=cmd.amount,
                currency=cmd.currency,
                subject=subject,
                expires_at=attempt.expires_at,
            ),
            settings,
        )
        values = {
            "status": PENDING,
            "action_type": action.type,
            "action_url": action.url,
            "failure_reason": None,
            "provider_ref": action.reference,
        }
    except (Declined, Unsupported) as exc:
        values = {
            "status": PaymentStatus.FAILED,
            "failure_reason": "declined" if isinstance(exc, Declined) else "method_unavailable",
        }
    except (TimeoutError, Transient, OSError) as exc:
        raise Unresolved(f"{name} did not open the payment of order {cmd.order_id}") from exc
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, CAPTURE):
            return
        await session.execute(
            update(_payment)
            .where(_payment.c.order_id == cmd.order_id, _payment.c.status == CAPTURING)
            .values(**values, updated_at=datetime.now(UTC))
        )
        decided = (await session.execute(_READ, {"order_id": cmd.order_id})).first()
        await _restage_outcome(session, decided, msg)
    log.info(
        "payment.waiting_for_customer",
        provider=name,
        status=decided.status,
        expires_at=decided.expires_at.isoformat() if decided.expires_at else None,
    )


async def cancel(
    msg: Envelope[CancelPayment], sessions: async_sessionmaker, providers: Providers, settings: Settings
) -> None:
    """The order was cancelled while its customer was paying: the payment is closed at its provider
    now rather than when its window ends (close_pending). A payment decided already needs
    nothing here: a capture is the saga's to refund. The same command twice closes once."""
    closed = await close_pending(
        sessions, providers, msg.data.order_id, "cancelled", settings.provider_timeout_seconds, cause=msg
    )
    if not closed:
        raise Unresolved(f"the payment of order {msg.data.order_id} could not be closed at its provider yet")
    async with sessions.begin() as session:
        await inbox.claim(session, msg.id, CANCEL)
