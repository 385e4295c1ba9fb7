"""Where to take stock from, where returns go back, and when stock runs low: pure, no I/O.

Reserving picks, among the warehouses that can serve the whole order, the one nearest the
shipping address (great-circle distance when the address has coordinates; else one in the same
country first; ties by warehouse code). When none can serve it whole, the order is split across
warehouses, nearest first, if together they hold enough; otherwise it fails with the shortages.
Never more than is available is reserved.

Low stock: a row is low when what is available (on hand − reserved) is at or below its threshold.
The reorder suggestion is the row's ``reorder_quantity``, or more when that would not bring what
is available up to twice the threshold (see :func:`reorder_suggestion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from events.inventory import Shortage
from events.types import Allocation, LineItem


@dataclass(frozen=True)
class Warehouse:
    code: str
    country: str
    latitude: float | None
    longitude: float | None


@dataclass(frozen=True)
class Destination:
    country: str
    latitude: float | None = None
    longitude: float | None = None


EARTH_RADIUS_KM = 6371.0


def distance_km(a_lat: float, a_lon: float, b_lat: float, b_lon: float) -> float:
    """Great-circle (haversine) distance."""
    p1, p2 = math.radians(a_lat), math.radians(b_lat)
    dp, dl = p2 - p1, math.radians(b_lon - a_lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, h)))


def nearest_first(warehouses: Sequence[Warehouse], to: Destination) -> list[Warehouse]:
    """Nearest first: by distance when both ends have coordinates; a warehouse without
    coordinates comes after those, same country before others; then by code, so the choice is
    stable."""

    def key(w: Warehouse) -> tuple[int, float, str]:
        if (
            to.latitude is not None
            and to.longitude is not None
            and w.latitude is not None
            and w.longitude is not None
        ):
            return (0, distance_km(to.latitude, to.longitude, w.latitude, w.longitude), w.code)
        return (1 if w.country == to.country else 2, 0.0, w.code)

    return sorted(warehouses, key=key)


class OutOfStock(Exception):
    def __init__(self, shortages: list[Shortage]) -> None:
        super().__init__(", ".join(f"{s.sku}: {s.available} of {s.quantity}" for s in shortages))
        self.shortages = shortages


def merge_lines(items: Sequence[LineItem]) -> list[LineItem]:
    """One line per SKU (quantities added up), in the order the SKUs first appear."""
    totals: dict[str, int] = {}
    for i in items:
        totals[i.sku] = totals.get(i.sku, 0) + i.quantity
    return [LineItem(sku=sku, quantity=q) for sku, q in totals.items()]


def allocate(
    items: Sequence[LineItem],
    warehouses: Sequence[Warehouse],
    available: Mapping[tuple[str, str], int],
    to: Destination,
) -> list[Allocation]:
    """Where each line comes from. ``available`` maps (warehouse, sku) to units free now.

    Raises :class:`OutOfStock` naming every SKU the warehouses together cannot cover.
    """
    lines = merge_lines(items)
    ordered = nearest_first(warehouses, to)

    def free(w: Warehouse, sku: str) -> int:
        return max(0, available.get((w.code, sku), 0))

    for w in ordered:
        if all(free(w, i.sku) >= i.quantity for i in lines):
            return [Allocation(warehouse=w.code, sku=i.sku, quantity=i.quantity) for i in lines]
    shortages = [
        Shortage(sku=i.sku, quantity=i.quantity, available=total)
        for i in lines
        if (total := sum(free(w, i.sku) for w in ordered)) < i.quantity
    ]
    if shortages:
        raise OutOfStock(shortages)
    allocations: list[Allocation] = []
    for i in lines:  # split, nearest first
        needed = i.quantity
        for w in ordered:
            take = min(needed, free(w, i.sku))
            if take > 0:
                allocations.append(Allocation(warehouse=w.code, sku=i.sku, quantity=take))
                needed -= take
            if needed == 0:
                break
    return allocations


class ReturnRefused(Exception):
    """A return of units the order never shipped (or already gave back)."""


@dataclass(frozen=True)
class Shipped:
    """Units of one SKU an order took from one warehouse, and how many of them came back."""

    warehouse: str
    sku: str
    quantity: int
    returned: int = 0


def place_returns(items: Sequence[LineItem], shipped: Sequence[Shipped]) -> list[Allocation]:
    """Where returned units go back on the shelf: to the warehouses they left from, in the order
    given, never more per warehouse than it shipped and has not had back already."""
    allocations: list[Allocation] = []
    for i in merge_lines(items):
        needed = i.quantity
        for s in shipped:
            if s.sku != i.sku:
                continue
            take = min(needed, s.quantity - s.returned)
            if take > 0:
                allocations.append(Allocation(warehouse=s.warehouse, sku=s.sku, quantity=take))
                needed -= take
        if needed:
            open_ = sum(s.quantity - s.returned for s in shipped if s.sku == i.sku)
            raise ReturnRefused(
                f"{i.quantity} of {i.sku} returned, but only {open_} shipped and not yet returned"
            )
    return allocations


def is_low(available: int, threshold: int) -> bool:
    return available <= threshold


def reorder_suggestion(available: int, threshold: int, reorder_quantity: int) -> int:
    """Order at least ``reorder_quantity``, and enough to reach twice the threshold again."""
    return max(reorder_quantity, 2 * threshold - available)


@dataclass(frozen=True)
class Turnover:
    """One SKU over a period: how fast its stock went out, and how long what is left will last."""

    opening: int  # units on hand when the period began
    closing: int  # when it ended
    shipped: int  # units that left in parcels
    turnover: float | None  # shipped ÷ the average of opening and closing; None with nothing on hand
    days_of_cover: float | None  # units available now ÷ units shipped a day; None when none shipped


def turnover(*, closing: int, net_change: int, shipped: int, available: int, days: float) -> Turnover:
    """``net_change``: what every movement of on-hand units in the period added up to (receipts,
    returns and counts in, parcels out), so the period opened at ``closing - net_change``."""
    opening = closing - net_change
    average = (opening + closing) / 2
    per_day = shipped / days if days > 0 else 0
    return Turnover(
        opening=opening,
        closing=closing,
        shipped=shipped,
        turnover=round(shipped / average, 3) if average > 0 else None,
        days_of_cover=round(available / per_day, 1) if per_day > 0 else None,
    )
