"""Where to take stock from, and when it runs low: pure, no I/O.

Reserving picks, among the warehouses that can serve the whole order, the one nearest the
shipping address (great-circle distance when the address has coordinates; else one in the same
country first). When none can serve it whole, the order is split across warehouses, nearest
first, if together they hold enough; otherwise it fails with the shortages. Never more than is
available is reserved.
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
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def nearest_first(warehouses: Sequence[Warehouse], to: Destination) -> list[Warehouse]:
    """Nearest first: by distance when both ends have coordinates, same country before others,
    then by code so the choice is stable."""

    def key(w: Warehouse) -> tuple[int, float, str]:
        if None not in (to.latitude, to.longitude, w.latitude, w.longitude):
            return (0, distance_km(to.latitude, to.longitude, w.latitude, w.longitude), w.code)
        return (1 if w.country == to.country else 2, 0.0, w.code)

    return sorted(warehouses, key=key)


class OutOfStock(Exception):
    def __init__(self, shortages: list[Shortage]) -> None:
        super().__init__(", ".join(f"{s.sku}: {s.available} of {s.quantity}" for s in shortages))
        self.shortages = shortages


def allocate(
    items: Sequence[LineItem],
    warehouses: Sequence[Warehouse],
    available: Mapping[tuple[str, str], int],
    to: Destination,
) -> list[Allocation]:
    """Where each line comes from. ``available`` maps (warehouse, sku) to units free now."""
    ordered = nearest_first(warehouses, to)
    for w in ordered:
        if all(available.get((w.code, i.sku), 0) >= i.quantity for i in items):
            return [Allocation(warehouse=w.code, sku=i.sku, quantity=i.quantity) for i in items]
    shortages = []
    for i in items:
        total = sum(available.get((w.code, i.sku), 0) for w in ordered)
        if total < i.quantity:
            shortages.append(Shortage(sku=i.sku, quantity=i.quantity, available=total))
    if shortages:
        raise OutOfStock(shortages)
    allocations: list[Allocation] = []
    for i in items:  # split, nearest first
        needed = i.quantity
        for w in ordered:
            take = min(needed, available.get((w.code, i.sku), 0))
            if take > 0:
                allocations.append(Allocation(warehouse=w.code, sku=i.sku, quantity=take))
                needed -= take
            if needed == 0:
                break
    return allocations


def is_low(available: int, threshold: int) -> bool:
    return available <= threshold


def reorder_suggestion(available: int, threshold: int, reorder_quantity: int) -> int:
    """Order at least ``reorder_quantity``, and enough to be back above twice the threshold."""
    return max(reorder_quantity, 2 * threshold - available)
