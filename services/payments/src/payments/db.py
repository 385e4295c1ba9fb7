"""Tables of the payments service (plus the shared outbox/inbox tables from chassis.db)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Numeric, String, bindparam, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chassis.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class Payment(Base):
    """One per order: the capture, and what was refunded of it."""

    __tablename__ = "payment"

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(64), unique=True)
    method: Mapped[str] = mapped_column(String(20))
    token_hint: Mapped[str] = mapped_column(String(20))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    status: Mapped[str] = mapped_column(String(20))
    failure_reason: Mapped[str | None] = mapped_column(String(100))
    refunded_amount: Mapped[Decimal] = mapped_column(Numeric(14, 2), default=Decimal("0"))
    provider_ref: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    """The provider's idempotency key of the capture attempt, recorded before the provider is asked."""
    provider: Mapped[str] = mapped_column(String(20), default="sandbox", server_default="sandbox")
    """The adapter that took the payment (``sandbox``: the card processor; ``alipay``, ...)."""
    action_type: Mapped[str | None] = mapped_column(String(20))
    """What the customer does to pay (``qr_code`` | ``redirect``), while the payment is ``pending``."""
    action_url: Mapped[str | None] = mapped_column(String(1000))
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    """The end of the payment window: unpaid by then, the payment is closed and fails."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Refund(Base):
    """A refund, written ``pending`` (its amount held against the capture) before the provider is
    asked, and ``refunded`` once it answered."""

    __tablename__ = "refund"

    refund_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    refund_key: Mapped[str] = mapped_column(String(128), unique=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("payment.order_id"), index=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    reason: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(
        String(20), default="refunded", server_default="refunded"
    )  # or pending
    provider_ref: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


REFUND_PENDING, REFUNDED = "pending", "refunded"
CAPTURING = "capturing"
"""A payment's status from its write-ahead record until the provider's answer is recorded."""
PENDING = "pending"
"""Waiting for the customer to pay (a QR code, a redirect) until ``expires_at``."""

HELD_BY_PENDING_REFUNDS = select(func.sum(Refund.amount)).where(
    Refund.order_id == bindparam("order_id"), Refund.status == REFUND_PENDING
)
"""What the order's pending refunds hold of its capture (None when nothing)."""


class RefundRequest(Base):
    """A refund asked for by hand (``POST /v1/payments/{order_id}/refunds``): who asked, written
    with the command it stages; its ``refund_key`` joins it to the refund it became."""

    __tablename__ = "refund_request"

    refund_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())
