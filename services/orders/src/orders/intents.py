"""What the saga is told besides the broker's replies (requests of people, its own deadline), and
what it asks for (intents: the orders service turns each into a command with the order's data).
Plain values, no behaviour: the flow is in ``orders.saga``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from events.types import CancelReason, LineItem

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
