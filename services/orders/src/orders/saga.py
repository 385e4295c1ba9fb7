"""The order saga: the whole order flow, failures included, as data and one pure function.

Read the STEPS table first: each step sends one command and waits for its replies; when the order
fails later, the steps already done are compensated in reverse.

    step       command                   success reply        failure reply              compensation
    reserve    inventory.reserve_stock   stock.reserved       stock.reservation_failed   inventory.release_stock
    capture    payments.capture_payment  payment.captured     payment.failed / deadline  payments.refund_payment
    ship       shipping.create_shipment  shipment.created     shipment.failed            shipping.cancel_shipment (*)
    follow     (the carrier reports)     shipment.updated     -                          (from shipped on: a return)

(*) A parcel's cancel is answered: ``shipment.cancelled`` when no parcel will leave, or, when the
carrier took it first, the ``shipment.updated`` of that scan. The reserved stock is released only
after the first; after the second its units left the shelf (committed), and ops are asked to get
the parcel back (``RaiseAttention``). The order stays cancelled and refunded, as the customer asked.

Statuses (CONTRACT §5): submitted → confirmed → paid → picking → shipped → in_transit → delivered,
and cancelled (with a reason), return_requested, returned.

``advance(saga, reply, now, timeouts) -> (saga, intents)`` is the only way the saga moves. It does
no I/O: the orders handler loads the saga, calls ``advance``, and saves the new saga together with
the commands the intents become, in one transaction. A reply that does not fit the current state
(late, duplicate, out of order) leaves the saga as it is, or is compensated (a capture that arrives
after the order was cancelled is refunded; a reservation that arrives after it is released).

Every step that waits has a deadline stored with the saga. Silence is not an answer: while a
service is down, restarting or cut off from the broker, the saga sends the step's command again
every ``resend_seconds`` (receivers are idempotent) and keeps waiting. Only an answer (declined,
timed out at the provider, no stock, no carrier) or the customer cancels an order; a step that has
waited ``warn_seconds`` warns ops (``Warn``), and one that has waited ``give_up_seconds`` is
cancelled with ``saga_timeout``. Unfinished compensations are resent the same way and, when the
long deadline passes, the order is marked for attention (``RaiseAttention``) rather than dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from events.inventory import StockCommitted, StockReleased, StockReservationFailed, StockReserved
from events.payments import PaymentCaptured, PaymentFailed, PaymentRefunded
from events.shipping import (
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
    ShipmentReturned,
    ShipmentUpdated,
)
from events.types import CancelReason, LineItem, OrderStatus, ShipmentStatus

S = OrderStatus

STEPS = (
    # (step, command intent, success reply, failure replies, compensation intent)
    ("reserve", "Reserve", StockReserved, (StockReservationFailed,), "Release"),
    ("capture", "Capture", PaymentCaptured, (PaymentFailed, "DeadlineReached"), "Refund"),
    ("ship", "CreateShipment", ShipmentCreated, (ShipmentFailed,), "CancelShipment"),
    ("follow", None, ShipmentUpdated, (), None),
)

FINAL = frozenset({S.DELIVERED, S.CANCELLED, S.RETURNED})
BEFORE_SHIPMENT = frozenset({S.SUBMITTED, S.CONFIRMED, S.PAID, S.PICKING})
CARRIER_HAS_IT = frozenset({S.SHIPPED, S.IN_TRANSIT})

# "expired": sent by payments before it stopped expiring late commands; still understood
PAYMENT_FAILURES = {
    "declined": CancelReason.PAYMENT_DECLINED,
    "provider_timeout": CancelReason.PAYMENT_TIMEOUT,
    "expired": CancelReason.PAYMENT_TIMEOUT,
}


# --- what the saga is told besides the broker's replies ------------------------------------


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


# --- what the saga asks for: the handler turns each into a command with the order's data ------


@dataclass(frozen=True)
class Reserve:
    pass


@dataclass(frozen=True)
class Release:
    pass


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Capture:
    pass


@dataclass(frozen=True)
class Refund:
    amount: Decimal
    key: str


@dataclass(frozen=True)
class CreateShipment:
    warehouse: str


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
    Reserve | Release | Commit | Capture | Refund | CreateShipment | CancelShipment | ChangeShipmentAddress
    | ExpectReturn | Restock | RaiseAttention | Warn
)


class Refused(Exception):
    """A request the order's current state does not allow (answered 409)."""


@dataclass(frozen=True)
class Timeouts:
    resend_seconds: float = 30.0
    """A step with no answer yet sends its command again after this long."""
    warn_seconds: float = 1200.0
    """A step that has waited this long warns ops."""
    give_up_seconds: float = 1800.0
    """A step that has waited this long gives up: ``saga_timeout``, or attention for a compensation."""


# --- the saga's state -----------------------------------------------------------------------


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


class Wait(StrEnum):
    """What the saga's deadline is for."""

    RESERVE = "reserve"
    CAPTURE = "capture"
    SHIP = "ship"
    COMPENSATE = "compensate"


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
    parcel: Parcel = Parcel.NONE
    warehouse: str | None = None
    return_items: tuple[LineItem, ...] = ()
    return_amount: Decimal = Decimal("0")
    waiting_for: Wait | None = None
    waiting_since: datetime | None = None
    deadline_at: datetime | None = None  # the next time the saga looks again: resend, warn or give up
    resends: int = 0
    warned: bool = False
    attention: str | None = None
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
        return cls(**d)

    # -- derived --------------------------------------------------------------------------------

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def refund_asked(self) -> Decimal:
        return sum((amount for _, amount in self.refunds), Decimal("0"))

    @property
    def unrefunded(self) -> Decimal:
        """Captured money the saga has not yet asked back (for a cancelled order: must reach 0)."""
        return self.captured - self.refund_asked


# --- the flow -------------------------------------------------------------------------------


def start(*, order_id: str, total: Decimal, currency: str, now: datetime, timeouts: Timeouts) -> tuple[Saga, list[Intent]]:
    saga = Saga(order_id=order_id, total=total, currency=currency, stock=Stock.RESERVING)
    return _wait(saga, Wait.RESERVE, now, timeouts), [Reserve()]


def advance(saga: Saga, reply: object, *, now: datetime, timeouts: Timeouts) -> tuple[Saga, list[Intent]]:
    """The next state and what to do, for one reply or request. Pure."""
    handler = _HANDLERS.get(type(reply))
    if handler is None:
        raise TypeError(f"the saga does not take {type(reply).__name__}")
    return handler(saga, reply, now, timeouts)


def _ignore(saga: Saga) -> tuple[Saga, list[Intent]]:
    return replace(saga, ignored=saga.ignored + 1), []


def _wait(saga: Saga, what: Wait | None, now: datetime, timeouts: Timeouts) -> Saga:
    if what is None:
        return replace(saga, waiting_for=None, waiting_since=None, deadline_at=None, resends=0, warned=False)
    saga = replace(saga, waiting_for=what, waiting_since=now, resends=0, warned=False)
    return replace(saga, deadline_at=_next_look(saga, now, timeouts))


def _next_look(saga: Saga, now: datetime, t: Timeouts) -> datetime:
    """The next resend, or the warning or the give-up if it comes first."""
    since = saga.waiting_since or now
    marks = [now + timedelta(seconds=t.resend_seconds), since + timedelta(seconds=t.give_up_seconds)]
    if not saga.warned:
        marks.append(since + timedelta(seconds=t.warn_seconds))
    return max(min(marks), now)


# step 1: reserve stock


def _stock_reserved(saga: Saga, reply: StockReserved, now: datetime, t: Timeouts):
    if saga.stock is not Stock.RESERVING:
        return _ignore(saga)  # a duplicate, or the answer to a resent command
    warehouse = reply.allocations[0].warehouse if reply.allocations else None
    saga = replace(saga, stock=Stock.RESERVED, warehouse=warehouse)
    if saga.status is not S.SUBMITTED:  # cancelled while reserving: give the stock back
        return _compensate(saga, now, t)
    saga = replace(saga, status=S.CONFIRMED, payment=Pay.CAPTURING)
    return _wait(saga, Wait.CAPTURE, now, t), [Capture()]


def _reservation_failed(saga: Saga, reply: StockReservationFailed, now: datetime, t: Timeouts):
    if saga.stock is not Stock.RESERVING:
        return _ignore(saga)
    saga = replace(saga, stock=Stock.NONE)  # all or nothing: nothing is held
    if saga.status is S.SUBMITTED:
        return _cancel(saga, CancelReason.OUT_OF_STOCK, now, t)
    return _compensate(saga, now, t)


# step 2: capture the payment


def _payment_captured(saga: Saga, reply: PaymentCaptured, now: datetime, t: Timeouts):
    if saga.payment is Pay.CAPTURED:
        return _ignore(saga)  # the same capture told twice
    saga = replace(saga, payment=Pay.CAPTURED, payment_id=reply.payment_id, captured=reply.amount)
    if saga.status is not S.CONFIRMED:  # cancelled or timed out meanwhile: never keep the money
        return _compensate(saga, now, t)
    saga = replace(saga, status=S.PAID, parcel=Parcel.CREATING)
    return _wait(saga, Wait.SHIP, now, t), [CreateShipment(warehouse=saga.warehouse or "")]


def _payment_failed(saga: Saga, reply: PaymentFailed, now: datetime, t: Timeouts):
    if saga.payment is not Pay.CAPTURING:
        return _ignore(saga)
    saga = replace(saga, payment=Pay.FAILED)
    if saga.status is S.CONFIRMED:
        return _cancel(saga, PAYMENT_FAILURES.get(reply.reason, CancelReason.PAYMENT_DECLINED), now, t)
    return _compensate(saga, now, t)


# step 3: create the shipment


def _shipment_created(saga: Saga, reply: ShipmentCreated, now: datetime, t: Timeouts):
    if saga.parcel is not Parcel.CREATING:
        return _ignore(saga)
    saga = replace(saga, parcel=Parcel.CREATED)
    if saga.status is not S.PAID:  # cancelled while the parcel was being booked
        saga, intents = _compensate(saga, now, t)
        return saga, intents
    return _wait(replace(saga, status=S.PICKING), None, now, t), []


def _shipment_failed(saga: Saga, reply: ShipmentFailed, now: datetime, t: Timeouts):
    if saga.parcel is Parcel.CANCELLING:  # the booking came after the cancel: no parcel will leave
        return _compensate(replace(saga, parcel=Parcel.CANCELLED), now, t)
    if saga.parcel is not Parcel.CREATING:
        return _ignore(saga)
    saga = replace(saga, parcel=Parcel.FAILED)
    if saga.status is S.PAID:
        return _cancel(saga, CancelReason.SHIPMENT_FAILED, now, t)
    return _compensate(saga, now, t)


# step 4: follow the parcel


_CARRIER_STATUS = {
    ShipmentStatus.PICKED_UP: S.SHIPPED,
    ShipmentStatus.IN_TRANSIT: S.IN_TRANSIT,
    ShipmentStatus.OUT_FOR_DELIVERY: S.IN_TRANSIT,
    ShipmentStatus.DELIVERED: S.DELIVERED,
}
_PROGRESS = (S.PAID, S.PICKING, S.SHIPPED, S.IN_TRANSIT, S.DELIVERED)


def passed_through(old: S, new: S) -> list[S]:
    """The statuses an order takes on its way from ``old`` to ``new``. A carrier's scans may
    overtake each other (in transit before picked up), yet the parcel went through every step, so
    the order's history, its events and the customer's messages tell each one, in order."""
    if old in _PROGRESS and new in _PROGRESS and _PROGRESS.index(new) > _PROGRESS.index(old):
        return list(_PROGRESS[_PROGRESS.index(old) + 1 : _PROGRESS.index(new) + 1])
    return [new]


def _shipment_updated(saga: Saga, reply: ShipmentUpdated, now: datetime, t: Timeouts):
    target = _CARRIER_STATUS.get(reply.status)
    if saga.parcel is Parcel.CANCELLING and target is not None:
        return _parcel_left(saga, reply, now, t)
    if target is None or saga.status not in _PROGRESS or saga.parcel not in (Parcel.CREATING, Parcel.CREATED):
        return _ignore(saga)  # exceptions and returns are followed elsewhere; late news after cancel
    if saga.parcel is Parcel.CREATING:  # the carrier's news overtook shipment.created
        saga = _wait(replace(saga, parcel=Parcel.CREATED), None, now, t)
    if _PROGRESS.index(target) <= _PROGRESS.index(saga.status):
        return _ignore(saga)  # carriers resend and reorder: never go backwards
    intents: list[Intent] = []
    if saga.stock is Stock.RESERVED:  # the parcel left the warehouse: the units are gone for good
        saga, intents = replace(saga, stock=Stock.COMMITTED), [Commit()]
    return replace(saga, status=target), intents


def _shipment_cancelled(saga: Saga, reply: ShipmentCancelled, now: datetime, t: Timeouts):
    if saga.parcel is not Parcel.CANCELLING:
        return _ignore(saga)  # told again (a resent cancel)
    return _compensate(replace(saga, parcel=Parcel.CANCELLED), now, t)  # now the stock can go back


def _parcel_left(saga: Saga, reply: ShipmentUpdated, now: datetime, t: Timeouts):
    """The carrier scanned the parcel before the cancel reached shipping. The order stays cancelled
    (its refund is under way); the units are off the shelf, and someone has to get them back."""
    detail = f"the carrier took parcel {reply.tracking_number} before its cancellation reached shipping: ask for it back"
    saga = replace(saga, parcel=Parcel.LEFT, attention=detail)
    intents: list[Intent] = []
    if saga.stock is Stock.RESERVED:
        saga, intents = replace(saga, stock=Stock.COMMITTED), [Commit()]
    return _settle(saga, now, t), [*intents, RaiseAttention(step="ship", detail=detail)]


def _shipment_returned(saga: Saga, reply: ShipmentReturned, now: datetime, t: Timeouts):
    if saga.status is not S.RETURN_REQUESTED:
        return _ignore(saga)
    items = list(reply.items) or list(saga.return_items)
    refund = _refund(saga, saga.return_amount, "return")
    saga = replace(saga, status=S.RETURNED)
    return _with_refund(saga, refund), [Restock(items=items), *([refund] if refund else [])]


# requests from people, deadlines, and the answers to compensations


def _cancel_requested(saga: Saga, req: CancelRequested, now: datetime, t: Timeouts):
    if saga.status is S.CANCELLED:
        return _ignore(saga)  # asked twice: already done
    if saga.status not in BEFORE_SHIPMENT:
        raise Refused(f"the order is {saga.status}: it can no longer be cancelled; request a return after delivery")
    return _cancel(saga, CancelReason(req.reason), now, t)


def _attention_resolved(saga: Saga, req: AttentionResolved, now: datetime, t: Timeouts):
    if saga.attention is None:
        raise Refused("nothing about this order waits for a person")
    return replace(saga, attention=None), []


def _address_change(saga: Saga, req: AddressChangeRequested, now: datetime, t: Timeouts):
    if saga.status not in BEFORE_SHIPMENT:
        raise Refused(f"the order is {saga.status}: the address can no longer be changed")
    return saga, ([ChangeShipmentAddress()] if saga.parcel in (Parcel.CREATING, Parcel.CREATED) else [])


def _return_requested(saga: Saga, req: ReturnRequested, now: datetime, t: Timeouts):
    if saga.status is not S.DELIVERED:
        raise Refused(f"the order is {saga.status}: a return can be requested once it is delivered")
    if req.amount > saga.captured - saga.refund_asked:
        raise Refused("the return is worth more than is left to refund")
    saga = replace(saga, status=S.RETURN_REQUESTED, return_items=tuple(req.items), return_amount=req.amount)
    return saga, [ExpectReturn(items=list(req.items))]


def _deadline(saga: Saga, _: DeadlineReached, now: datetime, t: Timeouts):
    if saga.deadline_at is None or saga.waiting_for is None or now < saga.deadline_at:
        return _ignore(saga)  # fired early or twice
    since = saga.waiting_since or now
    if now >= since + timedelta(seconds=t.give_up_seconds):
        if saga.waiting_for is not Wait.COMPENSATE:
            return _cancel(saga, CancelReason.SAGA_TIMEOUT, now, t)
        detail = ", ".join(type(i).__name__ for i in _pending_compensations(saga)) or "compensation"
        saga = _wait(replace(saga, attention=f"no answer to {detail}"), None, now, t)
        return saga, [RaiseAttention(step="compensate", detail=f"no answer to {detail} since {since.isoformat()}")]
    intents: list[Intent] = []
    if not saga.warned and now >= since + timedelta(seconds=t.warn_seconds):
        saga = replace(saga, warned=True)
        intents.append(Warn(step=saga.waiting_for, waiting_since=since,
                            give_up_at=since + timedelta(seconds=t.give_up_seconds)))
    intents += _waiting_commands(saga)
    saga = replace(saga, resends=saga.resends + 1)
    return replace(saga, deadline_at=_next_look(saga, now, t)), intents


def _waiting_commands(saga: Saga) -> list[Intent]:
    """What the saga is waiting on, sent again."""
    match saga.waiting_for:
        case Wait.RESERVE:
            return [Reserve()]
        case Wait.CAPTURE:
            return [Capture()]
        case Wait.SHIP:
            return [CreateShipment(warehouse=saga.warehouse or "")]
        case Wait.COMPENSATE:
            return _pending_compensations(saga)
    return []


def _stock_released(saga: Saga, reply: StockReleased, now: datetime, t: Timeouts):
    if saga.stock is not Stock.RELEASING:
        return _ignore(saga)
    return _settle(replace(saga, stock=Stock.RELEASED), now, t), []


def _stock_committed(saga: Saga, reply: StockCommitted, now: datetime, t: Timeouts):
    return _ignore(saga)  # nothing waits for it: the commit is fire-and-forget bookkeeping


def _payment_refunded(saga: Saga, reply: PaymentRefunded, now: datetime, t: Timeouts):
    if reply.refund_id in saga.refund_ids:
        return _ignore(saga)  # the same refund told twice
    saga = replace(
        saga,
        refund_ids=(*saga.refund_ids, reply.refund_id),
        refunded=saga.refunded + reply.amount,
        refunds_done=(*saga.refunds_done, reply.refund_key) if reply.refund_key else saga.refunds_done,
    )
    return _settle(saga, now, t), []


# --- compensation ---------------------------------------------------------------------------


def _cancel(saga: Saga, reason: CancelReason, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    return _compensate(replace(saga, status=S.CANCELLED, reason=reason), now, t)


def _compensate(saga: Saga, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    """Undo, in reverse order, every step done so far that a cancelled order must not keep."""
    intents: list[Intent] = []
    if saga.parcel in (Parcel.CREATING, Parcel.CREATED):
        saga, intents = replace(saga, parcel=Parcel.CANCELLING), [*intents, CancelShipment()]
    refund = _refund(saga, saga.unrefunded, "cancel")
    if refund:
        saga, intents = _with_refund(saga, refund), [*intents, refund]
    # While reserving, the release overtakes the reservation: inventory never reserves for an order
    # it has released, and answers it with stock.reservation_failed. Reserved units wait for the
    # parcel's cancel to be answered: they may have left with the carrier.
    if saga.stock is Stock.RESERVING or (saga.stock is Stock.RESERVED and saga.parcel is not Parcel.CANCELLING):
        saga, intents = replace(saga, stock=Stock.RELEASING), [*intents, Release()]
    return _settle(saga, now, t), intents


def _refund(saga: Saga, amount: Decimal, purpose: str) -> Refund | None:
    key = f"{saga.order_id}:{purpose}"
    if amount <= 0 or any(k == key for k, _ in saga.refunds):
        return None  # one refund per purpose at most, whatever is replayed
    return Refund(amount=amount, key=key)


def _with_refund(saga: Saga, refund: Refund | None) -> Saga:
    if refund is None:
        return saga
    return replace(saga, refunds=(*saga.refunds, (refund.key, refund.amount)))


def _pending_compensations(saga: Saga) -> list[Intent]:
    pending: list[Intent] = [CancelShipment()] if saga.parcel is Parcel.CANCELLING else []
    pending += [Release()] if saga.stock is Stock.RELEASING else []
    pending += [Refund(amount=a, key=k) for k, a in saga.refunds if k not in saga.refunds_done]
    return pending


def _settle(saga: Saga, now: datetime, t: Timeouts) -> Saga:
    """Wait for outstanding compensations, or stop waiting once they are all answered."""
    if not saga.final:
        return saga
    if _pending_compensations(saga):
        return saga if saga.waiting_for is Wait.COMPENSATE else _wait(saga, Wait.COMPENSATE, now, t)
    return _wait(saga, None, now, t)


_HANDLERS = {
    StockReserved: _stock_reserved,
    StockReservationFailed: _reservation_failed,
    StockReleased: _stock_released,
    StockCommitted: _stock_committed,
    PaymentCaptured: _payment_captured,
    PaymentFailed: _payment_failed,
    PaymentRefunded: _payment_refunded,
    ShipmentCreated: _shipment_created,
    ShipmentFailed: _shipment_failed,
    ShipmentCancelled: _shipment_cancelled,
    ShipmentUpdated: _shipment_updated,
    ShipmentReturned: _shipment_returned,
    CancelRequested: _cancel_requested,
    AddressChangeRequested: _address_change,
    AttentionResolved: _attention_resolved,
    ReturnRequested: _return_requested,
    DeadlineReached: _deadline,
}
