"""Carriers, tracking numbers, delivery estimates and the parcel's progress: pure, no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from events.types import ShipmentStatus as St


@dataclass(frozen=True)
class Carrier:
    code: str
    prefix: str
    serves: frozenset[str]  # destination countries; "*" = most of the world
    domestic_only: str | None = None  # serves only parcels inside this country
    transit_days: int = 5
    track_url: str = ""  # the carrier's public tracking page, ``{}`` = the tracking number


CARRIERS = (
    Carrier(
        "sf-express",
        "SF",
        frozenset({"CN"}),
        domestic_only="CN",
        transit_days=2,
        track_url="https://www.sf-express.com/chn/en/waybill/waybill-detail/{}",
    ),
    Carrier(
        "ups",
        "1Z",
        frozenset({"US", "CA", "DE", "GB", "FR"}),
        transit_days=4,
        track_url="https://www.ups.com/track?tracknum={}",
    ),
    Carrier(
        "dhl",
        "JD",
        frozenset({"*"}),
        transit_days=5,
        track_url="https://www.dhl.com/global-en/home/tracking.html?tracking-id={}",
    ),
    Carrier(
        "ems",
        "EE",
        frozenset({"*"}),
        transit_days=7,
        track_url="https://www.ems.com.cn/english/track?mailNo={}",
    ),
)
BY_CODE = {c.code: c for c in CARRIERS}
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


_BOOKINGS = uuid.UUID("6f6d732d-7368-6970-7069-6e672d626b67")


def tracking_number(carrier: Carrier, reference: str) -> str:
    """The simulated carrier's number for a booking: the same reference, the same parcel."""
    return f"{carrier.prefix}{uuid.uuid5(_BOOKINGS, f'{carrier.code}:{reference}').int % 10**12:012d}"


def booking_reference(order_id: str, parcel: str) -> str:
    """The key a carrier de-duplicates bookings on: asked again for a parcel (a redelivered command
    whose first commit failed after the booking), it answers with the parcel it booked."""
    return f"{order_id}:{parcel}"


def estimated_delivery(carrier: Carrier, today: date) -> date:
    return today + timedelta(days=carrier.transit_days)


PROGRESS = (St.CREATED, St.PICKED_UP, St.IN_TRANSIT, St.OUT_FOR_DELIVERY, St.DELIVERED)
ENDED = frozenset({St.RETURNED, St.LOST, St.FAILED})  # no scan moves such a parcel again


def accepts(current: St, reported: St, *, return_expected: bool) -> bool:
    """Whether a carrier's report moves the parcel. Carriers resend and reorder: never backwards.

    ``returned`` is the customer's return coming back (after delivery, once expected) or the parcel
    sent back to the warehouse undelivered (from the carrier's hands); ``lost`` ends a parcel the
    carrier had and did not deliver."""
    if current in ENDED:
        return False
    if reported == St.RETURNED:
        if current == St.DELIVERED:
            return return_expected
        return current != St.CREATED
    if reported == St.LOST:
        return current not in (St.CREATED, St.DELIVERED)
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


def eta(current: date, carrier: Carrier | None, status: St, at: datetime, given: date | None = None) -> date:
    """The delivery estimate after a scan: the carrier's own when it gives one, else from where the
    parcel is now (a failed attempt puts it off by a day; an overdue parcel is due tomorrow)."""
    if given is not None:
        return given
    day = at.date()
    match status:
        case St.DELIVERED | St.OUT_FOR_DELIVERY:
            return day
        case St.PICKED_UP if carrier is not None:  # the carrier's transit time runs from here
            return day + timedelta(days=carrier.transit_days)
        case St.IN_TRANSIT | St.PICKED_UP:
            return current if current > day else day + timedelta(days=1)
        case St.EXCEPTION:
            return max(current, day) + timedelta(days=1)
    return current
