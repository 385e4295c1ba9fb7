"""Tables of the inventory service (plus the shared outbox/inbox tables from chassis.db)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Float, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chassis.db import UtcDateTime


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime()}


class Warehouse(Base):
    __tablename__ = "warehouse"

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)


class Stock(Base):
    """Units of one SKU at one warehouse. Changes lock the row first, reservations take units by a
    guarded UPDATE (``on_hand - reserved >= :q``), and the CHECKs below refuse anything else, so
    concurrent orders never oversell (service.py)."""

    __tablename__ = "stock"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    warehouse: Mapped[str] = mapped_column(ForeignKey("warehouse.code"))
    sku: Mapped[str] = mapped_column(String(64), index=True)
    on_hand: Mapped[int]
    reserved: Mapped[int]
    low_stock_threshold: Mapped[int]
    reorder_quantity: Mapped[int]
    low_alerted: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (
        UniqueConstraint("warehouse", "sku"),
        CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
    )


class Reservation(Base):
    """Units of one SKU an order holds (or held) at one warehouse."""

    __tablename__ = "reservation"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    warehouse: Mapped[str] = mapped_column(String(20))
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]
    status: Mapped[str] = mapped_column(String(20))  # reserved | released | committed
    parcel: Mapped[str | None] = mapped_column(String(64))
    """A replacement parcel's reservation: that parcel (released on its own when no carrier takes
    it); None: the order's first reservation."""
    returned: Mapped[int] = mapped_column(default=0, server_default="0")
    """Of a committed reservation: the units that came back in a return and were restocked."""
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_reservation_status_order", "status", "order_id"),)


class OrderHold(Base):
    """Where an order stands with inventory. The first answer is final: a failed or released order
    is never reserved later (a release may overtake its reservation; a resent reserve may arrive
    after the order was cancelled for want of stock)."""

    __tablename__ = "order_hold"

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(20))  # reserved | released | committed | failed
    shortages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """Of a failed reservation: what was short, told again when the order asks again."""
    allocations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """Of a replacement parcel's hold (``order_id`` = ``<order>/<parcel>``): what it reserved, told
    again when asked again (its units are the order's reservations)."""
    updated_at: Mapped[datetime]


class StockMovement(Base):
    """The audit trail of every change of on_hand or reserved."""

    __tablename__ = "stock_movement"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    warehouse: Mapped[str] = mapped_column(String(20))
    sku: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # receipt adjustment reservation release commit restock
    quantity: Mapped[int]
    order_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(200))
    actor: Mapped[str | None] = mapped_column(String(200))
    """Who moved it: an API key's name (receipts, counts) or the command's source (``oms/orders``)."""
    at: Mapped[datetime]
