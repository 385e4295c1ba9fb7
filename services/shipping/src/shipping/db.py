"""Tables of the shipping service (plus the shared outbox/inbox tables from chassis.db)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chassis.db import UtcDateTime


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON, list[dict[str, Any]]: JSON}


class Shipment(Base):
    """One parcel of an order: one per warehouse its stock came from, and one more for each sent
    again. ``parcel`` is the order's name for it (the unique pair): never a parcel shipped twice."""

    __tablename__ = "shipment"

    shipment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(40), index=True)
    parcel: Mapped[str] = mapped_column(String(40))
    warehouse: Mapped[str] = mapped_column(String(20))
    carrier: Mapped[str] = mapped_column(String(20))
    tracking_number: Mapped[str] = mapped_column(String(40), unique=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    estimated_delivery: Mapped[date]
    address: Mapped[dict[str, Any]]  # for the label: stays in this service
    forgotten_at: Mapped[datetime | None]
    """When the label's name and street were blanked, SHIPPING_RETENTION_DAYS after it closed."""
    cancelled: Mapped[bool] = mapped_column(default=False)
    return_expected: Mapped[bool] = mapped_column(default=False)
    return_items: Mapped[list[dict[str, Any]] | None]
    items: Mapped[list[dict[str, Any]] | None]  # what the parcel holds
    next_step_at: Mapped[datetime | None] = mapped_column(index=True)  # the simulated carrier's next move
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    status_since: Mapped[datetime | None]  # when it took its status (a parcel stuck in one shows)
    replaces: Mapped[str | None] = mapped_column(
        String(40)
    )  # the tracking number of the lost parcel it is sent instead of

    __table_args__ = (UniqueConstraint("order_id", "parcel", name="uq_shipment_order_id_parcel"),)


class ShipmentEvent(Base):
    __tablename__ = "shipment_event"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipment.shipment_id"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    location: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (UniqueConstraint("shipment_id", "status", "at"),)


class CancelledOrder(Base):
    """An order cancelled before its shipment was created: its create command is refused."""

    __tablename__ = "cancelled_order"

    order_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    at: Mapped[datetime]
