"""HTTP: read a payment (ops), refund by hand (admin). Thin: a refund by hand goes through the same
``payments.refund_payment`` command as the saga's, through the outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated
from uuid import uuid4

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from events import outbox
from events.payments import RefundPayment
from events.settings import Role
from events.types import MoneyText
from events.web import Caller, Problem, Runtime, require
from payments.db import HELD_BY_PENDING_REFUNDS, Payment, Refund, RefundRequest

router = APIRouter(prefix="/v1/payments", tags=["payments"])


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Annotated[MoneyText, Field(gt=Decimal("0"))] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=200)]


def _view(p: Payment, refunds: list[Refund], asked_by: dict[str, str] | None = None) -> dict:
    return {
        "order_id": p.order_id,
        "payment_id": p.payment_id,
        "method": p.method,
        "status": p.status,
        "failure_reason": p.failure_reason,
        "amount": format(p.amount, "f"),
        "refunded_amount": format(p.refunded_amount, "f"),
        "currency": p.currency,
        "created_at": p.created_at.isoformat(),
        "updated_at": p.updated_at.isoformat(),
        "refunds": [
            {"refund_id": r.refund_id, "amount": format(r.amount, "f"), "reason": r.reason, "status": r.status,
             "created_at": r.created_at.isoformat(), "requested_by": (asked_by or {}).get(r.refund_key)}
            for r in refunds
        ],
    }


@router.get("", dependencies=[require(Role.OPS)])
async def list_payments(
    rt: Runtime,
    status: Annotated[str | None, Query(pattern="^(captured|failed|partially_refunded|refunded)$")] = None,
    after: Annotated[str | None, Query(description="order id to continue after (the previous page's next)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict:
    """Every payment, by order id: what the consistency check (`make verify`) reads."""
    query = select(Payment).order_by(Payment.order_id).limit(limit)
    if status:
        query = query.where(Payment.status == status)
    if after:
        query = query.where(Payment.order_id > after)
    async with rt.sessions() as session:
        payments = (await session.scalars(query)).all()
        refunds = (
            await session.scalars(select(Refund).where(Refund.order_id.in_([p.order_id for p in payments])))
        ).all()
    by_order: dict[str, list[Refund]] = {}
    for r in refunds:
        by_order.setdefault(r.order_id, []).append(r)
    items = [_view(p, by_order.get(p.order_id, [])) for p in payments]
    return {"items": items, "next": items[-1]["order_id"] if len(items) == limit else None}


@router.get("/{order_id}", dependencies=[require(Role.OPS)])
async def get_payment(order_id: str, rt: Runtime) -> dict:
    """Ops only: payments does not know which gateway placed an order, so a gateway reads the
    payment through its own order (``GET /v1/orders/{id}``), which is scoped to it."""
    async with rt.sessions() as session:
        payment = await session.get(Payment, order_id)
        if payment is None:
            raise Problem(404, "not-found", "Not found", f"no payment for order {order_id}")
        refunds = (await session.scalars(select(Refund).where(Refund.order_id == order_id).order_by(Refund.created_at))).all()
        asked = await session.execute(select(RefundRequest.refund_key, RefundRequest.actor)
                                      .where(RefundRequest.order_id == order_id))
        return _view(payment, list(refunds), dict(asked.tuples().all()))


@router.post("/{order_id}/refunds", status_code=202)
async def refund_by_hand(
    order_id: str, caller: Annotated[Caller, require(Role.ADMIN)], rt: Runtime, body: Annotated[RefundBody, Body()],
) -> dict:
    """A refund by hand, recorded with the admin key's name (``refunds[].requested_by``)."""
    async with rt.sessions.begin() as session:
        payment = await session.get(Payment, order_id)
        if payment is None or payment.status == "failed":
            raise Problem(409, "not-captured", "Nothing captured", f"order {order_id} has no captured payment")
        held = await session.scalar(HELD_BY_PENDING_REFUNDS, {"order_id": order_id}) or 0
        remaining = payment.amount - payment.refunded_amount - held
        if (body.amount or remaining) > remaining or remaining <= 0:
            raise Problem(409, "over-refund", "Refund too large", f"at most {remaining} can still be refunded")
        key = f"manual-{uuid4()}"
        session.add(RefundRequest(refund_key=key, order_id=order_id, actor=caller.name, requested_at=datetime.now(UTC)))
        await outbox.stage(
            session,
            RefundPayment(order_id=order_id, amount=body.amount, reason=body.reason, refund_key=key),
            service="payments",
            subject=order_id,
        )
    return {"order_id": order_id, "refund_key": key, "status": "accepted"}
