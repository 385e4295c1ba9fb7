"""Tables of the orders service (plus the shared outbox/inbox tables and the dead-letter parking)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, Numeric, String, text
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from chassis.db import UtcDateTime


class Base(AsyncAttrs, DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UtcDateTime()}


class Order(Base):
    """The order, its saga, and summaries of its payment and shipment.

    The saga (its JSON) is the truth about where the order stands; ``status``, ``status_reason``,
    ``attention``, ``deadline_at``, ``waiting_since`` and the payment columns are its projection
    (``saga_state.projection``), written with it by every saga step, for queries and the API.

    ``version`` makes every save conditional on nobody else having saved since the load
    (optimistic concurrency, ``service._save``): two replies for one order handled at once never
    lose an update; the loser raises StaleDataError and its message is retried.
    """

    __tablename__ = "order"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    status_reason: Mapped[str | None] = mapped_column(String(40))
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    gateway: Mapped[str | None] = mapped_column(String(200), index=True)
    """The gateway that placed it (its API key's name, or the AMQP command's source): the only
    gateway that sees it. None for orders placed before gateways were recorded (ops/admin only)."""
    channel: Mapped[str] = mapped_column(String(20), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    customer: Mapped[dict[str, Any]]  # contact details: stay in this service
    shipping_address: Mapped[dict[str, Any]]
    payment_method: Mapped[str] = mapped_column(String(20))
    payment_token: Mapped[str | None] = mapped_column(String(200))  # kept until the payment is decided
    payment_status: Mapped[str] = mapped_column(String(20), default="pending")
    payment_amount: Mapped[Decimal] = mapped_column(Numeric(14, 2), default=Decimal("0"))
    payment_failed: Mapped[bool] = mapped_column(default=False)
    refunded_amount: Mapped[Decimal] = mapped_column(Numeric(14, 2), default=Decimal("0"))
    shipment: Mapped[dict[str, Any] | None]
    saga: Mapped[dict[str, Any]]
    deadline_at: Mapped[datetime | None] = mapped_column(index=True)
    waiting_since: Mapped[datetime | None] = mapped_column(index=True)
    """Since when the saga waits for one answer (a projection of the saga, for the dashboard)."""
    attention: Mapped[str | None] = mapped_column(String(500))
    forgotten_at: Mapped[datetime | None]
    """When its contact details were blanked, ORDERS_RETENTION_DAYS after it closed (orders.retention)."""
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    lines: Mapped[list[OrderLine]] = relationship(
        lazy="selectin", order_by="OrderLine.position", cascade="all"
    )
    history: Mapped[list[OrderHistory]] = relationship(
        lazy="selectin", order_by="OrderHistory.id", cascade="all"
    )

    __table_args__ = (
        Index("ix_order_created_id", "created_at", "id"),
        # What the console's search looks orders up by (orders.console.queries): the same
        # expressions there, so the database uses these. ``->>`` reads JSON on PostgreSQL and SQLite.
        Index("ix_order_customer_email", text("lower(customer ->> 'email')")),
        Index("ix_order_customer_phone", text("(customer ->> 'phone')")),
    )


class OrderLine(Base):
    __tablename__ = "order_line"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)
    position: Mapped[int]
    sku: Mapped[str] = mapped_column(String(64), index=True)
    quantity: Mapped[int]
    unit_price: Mapped[Decimal] = mapped_column(Numeric(14, 2))


class OrderHistory(Base):
    __tablename__ = "order_history"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str | None] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str | None] = mapped_column(String(200))
    """Who made the change: an API key's name, or ``oms/<service>`` for the saga's own steps."""
    note: Mapped[str | None] = mapped_column(String(500))
    """What the person who made the change wrote (a cancel's reason), if anything."""


class OrderParcel(Base):
    """Each parcel's tracking number and its order, so the console's search finds an order by any
    of its parcels (an order split over warehouses ships several)."""

    __tablename__ = "order_parcel"

    tracking_number: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)


class IdempotencyKey(Base):
    """One row per caller and Idempotency-Key (HTTP) or place_order command id (AMQP): the key is
    prefixed with the caller's name, so two gateways never share one."""

    __tablename__ = "idempotency_key"

    key: Mapped[str] = mapped_column(String(500), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20))  # in_progress | done
    order_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
