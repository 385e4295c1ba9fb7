"""HTTP: read a payment (ops), refund by hand (admin). Thin: a refund by hand goes through the same
``payments.refund_payment`` command as the saga's, through the outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select

from chassis import outbox
from chassis.db import table
from chassis.logs import get_logger
from chassis.settings import Role
from chassis.web import Caller, Problem, Runtime, require
from events.payments import RefundPayment
from events.types import MoneyText
from payments import reconcile, service
from payments.adapters.base import BadSignature
from payments.db import CAPTURING, HELD_BY_PENDING_REFUNDS, Payment, Refund, RefundRequest

log = get_logger(__name__)
router = APIRouter(prefix="/v1/payments", tags=["payments"])


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Annotated[MoneyText, Field(gt=Decimal("0"))] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=200)]


def _view(p: Any, refunds: list[Any], asked_by: dict[str, str] | None = None) -> dict:
    return {
        "order_id": p.order_id,
        "payment_id": p.payment_id,
        "method": p.method,
        "status": p.status,
        "failure_reason": p.failure_reason,
        "provider": p.provider,
        "provider_ref": p.provider_ref,
        "action": {"type": p.action_type, "url": p.action_url, "expires_at": p.expires_at.isoformat()}
        if p.action_url and p.expires_at
        else None,
        "amount": format(p.amount, "f"),
        "refunded_amount": format(p.refunded_amount, "f"),
        "currency": p.currency,
        "created_at": p.created_at.isoformat(),
        "updated_at": p.updated_at.isoformat(),
        "refunds": [
            {
                "refund_id": r.refund_id,
                "refund_key": r.refund_key,
                "amount": format(r.amount, "f"),
                "reason": r.reason,
                "status": r.status,
                "created_at": r.created_at.isoformat(),
                "requested_by": (asked_by or {}).get(r.refund_key),
            }
            for r in refunds
        ],
    }


@router.get("", dependencies=[require(Role.OPS)])
async def list_payments(
    rt: Runtime,
    status: Annotated[
        str | None, Query(pattern="^(capturing|pending|captured|failed|partially_refunded|refunded)$")
    ] = None,
    after: Annotated[
        str | None, Query(description="order id to continue after (the previous page's next)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict:
    """Every payment, by order id: what the consistency check (`make verify`) reads."""
    payment, refund = table(Payment), table(Refund)
    query = select(payment).order_by(payment.c.order_id).limit(limit)
    if status:
        query = query.where(payment.c.status == status)
    if after:
        query = query.where(payment.c.order_id > after)
    async with rt.sessions() as session:
        payments = (await session.execute(query)).all()
        refunds = (
            await session.execute(
                select(refund)
                .where(refund.c.order_id.in_([p.order_id for p in payments]))
                .order_by(refund.c.created_at)
            )
        ).all()
    by_order: dict[str, list[Any]] = {}
    for r in refunds:
        by_order.setdefault(r.order_id, []).append(r)
    items = [_view(p, by_order.get(p.order_id, [])) for p in payments]
    return {"items": items, "next": items[-1]["order_id"] if len(items) == limit else None}


@router.get("/{order_id}", dependencies=[require(Role.OPS)])
async def get_payment(order_id: str, rt: Runtime) -> dict:
    """Ops only: payments does not know which gateway placed an order, so a gateway reads the
    payment through its own order (``GET /v1/orders/{id}``), which is scoped to it."""
    async with rt.sessions() as session:
        payment = await service.payment_of(session, order_id)
        if payment is None:
            raise Problem(404, "not-found", "Not found", f"no payment for order {order_id}")
        refund = table(Refund)
        refunds = (
            await session.execute(
                select(refund).where(refund.c.order_id == order_id).order_by(refund.c.created_at)
            )
        ).all()
        asked = await session.execute(
            select(RefundRequest.refund_key, RefundRequest.actor).where(RefundRequest.order_id == order_id)
        )
        return _view(payment, list(refunds), dict(asked.tuples().all()))


@router.post("/{order_id}/refunds", status_code=202)
async def refund_by_hand(
    order_id: str,
    caller: Annotated[Caller, require(Role.ADMIN)],
    rt: Runtime,
    body: Annotated[RefundBody, Body()],
) -> dict:
    """A refund by hand, recorded with the admin key's name (``refunds[].requested_by``)."""
    async with rt.sessions.begin() as session:
        payment = await service.payment_of(session, order_id, lock=True)
        if payment is None or payment.status in ("failed", CAPTURING):
            raise Problem(
                409, "not-captured", "Nothing captured", f"order {order_id} has no captured payment"
            )
        held = await session.scalar(HELD_BY_PENDING_REFUNDS, {"order_id": order_id}) or 0
        remaining = payment.amount - payment.refunded_amount - held
        if (body.amount or remaining) > remaining or remaining <= 0:
            raise Problem(
                409, "over-refund", "Refund too large", f"at most {remaining} can still be refunded"
            )
        key = f"manual-{uuid4()}"
        await session.execute(
            insert(table(RefundRequest)),
            {
                "refund_key": key,
                "order_id": order_id,
                "actor": caller.name,
                "requested_at": datetime.now(UTC),
            },
        )
        await outbox.stage(
            session,
            RefundPayment(order_id=order_id, amount=body.amount, reason=body.reason, refund_key=key),
            service="payments",
            subject=order_id,
        )
    return {"order_id": order_id, "refund_key": key, "status": "accepted"}


providers = APIRouter(prefix="/v1/providers", tags=["providers"])


@providers.post("/{provider}/notify", include_in_schema=True)
async def provider_notification(provider: str, request: Request, rt: Runtime) -> Response:
    """A provider's notification of a payment, in its own format and signature scheme (no API key:
    the signature is the authentication). A signature that does not verify: 401, nothing changes;
    the same notification again changes nothing again, and is acknowledged as the provider expects."""
    adapter = request.app.state.providers.get(provider) if provider != "sandbox" else None
    if adapter is None:
        raise Problem(404, "not-found", "Not found", f"no payment provider {provider!r} is configured")
    body = await request.body()
    try:
        note = await adapter.verify_notification(request.headers, body)
    except BadSignature:
        log.warning("payment.notification_refused", provider=provider)
        raise Problem(
            401, "bad-signature", "Signature does not verify", "the notification's signature does not verify"
        ) from None
    await service.apply_notification(rt.sessions, adapter, note)
    return PlainTextResponse(adapter.acknowledgement)


@providers.get("/reconciliation", dependencies=[require(Role.OPS)])
async def reconciliation(
    request: Request,
    rt: Runtime,
    run: bool = False,
    settled_for: Annotated[float, Query(ge=0, le=3600)] = 30.0,
) -> dict:
    """Each provider's books against ours: the last round of the reconciliation job (``at`` null:
    none finished yet), or, with ``run=true``, a round over every decided payment now
    (``make verify``). Mismatches are for ops to resolve; nothing here changes a payment."""
    latest = getattr(request.app.state, "reconciliation", None)
    if run:
        latest = await reconcile.reconcile(
            rt.sessions, request.app.state.providers, settled_for=timedelta(seconds=settled_for)
        )
    if latest is None:  # the job's first round has not finished yet
        return {"at": None, "checked": 0, "unreachable": 0, "mismatches": []}
    return latest.view()


@providers.get("/sandbox/ledger", dependencies=[require(Role.OPS)])
async def sandbox_ledger(request: Request) -> dict:
    """The sandbox provider's own books (charges by idempotency key, refunds), for reconciliation
    (`make verify`): every charge must be on a captured payment or refunded."""
    ledger = request.app.state.provider.ledger
    return {
        "charges": [
            {
                "key": c.key,
                "status": c.status,
                "reference": c.reference,
                "amount": format(c.amount, "f"),
                "currency": c.currency,
            }
            for c in ledger.charges()
        ],
        "refunds": [
            {
                "key": r.key,
                "reference": r.reference,
                "charge_reference": r.charge_reference,
                "amount": format(r.amount, "f"),
            }
            for r in ledger.refunds()
        ],
    }
