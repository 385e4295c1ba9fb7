"""Messages of the inventory service: stock events and the commands it accepts."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from events.envelope import Command, Event
from events.types import Allocation, CountryCode, LineItem, Sku


class ReserveStock(Command):
    """Reserve every line at the nearest warehouse that can serve it; all or nothing."""

    routing_key = "inventory.reserve_stock"
    order_id: str
    items: Annotated[list[LineItem], Field(min_length=1)]
    country: CountryCode
    latitude: float | None = None
    longitude: float | None = None
    parcel: str | None = None
    """Reserve again for this parcel of the order (it replaces one the carrier lost): once per
    order and parcel, all or nothing, answered with the same ``parcel``. None: the order itself."""


class ReleaseStock(Command):
    """Give back whatever the order still holds reserved (a no-op if it holds nothing)."""

    routing_key = "inventory.release_stock"
    order_id: str
    reason: str
    warehouses: list[str] | None = None
    """Only what these warehouses hold (their parcels did not leave); None: everything. A parcel
    that left is committed by its own ``CommitStock``, which may arrive after this release."""
    parcel: str | None = None
    """The parcel sent again whose booking failed, when this gives back its units: echoed in
    ``stock.released`` so the saga knows which release was answered."""


class CommitStock(Command):
    """The parcel left the warehouse: the reserved units leave the shelf for good."""

    routing_key = "inventory.commit_stock"
    order_id: str
    warehouse: str | None = None
    """Only this warehouse's parcel left (the order ships one parcel per warehouse); None: all."""
    parcel: str | None = None
    """A parcel sent again instead of a lost one left: only the units reserved for it (in
    ``warehouse``); None: the order's own units."""


class RestockItems(Command):
    """A returned parcel was received back: put its units on the shelf again."""

    routing_key = "inventory.restock"
    order_id: str
    items: Annotated[list[LineItem], Field(min_length=1)]


class StockReserved(Event):
    routing_key = "stock.reserved"
    order_id: str
    allocations: list[Allocation]
    parcel: str | None = None
    """The replacement parcel this reservation is for (``ReserveStock.parcel``); None: the order."""


class Shortage(LineItem):
    available: int


class StockReservationFailed(Event):
    routing_key = "stock.reservation_failed"
    order_id: str
    reason: str = "out_of_stock"
    shortages: list[Shortage] = []
    parcel: str | None = None
    """The replacement parcel that could not be reserved (``ReserveStock.parcel``); None: the order."""


class StockReleased(Event):
    routing_key = "stock.released"
    order_id: str
    allocations: list[Allocation]
    parcel: str | None = None  # the release's ``parcel``, when it named one


class StockCommitted(Event):
    routing_key = "stock.committed"
    order_id: str
    allocations: list[Allocation]


class StockRestocked(Event):
    """Units came onto the shelf: a receipt (``order_id`` None) or a return."""

    routing_key = "stock.restocked"
    order_id: str | None = None
    warehouse: str
    sku: Sku
    quantity: int


class StockLow(Event):
    routing_key = "stock.low"
    warehouse: str
    sku: Sku
    available: int
    threshold: int
    reorder_quantity: int
