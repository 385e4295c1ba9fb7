"""Carriers, tracking numbers, delivery estimates and the parcel's progress: pure, no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta

from events.types import ShipmentStatus as St


@dataclass(frozen=True)
class Carrier:
    code: str
    prefix: str
    serves: frozenset[str]  # destination countries; "*" = most of the world
    domestic_only: str | None = None  # serves only parcels inside this country
    transit_days: int = 5


CARRIERS = (
    Carrier("sf-express", "SF", frozenset({"CN"}), domestic_only="CN", transit_days=2),
    Carrier("ups", "1Z", frozenset({"US", "CA", "DE", "GB", "FR"}), transit_days=4),
    Carrier("dhl", "JD", frozenset({"*"}), transit_days=5),
    Carrier("ems", "EE", frozenset({"*"}), transit_days=7),
)
UNSERVED = frozenset({"AQ"})  # no carrier goes there
WAREHOUSE_COUNTRY = {"SH": "CN", "BJ": "CN", "FRA": "DE", "NYC": "US"}


class NoCarrier(Exception):
    pass


def choose_carrier(from_country: str, to_country: str) -> Carrier:
    if to_country in UNSERVED:
        raise NoCarrier(f"no carrier delivers to {to_country}")
    for carrier in CARRIERS:
        if carrier.domestic_only:
            if from_country == to_country == carrier.domestic_only:
                return carrier
            continue
        if to_country in carrier.serves or "*" in carrier.serves:
            return carrier
    raise NoCarrier(f"no carrier delivers from {from_country} to {to_country}")


def tracking_number(carrier: Carrier) -> str:
    return f"{carrier.prefix}{uuid.uuid4().int % 10**12:012d}"


def estimated_delivery(carrier: Carrier, today: date) -> date:
    return today + timedelta(days=carrier.transit_days)


PROGRESS = (St.CREATED, St.PICKED_UP, St.IN_TRANSIT, St.OUT_FOR_DELIVERY, St.DELIVERED)


def accepts(current: St, reported: St, *, return_expected: bool) -> bool:
    """Whether a carrier's report moves the parcel. Carriers resend and reorder: never backwards."""
    if current in (St.RETURNED, St.FAILED):
        return False
    if reported == St.RETURNED:
        return return_expected and current == St.DELIVERED
    if reported == St.EXCEPTION:
        return current != St.DELIVERED
    if reported not in PROGRESS:
        return False
    if current == St.EXCEPTION:
        return True
    return PROGRESS.index(reported) > PROGRESS.index(current)


def next_step(current: St) -> St | None:
    """Where the simulated carrier takes the parcel next."""
    if current not in PROGRESS or current == St.DELIVERED:
        return None
    return PROGRESS[PROGRESS.index(current) + 1]
