"""Carrier adapters: what shipping asks of a carrier (book a parcel, cancel it, fetch its trail)
and how it reads and trusts the carrier's callbacks.

Every carrier posts its scans to ``POST /v1/carriers/{carrier}/events`` signed as in CONTRACT §7:
``X-OMS-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`` with that carrier's
secret. A callback is verified on its raw bytes before anything in it is believed; a missing or
wrong signature, or a ``t`` more than ``window`` seconds from now, is :class:`BadSignature` (401,
nothing recorded). The same scan sent twice is recorded once (``service.report``).

The simulated carrier of local runs is one adapter: it books locally (a tracking number of the
carrier's form), its scans come from ``shipping.service.simulation`` through the same ``service.report``,
and its trail is what it reported.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from events.types import ShipmentStatus as St
from shipping import domain
from shipping.db import Shipment, ShipmentEvent

SIGNATURE_HEADER = "X-OMS-Signature"
DEV_CARRIER_SECRET = "dev-carrier-secret"


class BadSignature(Exception):
    """A callback that cannot be trusted: answered 401, nothing recorded."""


class CarrierEvent(BaseModel):
    """A carrier's scan, as it posts it (CONTRACT §7). ``estimated_delivery``: the carrier's own new
    estimate, when it gives one."""

    model_config = ConfigDict(extra="forbid")
    tracking_number: Annotated[str, Field(min_length=1, max_length=40)]
    status: Literal[
        "picked_up", "in_transit", "out_for_delivery", "delivered", "exception", "returned", "lost"
    ]
    at: AwareDatetime
    location: Annotated[str, Field(max_length=200)] | None = None
    estimated_delivery: date | None = None


@dataclass(frozen=True)
class Scan:
    tracking_number: str
    status: St
    at: datetime
    location: str | None = None
    estimated_delivery: date | None = None


@dataclass(frozen=True)
class Booking:
    tracking_number: str
    estimated_delivery: date
    tracking_url: str


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The ``X-OMS-Signature`` value a carrier sends with ``body``."""
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str | None, body: bytes, *, now: float, window: float) -> None:
    """Raise :class:`BadSignature` unless ``header`` signs ``body`` with ``secret`` within ``window``."""
    if not header:
        raise BadSignature(f"no {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError) as exc:
        raise BadSignature("the signature has no valid t") from exc
    if abs(now - t) > window:
        raise BadSignature("the signature is too old or from the future")
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, v1) for v1 in parts.get("v1", [])):
        raise BadSignature("the signature does not match")


class CarrierAdapter(Protocol):
    """What shipping needs of a carrier. A real carrier's adapter speaks its HTTP API."""

    code: str
    carrier: domain.Carrier

    async def book(
        self, *, reference: str, order_id: str, from_country: str, address: dict[str, Any], today: date
    ) -> Booking:
        """Book a parcel. ``reference`` is the carrier's customer reference (``domain.booking_reference``):
        a carrier that is asked again with it books nothing new and answers with the first booking."""
        ...

    async def cancel(self, tracking_number: str) -> bool:
        """Ask the carrier not to collect the parcel; False when it has it already."""
        ...

    async def trail(self, tracking_number: str) -> list[Scan]: ...

    def callback(self, headers: dict[str, str], body: bytes) -> Scan:
        """Verify a callback's signature and read its scan: :class:`BadSignature`, or a pydantic
        ``ValidationError`` for a signed body that is not a scan."""
        ...


class SimulatedCarrier:
    """The carrier of local runs and tests, under the code and tracking-number form of a real one."""

    def __init__(self, carrier: domain.Carrier, *, secret: str, window: float):
        self.code, self.carrier = carrier.code, carrier
        self._secret, self._window = secret, window
        self._sessions: async_sessionmaker | None = None

    def attach(self, sessions: async_sessionmaker) -> None:
        """Its trail is what it reported: shipping's record of the parcel (once the database is up)."""
        self._sessions = sessions

    async def book(
        self, *, reference: str, order_id: str, from_country: str, address: dict[str, Any], today: date
    ) -> Booking:
        number = domain.tracking_number(self.carrier, reference)
        return Booking(
            number, domain.estimated_delivery(self.carrier, today), self.carrier.track_url.format(number)
        )

    async def cancel(self, tracking_number: str) -> bool:
        return True  # it collects only what shipping's schedule tells it to: a cancelled parcel never moves

    async def trail(self, tracking_number: str) -> list[Scan]:
        if self._sessions is None:
            return []
        async with self._sessions() as session:
            rows = await session.execute(
                select(ShipmentEvent.status, ShipmentEvent.at, ShipmentEvent.location)
                .join(Shipment, Shipment.shipment_id == ShipmentEvent.shipment_id)
                .where(Shipment.tracking_number == tracking_number)
                .order_by(ShipmentEvent.at, ShipmentEvent.id)
            )
            return [Scan(tracking_number, St(r.status), r.at, r.location) for r in rows]

    def callback(self, headers: dict[str, str], body: bytes) -> Scan:
        verify(
            self._secret,
            headers.get(SIGNATURE_HEADER.lower()) or headers.get(SIGNATURE_HEADER),
            body,
            now=time.time(),
            window=self._window,
        )
        event = CarrierEvent.model_validate_json(body)
        return Scan(
            event.tracking_number, St(event.status), event.at, event.location, event.estimated_delivery
        )


def adapters(secrets: dict[str, str], *, default_secret: str, window: float) -> dict[str, SimulatedCarrier]:
    """One adapter per carrier the project books, each with its own secret."""
    return {
        c.code: SimulatedCarrier(c, secret=secrets.get(c.code, default_secret), window=window)
        for c in domain.CARRIERS
    }
