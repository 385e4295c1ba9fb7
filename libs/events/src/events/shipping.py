"""Messages of the shipping service."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from pydantic import Field

from events.envelope import Command, Event
from events.orders import Address
from events.types import LineItem, ShipmentStatus


class CreateShipment(Command):
    """Book a carrier for the order's parcel from ``warehouse``. Carries the address (point-to-point)."""

    routing_key = "shipping.create_shipment"
    order_id: str
    warehouse: str
    warehouse_country: str | None = None
    address: Address
    items: Annotated[list[LineItem], Field(min_length=1)]
    parcel: str | None = None
    """The order's name for this parcel (one per warehouse, another for one sent again); the
    warehouse when not given. The same name again books no second parcel."""
    replaces: str | None = None
    """The order's name for the lost parcel this one is sent instead of."""


class ChangeShipmentAddress(Command):
    routing_key = "shipping.change_address"
    order_id: str
    address: Address


class CancelShipment(Command):
    routing_key = "shipping.cancel_shipment"
    order_id: str
    reason: str


class ExpectReturn(Command):
    """The customer asked to return these items: expect the parcel back."""

    routing_key = "shipping.expect_return"
    order_id: str
    items: Annotated[list[LineItem], Field(min_length=1)]
    shipment_id: str | None = None
    """The parcel the items came in; when not given, the order's delivered parcels that hold them."""


class ShipmentCreated(Event):
    routing_key = "shipment.created"
    order_id: str
    shipment_id: str
    carrier: str
    tracking_number: str
    warehouse: str
    estimated_delivery: date
    parcel: str | None = None
    """The order's name for the parcel, as ``shipping.create_shipment`` gave it."""
    items: list[LineItem] = []
    """What the parcel holds (one parcel per warehouse the order's stock came from)."""
    tracking_url: str | None = None
    """The carrier's public tracking page for this parcel."""
    replaces: str | None = None
    """The tracking number of the lost parcel this one is sent instead of."""


class ShipmentUpdated(Event):
    routing_key = "shipment.updated"
    order_id: str
    shipment_id: str
    carrier: str
    tracking_number: str
    status: ShipmentStatus
    at: datetime
    location: str | None = None
    parcel: str | None = None
    estimated_delivery: date | None = None
    """The delivery estimate after this scan."""
    tracking_url: str | None = None
    """The carrier's public tracking page for this parcel."""
    undelivered: bool = False
    """The scan ends the parcel's delivery without it arriving (``lost``, or ``returned`` before
    delivery, unlike a return the customer sent back)."""
    replaces: str | None = None
    """The tracking number of the lost parcel this one is sent instead of."""


class ShipmentFailed(Event):
    routing_key = "shipment.failed"
    order_id: str
    reason: str
    parcel: str | None = None


class ShipmentCancelled(Event):
    """The answer to ``shipping.cancel_shipment`` when no parcel will leave: the shipment was
    cancelled before the carrier took it, or none was created (and none will be). When the carrier
    had the parcel already, there is no such answer: its ``shipment.updated`` is the answer."""

    routing_key = "shipment.cancelled"
    order_id: str
    shipment_id: str | None = None
    shipment_ids: list[str] = []
    """Every parcel of the order that was cancelled (an order may have one per warehouse)."""
    parcels: list[str] = []
    """The same parcels by the order's names for them."""


class ShipmentReturned(Event):
    """A return the customer asked for is back at the warehouse. (A parcel sent back undelivered
    is a ``shipment.updated`` with status ``returned``.)"""

    routing_key = "shipment.returned"
    order_id: str
    shipment_id: str
    tracking_number: str
    items: list[LineItem]
    at: datetime
