"""What the saga holds and speaks. Its state: where each participant stands, what it waits for,
its JSON form (stored in the order's row), and the order's columns it projects to. What it is told
besides the broker's replies (requests of people, its own deadline), and what it asks for
(intents: the orders service turns each into a command with the order's data). Plain values, no
behaviour: the flow is in ``orders.saga``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from events.types import CancelReason, LineItem, OrderStatus
from orders.domain import payment_status

S = OrderStatus
FINAL = frozenset({S.DELIVERED, S.CANCELLED, S.RETURNED})


class Stock(StrEnum):
    NONE = "none"
    RESERVING = "reserving"
    RESERVED = "reserved"
    RELEASING = "releasing"
    RELEASED = "released"
    COMMITTED = "committed"


class Pay(StrEnum):
    NONE = "none"
    CAPTURING = "capturing"
    CAPTURED = "captured"
    FAILED = "failed"


class Parcel(StrEnum):
    NONE = "none"
    CREATING = "creating"
    CREATED = "created"
    CANCELLING = "cancelling"  # asked to cancel, no answer yet
    CANCELLED = "cancelled"  # no parcel will leave
    LEFT = "left"  # the carrier took it before the cancel reached shipping
    FAILED = "failed"


class Leg(StrEnum):
    """Where one parcel of the order stands (an order ships one parcel per warehouse)."""

    RESERVING = "reserving"  # sent again for a lost one: its stock is being reserved again
    PLANNED = "planned"  # its stock is reserved at the warehouse; booking asked or to be asked
    BOOKED = "booked"  # booked with a carrier, waiting at the warehouse
    LEFT = "left"  # the carrier has it
    DELIVERED = "delivered"
    RETURNED = "returned"  # came back to the warehouse undelivered
    LOST = "lost"
    CANCELLED = "cancelled"


ENDED = frozenset({Leg.DELIVERED, Leg.RETURNED, Leg.LOST, Leg.CANCELLED})


@dataclass(frozen=True)
class ParcelLeg:
    name: str  # the order's name for the parcel: its warehouse
    warehouse: str
    items: tuple[LineItem, ...]
    leg: Leg = Leg.PLANNED
    shipment_id: str | None = None
    carrier_status: str | None = None  # the carrier's last word on it (created, in_transit, exception, ...)
    replaces: str | None = None  # the lost parcel it is sent instead of
    releasing: bool = False  # sent again, no carrier took it: its units' release not answered yet
    reserved_as: str | None = None  # sent again: the name its units are reserved under (a split
    # replacement's legs share the first one's)

    @property
    def stock_name(self) -> str:
        """The name inventory knows the parcel's units by (a parcel sent again)."""
        return self.reserved_as or self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "warehouse": self.warehouse,
            "items": [i.model_dump(mode="json") for i in self.items],
            "leg": self.leg,
            "shipment_id": self.shipment_id,
            "carrier_status": self.carrier_status,
            "replaces": self.replaces,
            "releasing": self.releasing,
            "reserved_as": self.reserved_as,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParcelLeg:
        return cls(
            name=d["name"],
            warehouse=d["warehouse"],
            items=tuple(LineItem.model_validate(i) for i in d["items"]),
            leg=Leg(d["leg"]),
            shipment_id=d.get("shipment_id"),
            carrier_status=d.get("carrier_status"),
            replaces=d.get("replaces"),
            releasing=d.get("releasing", False),
            reserved_as=d.get("reserved_as"),
        )


class Wait(StrEnum):
    """What the saga's deadline is for."""

    RESERVE = "reserve"
    CAPTURE = "capture"
    SHIP = "ship"
    CUSTOMER = "customer"  # the customer is to pay (a QR code, a redirect) before the action expires
    RESEND = "resend"  # a lost parcel's stock reserved again and its replacement booked
    COMPENSATE = "compensate"


def _one_parcel(d: dict[str, Any]) -> tuple[ParcelLeg, ...]:
    """A saga saved before orders had parcels: its one parcel, where its order says it is."""
    if "parcels" in d or not d.get("warehouse") or d["parcel"] in (Parcel.NONE, Parcel.FAILED):
        return ()
    leg = {
        S.SHIPPED: Leg.LEFT,
        S.IN_TRANSIT: Leg.LEFT,
        S.DELIVERED: Leg.DELIVERED,
        S.RETURN_REQUESTED: Leg.DELIVERED,
        S.RETURNED: Leg.DELIVERED,
    }.get(d["status"], Leg.PLANNED if d["parcel"] is Parcel.CREATING else Leg.BOOKED)
    status = {
        Leg.LEFT: "in_transit" if d["status"] is S.IN_TRANSIT else "picked_up",
        Leg.DELIVERED: "delivered",
    }.get(leg)
    return (
        ParcelLeg(name=d["warehouse"], warehouse=d["warehouse"], items=(), leg=leg, carrier_status=status),
    )


@dataclass(frozen=True)
class Saga:
    order_id: str
    total: Decimal
    currency: str
    status: OrderStatus = S.SUBMITTED
    reason: str | None = None
    stock: Stock = Stock.NONE
    payment: Pay = Pay.NONE
    payment_id: str | None = None
    captured: Decimal = Decimal("0")
    refunds: tuple[tuple[str, Decimal], ...] = ()  # (key, amount) of every Refund asked
    refunds_done: tuple[str, ...] = ()  # keys payments confirmed
    refund_ids: tuple[str, ...] = ()  # refunds seen, so a repeated one is counted once
    refunded: Decimal = Decimal("0")  # what payments confirmed, manual refunds included
    parcel: Parcel = Parcel.NONE  # the booking of the order's parcels, as one step
    warehouse: str | None = None
    parcels: tuple[ParcelLeg, ...] = ()  # one per warehouse the stock was reserved at
    prices: tuple[
        tuple[str, Decimal], ...
    ] = ()  # unit price per SKU: what a parcel that did not arrive is worth
    return_items: tuple[LineItem, ...] = ()
    return_amount: Decimal = Decimal("0")
    waiting_for: Wait | None = None
    waiting_since: datetime | None = None
    deadline_at: datetime | None = None  # the next time the saga looks again: resend, warn or give up
    resends: int = 0
    warned: bool = False
    attention: str | None = None
    action: dict[str, str] | None = None  # what the customer is to do to pay: type, url, expires_at
    ignored: int = field(default=0, compare=False)  # replies that did not fit, for the record

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("total", "captured", "refunded", "return_amount"):
            d[k] = format(d[k], "f")
        d["deadline_at"] = self.deadline_at.isoformat() if self.deadline_at else None
        d["waiting_since"] = self.waiting_since.isoformat() if self.waiting_since else None
        d["return_items"] = [i.model_dump(mode="json") for i in self.return_items]
        d["refunds"] = [[key, format(amount, "f")] for key, amount in self.refunds]
        d["refunds_done"], d["refund_ids"] = list(self.refunds_done), list(self.refund_ids)
        d["parcels"] = [p.to_dict() for p in self.parcels]
        d["prices"] = [[sku, format(price, "f")] for sku, price in self.prices]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Saga:
        d = dict(d)
        for k in ("total", "captured", "refunded", "return_amount"):
            d[k] = Decimal(d[k])
        d["status"] = OrderStatus(d["status"])
        d["stock"], d["payment"], d["parcel"] = Stock(d["stock"]), Pay(d["payment"]), Parcel(d["parcel"])
        d["waiting_for"] = Wait(d["waiting_for"]) if d.get("waiting_for") else None
        d["deadline_at"] = datetime.fromisoformat(d["deadline_at"]) if d.get("deadline_at") else None
        # sagas saved before the wait was timed from its start: time it from now on
        since = d.get("waiting_since") or (d["deadline_at"].isoformat() if d["deadline_at"] else None)
        d["waiting_since"] = datetime.fromisoformat(since) if since else None
        d["return_items"] = tuple(LineItem.model_validate(i) for i in d.get("return_items", ()))
        d["refunds"] = tuple((key, Decimal(amount)) for key, amount in d.get("refunds", ()))
        d["refunds_done"], d["refund_ids"] = tuple(d.get("refunds_done", ())), tuple(d.get("refund_ids", ()))
        d["parcels"] = tuple(ParcelLeg.from_dict(p) for p in d.get("parcels", ())) or _one_parcel(d)
        d["prices"] = tuple((sku, Decimal(price)) for sku, price in d.get("prices", ()))
        return cls(**d)

    # -- derived --------------------------------------------------------------------------------

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def refund_asked(self) -> Decimal:
        return sum((amount for _, amount in self.refunds), Decimal("0"))

    def worth(self, items: tuple[LineItem, ...]) -> Decimal:
        """What ``items`` of this order cost the customer."""
        price = dict(self.prices)
        return sum((price.get(i.sku, Decimal("0")) * i.quantity for i in items), Decimal("0"))

    @property
    def unrefunded(self) -> Decimal:
        """Captured money the saga has not yet asked back (for a cancelled order: must reach 0)."""
        return self.captured - self.refund_asked


def projection(saga: Saga) -> dict[str, Any]:
    """The order's columns that the API, the console and the reports read, as the saga has them.

    The saga is the one truth about where an order stands; these columns are a copy for queries
    (by status, by deadline, sums of money), written from this alone, in the saga's transaction.
    The shipment column is not here: it records the carriers' tracking as shipping reports it."""
    return {
        "status": saga.status,
        "status_reason": saga.reason,
        "attention": saga.attention,
        "deadline_at": saga.deadline_at,
        "waiting_since": saga.waiting_since,
        "payment_amount": saga.captured,
        "refunded_amount": saga.refunded,
        "payment_failed": saga.payment is Pay.FAILED,
        "payment_status": payment_status(
            captured=saga.captured, refunded=saga.refunded, failed=saga.payment is Pay.FAILED
        ),
        "saga": saga.to_dict(),
    }


# --- told ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelRequested:
    reason: str = CancelReason.CUSTOMER_REQUEST


@dataclass(frozen=True)
class AddressChangeRequested:
    pass


@dataclass(frozen=True)
class AttentionResolved:
    """Ops handled by hand what the saga could not (a refund or a parcel recovered outside it)."""


@dataclass(frozen=True)
class ReturnRequested:
    items: list[LineItem]
    amount: Decimal


@dataclass(frozen=True)
class DeadlineReached:
    pass


# --- asked for ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reserve:
    parcel: str | None = None  # once more, for this parcel sent instead of a lost one
    items: tuple[LineItem, ...] = ()  # ... holding these; empty: every line of the order


@dataclass(frozen=True)
class Release:
    warehouses: tuple[str, ...] | None = None  # only these (their parcels did not leave); None: all
    parcel: str | None = None  # a parcel sent again that no carrier took: its answer names it


@dataclass(frozen=True)
class Commit:
    warehouse: str | None = None  # the parcel from this warehouse left; None: every one
    parcel: str | None = None  # ... the parcel sent again of that name (its own units, not the order's)


@dataclass(frozen=True)
class Capture:
    pass


@dataclass(frozen=True)
class CancelPayment:
    """The customer was still paying (a QR code, a redirect): close that payment at its provider."""


@dataclass(frozen=True)
class Refund:
    amount: Decimal
    key: str


@dataclass(frozen=True)
class CreateShipment:
    warehouse: str
    parcel: str | None = None
    items: tuple[LineItem, ...] = ()  # empty: every line of the order
    replaces: str | None = None  # the lost parcel it is sent instead of


@dataclass(frozen=True)
class CancelShipment:
    pass


@dataclass(frozen=True)
class ChangeShipmentAddress:
    pass


@dataclass(frozen=True)
class ExpectReturn:
    items: list[LineItem]


@dataclass(frozen=True)
class Restock:
    items: list[LineItem]


@dataclass(frozen=True)
class RaiseAttention:
    step: str
    detail: str


@dataclass(frozen=True)
class Warn:
    """The step has waited long: ops are told before ``saga_timeout`` fires."""

    step: str
    waiting_since: datetime
    give_up_at: datetime


Intent = (
    Reserve
    | Release
    | Commit
    | Capture
    | CancelPayment
    | Refund
    | CreateShipment
    | CancelShipment
    | ChangeShipmentAddress
    | ExpectReturn
    | Restock
    | RaiseAttention
    | Warn
)
