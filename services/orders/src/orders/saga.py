"""The order saga: the whole order flow, failures included, as a table and one pure function.

Read ``STEPS`` first. Each step sends one command and waits for its replies; ``advance`` walks the
table forward on a success, and when the order fails later it undoes the steps already done, in
reverse (``undo`` of each row, from the last one back):

    step     command                   success            failures                   undone by
    reserve  inventory.reserve_stock   stock.reserved     stock.reservation_failed   inventory.release_stock
    capture  payments.capture_payment  payment.captured   payment.failed             payments.refund_payment
    ship     shipping.create_shipment  shipment.created   shipment.failed            shipping.cancel_shipment (*)
             (one per parcel)          (every parcel)
    follow   (the carrier reports)     shipment.updated   -                          (from shipped on: a return)
    return   shipping.expect_return    shipment.returned  -                          (asked by the customer)
    resend   inventory.reserve_stock   stock.reserved     stock.reservation_failed   (a lost parcel: sent again
             + shipping.create_shipment  (its parcel)      (its parcel: refunded)     when stock allows)

The customer pays: a wallet order without a token (CONTRACT §4) is answered
``payment.action_required`` (a QR code or a redirect and its ``expires_at``): the capture step then
waits for the customer (``Wait.CUSTOMER``) until a little past ``expires_at``, and the order is
cancelled ``payment_timeout`` when the money has not come by then (payments normally says so first).

Parcels: the order ships one parcel per warehouse its stock was reserved at (``Saga.parcels``),
each booked and followed on its own. The order is ``shipped`` when every parcel is with a carrier,
``in_transit`` when every one is on its way, ``delivered`` when every one arrived. A parcel that
comes back undelivered (``returned``) or is ``lost`` ends its delivery: what it held is refunded,
returned units go back on the shelf; an order none of whose parcels arrived is cancelled with
``delivery_failed``. A lost parcel is first sent again (the resend step: its units reserved once
more, a new parcel booked that names the one it replaces, so the customer is told it was sent
again), and is refunded only when the stock does not allow it (the customer is told of the
refund), or when the one sent instead is lost too. A failed attempt (``exception``) only waits for the next one.

(*) A cancel is answered: ``shipment.cancelled`` naming the parcels that will not leave, and, for
one the carrier took first, the ``shipment.updated`` of that scan. The reserved stock is released
only once every parcel is answered for; the units of a parcel that left are off the shelf
(committed), and ops are asked to get it back (``RaiseAttention``). The order stays cancelled and
refunded, as the customer asked. Once a parcel has left, the order is no longer cancelled: a
return is the way.

Statuses (CONTRACT §5): submitted → confirmed → paid → picking → shipped → in_transit → delivered,
and cancelled (with a reason), return_requested, returned.

``advance(saga, reply, now, timeouts) -> (saga, intents)`` is the only way the saga moves. It does
no I/O: the orders handler loads the saga, calls ``advance``, and saves the new saga together with
the commands the intents become, in one transaction. A reply that does not fit the current state
(late, duplicate, out of order) leaves the saga as it is, or is undone (a capture that arrives
after the order was cancelled is refunded; a reservation that arrives after it is released).

Silence is not an answer: while a service is down, restarting or cut off from the broker, the
step's command is sent again every ``resend_seconds`` (receivers are idempotent) and the saga
keeps waiting. Only an answer (declined, timed out at the provider, no stock, no carrier) or the
customer cancels an order; a step that has waited ``warn_seconds`` warns ops (``Warn``), and one
that has waited ``give_up_seconds`` is cancelled with ``saga_timeout``. Unanswered compensations
are resent the same way and, past the long deadline, the order is marked for attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from events.inventory import StockReleased, StockReservationFailed, StockReserved
from events.payments import PaymentActionRequired, PaymentCaptured, PaymentFailed, PaymentRefunded
from events.shipping import (
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
    ShipmentReturned,
    ShipmentUpdated,
)
from events.types import CancelReason, LineItem, OrderStatus, ShipmentStatus
from orders.saga_state import (
    ENDED,
    FINAL,
    AddressChangeRequested,
    AttentionResolved,
    CancelPayment,
    CancelRequested,
    CancelShipment,
    Capture,
    ChangeShipmentAddress,
    Commit,
    CreateShipment,
    DeadlineReached,
    ExpectReturn,
    Intent,
    Leg,
    Parcel,
    ParcelLeg,
    Pay,
    RaiseAttention,
    Refund,
    Release,
    Reserve,
    Restock,
    ReturnRequested,
    Saga,
    Stock,
    Wait,
    Warn,
)

S = OrderStatus
BEFORE_SHIPMENT = frozenset({S.SUBMITTED, S.CONFIRMED, S.PAID, S.PICKING})

# "expired": sent by payments before it stopped expiring late commands; still understood
PAYMENT_FAILURES = {
    "declined": CancelReason.PAYMENT_DECLINED,
    "provider_timeout": CancelReason.PAYMENT_TIMEOUT,
    "payment_timeout": CancelReason.PAYMENT_TIMEOUT,  # the customer did not pay within the window
    "expired": CancelReason.PAYMENT_TIMEOUT,
}


Outcome = tuple[Saga, list[Intent]]
"""The saga's next state and what it asks to be done."""


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


# --- what each step does, beyond the table's columns ------------------------------------------


def _reserved(saga: Saga, reply: StockReserved) -> Saga:
    """One parcel per warehouse the stock was reserved at."""
    by_warehouse: dict[str, list[LineItem]] = {}
    for a in reply.allocations:
        by_warehouse.setdefault(a.warehouse, []).append(LineItem(sku=a.sku, quantity=a.quantity))
    parcels = tuple(ParcelLeg(name=w, warehouse=w, items=tuple(items)) for w, items in by_warehouse.items())
    return replace(
        saga, warehouse=reply.allocations[0].warehouse if reply.allocations else None, parcels=parcels
    )


def _book(saga: Saga) -> list[Intent]:
    """A booking for every parcel not booked yet (the order's whole lines when it has none listed)."""
    if not saga.parcels:
        return [CreateShipment(warehouse=saga.warehouse or "")]
    return [
        CreateShipment(warehouse=p.warehouse, parcel=p.name, items=p.items)
        for p in saga.parcels
        if p.leg is Leg.PLANNED
    ]


def _leg_of(saga: Saga, reply: Any) -> int | None:
    """The parcel a reply is about: by its shipment id, else its name (or warehouse)."""
    for i, p in enumerate(saga.parcels):
        if p.shipment_id is not None and p.shipment_id == getattr(reply, "shipment_id", None):
            return i
    name = getattr(reply, "parcel", None) or getattr(reply, "warehouse", None)
    for i, p in enumerate(saga.parcels):
        if p.name == name or (name is None and len(saga.parcels) == 1):
            return i
    return None


def _with_leg(saga: Saga, i: int, **changes: Any) -> Saga:
    parcels = list(saga.parcels)
    parcels[i] = replace(parcels[i], **changes)
    return replace(saga, parcels=tuple(parcels))


def _booked(saga: Saga, reply: ShipmentCreated) -> Saga:
    i = _leg_of(saga, reply)
    if i is None or saga.parcels[i].leg is not Leg.PLANNED:
        return saga
    return _with_leg(saga, i, leg=Leg.BOOKED, shipment_id=reply.shipment_id, carrier_status="created")


def _all_booked(saga: Saga) -> bool:
    return all(p.leg is not Leg.PLANNED for p in saga.parcels)


def _captured(saga: Saga, reply: PaymentCaptured) -> Saga:
    return replace(saga, payment_id=reply.payment_id, captured=reply.amount)


def _release(saga: Saga) -> tuple[Saga, list[Intent]]:
    # While reserving, the release overtakes the reservation: inventory never reserves for an order
    # it has released, and answers it with stock.reservation_failed. Reserved units wait for the
    # parcel's cancel to be answered: they may have left with the carrier.
    if saga.stock is Stock.RESERVING or (
        saga.stock is Stock.RESERVED and saga.parcel is not Parcel.CANCELLING
    ):
        return replace(saga, stock=Stock.RELEASING), [_release_intent(saga)]
    return saga, []


def _release_intent(saga: Saga) -> Release:
    """Release what did not leave. Once a parcel left, its ``Commit`` may still be on its way to
    inventory on another queue: a release of the whole order taken first would put the units the
    carrier has back on the shelf, so the release names the warehouses whose parcels stayed."""
    own = [p for p in saga.parcels if p.replaces is None]  # parcels sent again release by name
    gone = {p.warehouse for p in own if _left(p)}
    if not gone:
        return Release()
    return Release(warehouses=tuple(sorted({p.warehouse for p in own} - gone)))


def _commit(p: ParcelLeg) -> Commit:
    """The parcel left: its units leave the shelf (a parcel sent again: only its own units)."""
    return Commit(warehouse=p.warehouse, parcel=p.stock_name if p.replaces is not None else None)


def _refund_the_rest(saga: Saga) -> tuple[Saga, list[Intent]]:
    if saga.payment is Pay.CAPTURING and saga.action is not None:
        # the customer may still pay: the payment is closed at its provider now (money that came
        # first is captured, and refunded once its capture reaches this cancelled order)
        return saga, [CancelPayment()]
    refund = _refund(saga, saga.unrefunded, "cancel")
    return (_with_refund(saga, refund), [refund]) if refund else (saga, [])


def _cancel_parcel(saga: Saga) -> tuple[Saga, list[Intent]]:
    # One parcel's booking failed while the others may be booked: they are cancelled too.
    intents: list[Intent] = []
    on_the_way = [p.name for p in saga.parcels if p.leg in (Leg.LEFT, Leg.DELIVERED)]  # or with the customer
    if on_the_way and saga.attention is None:  # the order is cancelled with parcels on their way
        detail = (
            f"parcel(s) {', '.join(on_the_way)} left with the carrier before the order was cancelled:"
            " ask for them back"
        )
        saga, intents = replace(saga, attention=detail), [RaiseAttention(step="ship", detail=detail)]
    if saga.parcels and all(_left(p) or p.leg is Leg.CANCELLED for p in saga.parcels):
        return saga, intents  # every parcel is with the carrier or ended: nothing to stop
    if saga.parcel in (Parcel.CREATING, Parcel.CREATED) or (
        saga.parcel is Parcel.FAILED and len(saga.parcels) > 1
    ):
        return replace(saga, parcel=Parcel.CANCELLING), [*intents, CancelShipment()]
    return saga, intents


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One row of the flow: what is sent, what answers it, and what undoes it once done."""

    name: str
    success: type
    waits_in: OrderStatus  # the order's status while the step waits
    then: OrderStatus  # the order's status once it succeeded
    progress: str  # the saga's field that says where the step stands
    command: Callable[[Saga], list[Intent]] | None = None  # None: the other side reports by itself
    failures: tuple[type, ...] = ()
    undo: Callable[[Saga], tuple[Saga, list[Intent]]] | None = None  # what a cancelled order must not keep
    undone_by: type | None = None  # the reply that says the undo is done
    pending_undo: Callable[[Saga], list[Intent]] | None = None  # the undo sent and not answered yet
    wait: Wait | None = None  # what the saga's deadline is for while the step waits
    asked: Any = None  # the progress while the step waits
    done: Any = None  # ... once it succeeded
    failed: Any = None  # ... once it failed
    taken_in: frozenset[Any] = frozenset()  # the progress values in which a success is taken
    record: Callable[[Saga, Any], Saga] = lambda saga, reply: saga  # what a success tells the saga
    complete: Callable[[Saga], bool] = lambda saga: True  # the step is done (every parcel booked)
    reason: Callable[[Any], str] = lambda reply: CancelReason.SAGA_TIMEOUT  # why a failure cancels
    customer: tuple[type, ...] = ()  # replies that say the step now waits for the customer (to pay)
    customer_late: str = (
        CancelReason.SAGA_TIMEOUT
    )  # why the order is cancelled when the customer's time is up


STEPS: tuple[Step, ...] = (
    Step(
        "reserve",
        command=lambda saga: [Reserve()],
        success=StockReserved,
        failures=(StockReservationFailed,),
        undo=_release,
        undone_by=StockReleased,
        pending_undo=lambda saga: [
            *([_release_intent(saga)] if saga.stock is Stock.RELEASING else []),
            *(_release_again(p) for p in saga.parcels if p.releasing),
        ],
        wait=Wait.RESERVE,
        waits_in=S.SUBMITTED,
        then=S.CONFIRMED,
        # all or nothing: a failed reservation holds nothing
        progress="stock",
        asked=Stock.RESERVING,
        done=Stock.RESERVED,
        failed=Stock.NONE,
        taken_in=frozenset({Stock.RESERVING}),
        record=_reserved,
        reason=lambda reply: CancelReason.OUT_OF_STOCK,
    ),
    Step(
        "capture",
        command=lambda saga: [Capture()],
        success=PaymentCaptured,
        failures=(PaymentFailed,),
        undo=_refund_the_rest,
        undone_by=PaymentRefunded,
        pending_undo=lambda saga: [
            Refund(amount=a, key=k) for k, a in saga.refunds if k not in saga.refunds_done
        ],
        wait=Wait.CAPTURE,
        waits_in=S.CONFIRMED,
        then=S.PAID,
        progress="payment",
        asked=Pay.CAPTURING,
        done=Pay.CAPTURED,
        failed=Pay.FAILED,
        taken_in=frozenset({Pay.NONE, Pay.CAPTURING, Pay.FAILED}),  # money is never ignored: kept or refunded
        record=_captured,
        reason=lambda reply: PAYMENT_FAILURES.get(reply.reason, CancelReason.PAYMENT_DECLINED),
        # a wallet without a token: the customer pays a QR code or a redirect before its expires_at
        customer=(PaymentActionRequired,),
        customer_late=CancelReason.PAYMENT_TIMEOUT,
    ),
    Step(
        "ship",
        command=_book,
        success=ShipmentCreated,
        failures=(ShipmentFailed,),
        undo=_cancel_parcel,
        undone_by=ShipmentCancelled,
        pending_undo=lambda saga: [CancelShipment()] if saga.parcel is Parcel.CANCELLING else [],
        wait=Wait.SHIP,
        waits_in=S.PAID,
        then=S.PICKING,
        progress="parcel",
        asked=Parcel.CREATING,
        done=Parcel.CREATED,
        failed=Parcel.FAILED,
        taken_in=frozenset({Parcel.CREATING}),
        record=_booked,
        complete=_all_booked,
        reason=lambda reply: CancelReason.SHIPMENT_FAILED,
    ),
    Step(  # the carrier reports by itself: see _shipment_updated
        "follow",
        success=ShipmentUpdated,
        waits_in=S.PICKING,
        then=S.DELIVERED,
        progress="parcel",
    ),
)

RETURN = Step(
    "return",
    command=lambda saga: [ExpectReturn(items=list(saga.return_items))],
    success=ShipmentReturned,
    waits_in=S.RETURN_REQUESTED,
    then=S.RETURNED,
    progress="parcel",
)
"""Not part of the forward flow: the customer asks for it after delivery (see _shipment_returned)."""


def _resend(saga: Saga) -> list[Intent]:
    """For each parcel sent instead of a lost one: its stock reserved again, then its booking, or,
    when no carrier took it, its units given back."""
    again = [p for p in saga.parcels if p.replaces is not None]
    return [
        *(Reserve(parcel=p.name, items=p.items) for p in again if p.leg is Leg.RESERVING),
        *(
            CreateShipment(warehouse=p.warehouse, parcel=p.name, items=p.items, replaces=p.replaces)
            for p in again
            if p.leg is Leg.PLANNED
        ),
        *(_release_again(p) for p in again if p.releasing),
    ]


def _release_again(p: ParcelLeg) -> Release:
    return Release(warehouses=(p.warehouse,), parcel=p.stock_name)


RESEND = Step(
    "resend",
    command=_resend,
    success=StockReserved,
    failures=(StockReservationFailed,),
    wait=Wait.RESEND,
    waits_in=S.SHIPPED,
    then=S.DELIVERED,
    progress="parcels",  # (the order may be further on: in transit)
)
"""Not part of the forward flow: a parcel the carrier lost is sent again (see _send_again). Its
replies carry the parcel's name (``parcel``), which tells them from the reserve step's."""

TABLE: tuple[Step, ...] = (*STEPS, RETURN, RESEND)
SHIP = next(step for step in STEPS if step.name == "ship")


def _step(waiting: Wait | None) -> Step | None:
    return next((step for step in TABLE if step.wait is waiting and waiting is not None), None)


def _after(step: Step) -> Step:
    return STEPS[STEPS.index(step) + 1]


# --- the flow -------------------------------------------------------------------------------


def start(
    *,
    order_id: str,
    total: Any,
    currency: str,
    now: datetime,
    timeouts: Timeouts,
    prices: tuple[tuple[str, Any], ...] = (),
) -> tuple[Saga, list[Intent]]:
    """``prices``: the unit price of each SKU, for what a parcel that did not arrive is worth."""
    return _begin(
        STEPS[0], Saga(order_id=order_id, total=total, currency=currency, prices=prices), now, timeouts
    )


def advance(saga: Saga, reply: object, *, now: datetime, timeouts: Timeouts) -> tuple[Saga, list[Intent]]:
    """The next state and what to do, for one reply or request. Pure."""
    handler = _HANDLERS.get(type(reply))
    if handler is None:
        raise TypeError(f"the saga does not take {type(reply).__name__}")
    return handler(saga, reply, now, timeouts)


def _begin(step: Step, saga: Saga, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    """Send the step's command and wait for its answer (a step with no command just follows)."""
    if step.command is None:
        return _wait(saga, None, now, t), []
    saga = replace(saga, **{step.progress: step.asked})
    return _wait(saga, step.wait, now, t), step.command(saga)


def _succeeded(step: Step, saga: Saga, reply: Any, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    if getattr(saga, step.progress) not in step.taken_in:
        return _ignore(saga)  # a duplicate, or the answer to a resent command
    saga = step.record(saga, reply)
    if not step.complete(saga):
        return saga, []  # one parcel booked, others to come
    saga = replace(saga, **{step.progress: step.done})
    if saga.final:  # cancelled meanwhile: what was just done is undone
        return _compensate(saga, now, t)
    if saga.status is not step.waits_in:  # a carrier's scan overtook the answer: the order is further on
        return _begin(_after(step), saga, now, t)
    return _begin(_after(step), replace(saga, status=step.then), now, t)


def _customer_asked(
    step: Step, saga: Saga, reply: Any, now: datetime, t: Timeouts
) -> tuple[Saga, list[Intent]]:
    """The step waits for the customer now, until what they were asked to do expires (its own
    deadline: then the order is cancelled, ``customer_late``, and what was done is undone). The
    other side answers by itself when the customer acts, so nothing is resent meanwhile."""
    if (
        getattr(saga, step.progress) is not step.asked
        or saga.status is not step.waits_in
        or saga.action is not None
    ):
        return _ignore(saga)  # told again, or too late
    action = {"type": reply.action_type, "url": reply.url, "expires_at": reply.expires_at.isoformat()}
    saga = replace(saga, action=action, waiting_for=Wait.CUSTOMER, waiting_since=now, resends=0, warned=False)
    # a little past the window: the provider's own "unpaid" answer normally comes first
    return replace(saga, deadline_at=reply.expires_at + timedelta(seconds=t.resend_seconds)), []


def _failed(step: Step, saga: Saga, reply: Any, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    if getattr(saga, step.progress) is not step.asked:
        return _ignore(saga)
    saga = replace(saga, **{step.progress: step.failed})
    if not saga.final:  # (a carrier's scan may have moved the order past the step's own status)
        return _cancel(saga, CancelReason(step.reason(reply)), now, t)
    return _compensate(saga, now, t)


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


# the exceptions to the table's rules, each for a reason it gives


def _shipment_failed(saga: Saga, reply: ShipmentFailed, now: datetime, t: Timeouts) -> Outcome:
    i = _leg_of(saga, reply)
    if saga.parcel is Parcel.CANCELLING:  # the booking came after the cancel: that parcel will not leave
        if i is None or len(saga.parcels) <= 1:
            saga, releases = _cancel_legs(saga, lambda p: True)
            saga, intents = _cancel_answered(saga, now, t)
            return _settle(saga, now, t), [*releases, *intents]
        return _cancel_answered(_with_leg(saga, i, leg=Leg.CANCELLED), now, t)
    if i is not None and saga.parcel is Parcel.CREATING:  # never booked: nothing of it to cancel
        saga = _with_leg(saga, i, leg=Leg.CANCELLED)
    return _failed(SHIP, saga, reply, now, t)


# A carrier's status: where the parcel is (its leg) and what the order is once every parcel is there.
_LEG = {
    ShipmentStatus.PICKED_UP: Leg.LEFT,
    ShipmentStatus.IN_TRANSIT: Leg.LEFT,
    ShipmentStatus.OUT_FOR_DELIVERY: Leg.LEFT,
    ShipmentStatus.EXCEPTION: Leg.LEFT,  # a failed attempt: the next one is awaited
    ShipmentStatus.DELIVERED: Leg.DELIVERED,
    ShipmentStatus.RETURNED: Leg.RETURNED,
    ShipmentStatus.LOST: Leg.LOST,
}
_CARRIER_STATUS = {
    ShipmentStatus.PICKED_UP: S.SHIPPED,
    ShipmentStatus.EXCEPTION: S.SHIPPED,
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


def _cancelled(p: ParcelLeg) -> ParcelLeg:
    """A parcel that will not leave; one sent again gives back the units reserved for it on its own
    (the order's release names warehouses, and its lost parcel's warehouse is not among them)."""
    if p.leg not in (Leg.PLANNED, Leg.BOOKED):
        return p
    return replace(p, leg=Leg.CANCELLED, releasing=p.replaces is not None)


def _cancel_legs(saga: Saga, which: Callable[[ParcelLeg], bool]) -> tuple[Saga, list[Intent]]:
    """:func:`_cancelled` for the parcels ``which`` picks, and the releases that asks for."""
    parcels = tuple(_cancelled(p) if which(p) else p for p in saga.parcels)
    releases: list[Intent] = [
        _release_again(q)
        for p, q in zip(saga.parcels, parcels, strict=True)
        if q.releasing and not p.releasing
    ]
    return replace(saga, parcels=parcels), releases


def _left(p: ParcelLeg) -> bool:
    return p.leg not in (Leg.PLANNED, Leg.BOOKED, Leg.CANCELLED)


def _rank(carrier_status: str | None) -> int:
    status = ShipmentStatus(carrier_status) if carrier_status else ShipmentStatus.CREATED
    return _PROGRESS.index(_CARRIER_STATUS.get(status, S.PICKING))


def _order_status(saga: Saga) -> S:
    """Where the least advanced parcel still on its way puts the order."""
    going = [p for p in saga.parcels if p.leg not in (Leg.RETURNED, Leg.LOST, Leg.CANCELLED)]
    return _PROGRESS[min(_rank(p.carrier_status) for p in going)] if going else S.PICKING


def _shipment_updated(saga: Saga, reply: ShipmentUpdated, now: datetime, t: Timeouts) -> Outcome:
    """The follow step: each parcel's scans move it, and the order with the least advanced, never back."""
    leg = _LEG.get(reply.status)
    i = _leg_of(saga, reply)
    if (
        (saga.status is S.CANCELLED or saga.parcel is Parcel.CANCELLING)
        and leg is Leg.RETURNED
        and i is not None
        and saga.parcels[i].leg is Leg.LEFT
        and saga.parcels[i].items
    ):
        # a parcel that left for a cancelled order came back by itself: its units go back on the shelf
        return _with_leg(saga, i, leg=leg, carrier_status=reply.status), [
            Restock(items=list(saga.parcels[i].items))
        ]
    if saga.parcel is Parcel.CANCELLING and leg is not None:
        return _parcel_left(saga, reply, now, t)
    if (
        leg is None
        or i is None
        or saga.status not in _PROGRESS
        or saga.parcel not in (Parcel.CREATING, Parcel.CREATED)
    ):
        return _ignore(saga)  # late news after cancel, or of a parcel the order does not know
    p = saga.parcels[i]
    if p.leg in ENDED or (
        p.leg is Leg.LEFT and leg is Leg.LEFT and _rank(reply.status) <= _rank(p.carrier_status)
    ):
        return _ignore(saga)  # a parcel that arrived or came back moves no more; carriers resend and reorder
    intents: list[Intent] = []
    if (
        not _left(p) and saga.stock is Stock.RESERVED
    ):  # the parcel left the warehouse: its units are gone for good
        intents.append(_commit(p))
    saga = _with_leg(
        saga, i, leg=leg, carrier_status=reply.status, shipment_id=p.shipment_id or reply.shipment_id
    )
    if p.replaces is not None:  # a scan can overtake its booking's answer: the resend waits no more
        saga = _resend_waits(saga, now, t)
    if saga.parcel is Parcel.CREATING and _all_booked(saga):  # the carrier's news overtook shipment.created
        saga = _wait(replace(saga, parcel=Parcel.CREATED), None, now, t)
        saga = replace(saga, status=max(saga.status, S.PICKING, key=_PROGRESS.index))
    if all(_left(q) for q in saga.parcels) and saga.stock is Stock.RESERVED:
        saga = replace(saga, stock=Stock.COMMITTED)
    if leg in (Leg.RETURNED, Leg.LOST):
        saga, more = _delivery_failed(saga, saga.parcels[i], now, t)
        return saga, [*intents, *more]
    if all(q.leg in ENDED for q in saga.parcels):
        return _delivery_over(saga, now, t, intents)
    target = _order_status(saga)
    if saga.parcel is Parcel.CREATED and _PROGRESS.index(target) > _PROGRESS.index(saga.status):
        saga = replace(saga, status=target)
    return saga, intents


def _delivery_failed(saga: Saga, p: ParcelLeg, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    """A parcel came back undelivered or was lost: what it held is refunded, returned units go back
    on the shelf, and the order ends once no parcel is on its way. A lost parcel is sent again
    first (once), and refunded only if that cannot be."""
    if (
        p.leg is Leg.LOST
        and p.items
        and p.replaces is None
        and not any(q.replaces == p.name for q in saga.parcels)
    ):
        return _send_again(saga, p, now, t)
    intents: list[Intent] = []
    if p.leg is Leg.RETURNED and p.items:
        intents.append(Restock(items=list(p.items)))
    refund = _refund(saga, min(saga.worth(p.items), saga.unrefunded), f"parcel:{p.name}")
    if refund:
        saga, intents = _with_refund(saga, refund), [*intents, refund]
    if all(q.leg in ENDED for q in saga.parcels):
        return _delivery_over(saga, now, t, intents)
    target = _order_status(saga)
    if _PROGRESS.index(target) > _PROGRESS.index(saga.status):
        saga = replace(saga, status=target)
    return saga, intents


def _send_again(saga: Saga, p: ParcelLeg, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    """The resend step begins: the lost parcel's units are reserved once more (inventory picks the
    warehouse); its refund waits for the answer."""
    again = ParcelLeg(
        name=f"{p.name}+1", warehouse=p.warehouse, items=p.items, leg=Leg.RESERVING, replaces=p.name
    )
    saga = replace(saga, parcels=(*saga.parcels, again))
    return _resend_waits(saga, now, t), _resend(replace(saga, parcels=(again,)))


def _resend_waits(saga: Saga, now: datetime, t: Timeouts) -> Saga:
    """The resend step waits while a parcel sent again is not reserved or not booked yet."""
    pending = any(
        p.replaces is not None and (p.leg in (Leg.RESERVING, Leg.PLANNED) or p.releasing)
        for p in saga.parcels
    )
    if pending:
        return saga if saga.waiting_for is Wait.RESEND else _wait(saga, Wait.RESEND, now, t)
    return _wait(saga, None, now, t) if saga.waiting_for is Wait.RESEND else saga


def _again(saga: Saga, reply: Any, legs: tuple[Leg, ...]) -> int | None:
    """The parcel sent again that ``reply`` is about, while it is in one of ``legs``."""
    name = getattr(reply, "parcel", None)
    return next(
        (
            i
            for i, p in enumerate(saga.parcels)
            if p.replaces is not None and p.name == name and p.leg in legs
        ),
        None,
    )


def _resend_answered(
    saga: Saga, reply: StockReserved | StockReservationFailed, now: datetime, t: Timeouts
) -> Outcome:
    """Inventory's answer for a parcel sent again: booked from where its units were reserved (one
    parcel per warehouse, as for the order), or, without stock, the lost parcel is refunded."""
    i = _again(saga, reply, (Leg.RESERVING,))
    if i is None:
        return _ignore(saga)  # told again (a resent reserve)
    p = saga.parcels[i]
    if isinstance(reply, StockReservationFailed):
        return _not_sent_again(_with_leg(saga, i, leg=Leg.CANCELLED), p, [], now, t)
    by_warehouse: dict[str, list[LineItem]] = {}
    for a in reply.allocations:
        by_warehouse.setdefault(a.warehouse, []).append(LineItem(sku=a.sku, quantity=a.quantity))
    legs = tuple(
        replace(
            p,
            name=p.name if k == 0 else f"{p.name}-{w}",
            warehouse=w,
            items=tuple(items),
            leg=Leg.PLANNED,
            reserved_as=p.name,
        )
        for k, (w, items) in enumerate(by_warehouse.items())
    )
    if saga.final:  # the order was cancelled meanwhile: nothing is sent, the units just reserved go back
        legs = tuple(replace(leg, leg=Leg.CANCELLED, releasing=True) for leg in legs)
        saga = replace(saga, parcels=(*saga.parcels[:i], *legs, *saga.parcels[i + 1 :]))
        return _settle(saga, now, t), [_release_again(leg) for leg in legs]
    saga = replace(saga, parcels=(*saga.parcels[:i], *legs, *saga.parcels[i + 1 :]), stock=Stock.RESERVED)
    return _resend_waits(saga, now, t), _resend(replace(saga, parcels=legs))


def _not_sent_again(saga: Saga, p: ParcelLeg, intents: list[Intent], now: datetime, t: Timeouts) -> Outcome:
    """The lost parcel cannot be sent again: refunded, as any parcel that did not arrive."""
    lost = next(q for q in saga.parcels if q.name == p.replaces)
    refund = _refund(saga, min(saga.worth(lost.items), saga.unrefunded), f"parcel:{lost.name}")
    if refund:
        saga, intents = _with_refund(saga, refund), [*intents, refund]
    if saga.final:  # the order was cancelled meanwhile: this may be the last parcel its cancel waited for
        saga, more = _cancel_answered(saga, now, t)
        return _settle(saga, now, t), [*intents, *more]
    saga = _resend_waits(saga, now, t)
    if all(q.leg in ENDED and not q.releasing for q in saga.parcels):
        return _delivery_over(saga, now, t, intents)
    return saga, intents


def _replacement_booked(saga: Saga, reply: ShipmentCreated, now: datetime, t: Timeouts) -> Outcome:
    i = _again(saga, reply, (Leg.PLANNED,))
    if i is None:
        return _ignore(saga)
    saga = _with_leg(saga, i, leg=Leg.BOOKED, shipment_id=reply.shipment_id, carrier_status="created")
    return _resend_waits(saga, now, t), []


def _replacement_failed(saga: Saga, reply: ShipmentFailed, now: datetime, t: Timeouts) -> Outcome:
    """No carrier takes the parcel sent again: its units go back (the release asked again until
    inventory answers), and the lost parcel is refunded."""
    i = _again(saga, reply, (Leg.PLANNED,))
    if i is None:
        return _ignore(saga)
    p = saga.parcels[i]
    saga = _with_leg(saga, i, leg=Leg.CANCELLED, releasing=True)
    return _not_sent_again(saga, p, [_release_again(p)], now, t)


def _delivery_over(
    saga: Saga, now: datetime, t: Timeouts, intents: list[Intent]
) -> tuple[Saga, list[Intent]]:
    """Every parcel arrived or ended: delivered if anything arrived, else cancelled ``delivery_failed``."""
    if any(p.leg is Leg.DELIVERED for p in saga.parcels):
        return replace(saga, status=S.DELIVERED), intents
    saga, more = _cancel(saga, CancelReason.DELIVERY_FAILED, now, t)
    return saga, [*intents, *more]


def _parcel_left(saga: Saga, reply: ShipmentUpdated, now: datetime, t: Timeouts) -> Outcome:
    """The carrier scanned a parcel before the cancel reached shipping. The order stays cancelled
    (its refund is under way); the units are off the shelf, and someone has to get them back."""
    i = _leg_of(saga, reply)
    if i is not None and _left(saga.parcels[i]):
        return _ignore(saga)  # told already
    if i is not None and _LEG.get(reply.status) is Leg.RETURNED and saga.parcels[i].items:
        # its first news is that it came back (scans reorder): it left, and is on the shelf again
        p = saga.parcels[i]
        left: list[Intent] = [_commit(p)] if saga.stock is Stock.RESERVED else []
        saga = _with_leg(saga, i, leg=Leg.RETURNED, carrier_status=reply.status)
        saga, more = _cancel_answered(saga, now, t)
        return saga, [*left, Restock(items=list(p.items)), *more]
    detail = (
        f"the carrier took parcel {reply.tracking_number} before its cancellation reached shipping:"
        " ask for it back"
    )
    saga = replace(saga, attention=detail)
    gone = _commit(saga.parcels[i]) if i is not None else Commit()
    if i is not None:
        saga = _with_leg(saga, i, leg=Leg.LEFT, carrier_status=reply.status)
    commit: list[Intent] = [gone] if saga.stock is Stock.RESERVED else []
    if not saga.parcels:
        saga = replace(saga, parcel=Parcel.LEFT, stock=Stock.COMMITTED if commit else saga.stock)
        return _settle(saga, now, t), [*commit, RaiseAttention(step="ship", detail=detail)]
    saga, more = _cancel_answered(saga, now, t)
    return saga, [*commit, *more, RaiseAttention(step="ship", detail=detail)]


def _parcels_cancelled(saga: Saga, reply: ShipmentCancelled, now: datetime, t: Timeouts) -> Outcome:
    """Shipping's answer to a cancel: the parcels named will not leave (none named: none that had
    not left)."""
    if saga.parcel is not Parcel.CANCELLING:
        return _ignore(saga)  # told again (a resent cancel)
    ids = set(reply.shipment_ids) | ({reply.shipment_id} if reply.shipment_id else set())
    names = set(reply.parcels)
    saga, releases = _cancel_legs(
        saga,
        lambda p: (
            (not ids and not names) or len(saga.parcels) == 1 or p.shipment_id in ids or p.name in names
        ),
    )
    saga, intents = _cancel_answered(saga, now, t)
    return _settle(saga, now, t), [*releases, *intents]


def _cancel_answered(saga: Saga, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    """Once every parcel is cancelled or known to have left, no parcel is pending: the stock can go back."""
    if saga.parcel is not Parcel.CANCELLING:
        return saga, []
    if saga.parcels and not all(p.leg is Leg.CANCELLED or _left(p) for p in saga.parcels):
        return saga, []
    gone = any(_left(p) for p in saga.parcels)
    saga = replace(saga, parcel=Parcel.LEFT if gone else Parcel.CANCELLED)
    if saga.stock is Stock.RESERVED and gone and all(_left(p) for p in saga.parcels):
        saga = replace(saga, stock=Stock.COMMITTED)
    return _compensate(saga, now, t)


def _shipment_returned(saga: Saga, reply: ShipmentReturned, now: datetime, t: Timeouts) -> Outcome:
    """The return step: a parcel is back, its units go back on the shelf, and the return is refunded
    with the first (a return of items from two parcels comes back as two)."""
    i = _leg_of(saga, reply) if len(saga.parcels) > 1 else None
    if i is not None:
        if saga.parcels[i].leg is not Leg.DELIVERED or saga.status not in (RETURN.waits_in, RETURN.then):
            return _ignore(saga)  # told again, or not a parcel the customer had
        saga = _with_leg(saga, i, leg=Leg.RETURNED)
        if saga.status is RETURN.then:  # the second parcel of the return: its units only
            return saga, [Restock(items=list(reply.items))] if reply.items else []
    if saga.status is not RETURN.waits_in:
        return _ignore(saga)
    items = list(reply.items) or list(saga.return_items)
    refund = _refund(saga, saga.return_amount, "return")
    saga = replace(saga, status=RETURN.then)
    return _with_refund(saga, refund), [Restock(items=items), *([refund] if refund else [])]


# requests from people


def _cancel_requested(saga: Saga, req: CancelRequested, now: datetime, t: Timeouts) -> Outcome:
    if saga.status is S.CANCELLED:
        return _ignore(saga)  # asked twice: already done
    if saga.status not in BEFORE_SHIPMENT:
        raise Refused(
            f"the order is {saga.status}: it can no longer be cancelled; request a return after delivery"
        )
    if any(_left(p) for p in saga.parcels):
        raise Refused(
            "a parcel of the order has left with the carrier: it can no longer be cancelled;"
            " request a return after delivery"
        )
    return _cancel(saga, CancelReason(req.reason), now, t)


def _attention_resolved(saga: Saga, req: AttentionResolved, now: datetime, t: Timeouts) -> Outcome:
    if saga.attention is None:
        raise Refused("nothing about this order waits for a person")
    return replace(saga, attention=None), []


def _address_change(saga: Saga, req: AddressChangeRequested, now: datetime, t: Timeouts) -> Outcome:
    if saga.status not in BEFORE_SHIPMENT:
        raise Refused(f"the order is {saga.status}: the address can no longer be changed")
    return saga, ([ChangeShipmentAddress()] if saga.parcel in (Parcel.CREATING, Parcel.CREATED) else [])


def _return_requested(saga: Saga, req: ReturnRequested, now: datetime, t: Timeouts) -> Outcome:
    if saga.status is not S.DELIVERED:
        raise Refused(f"the order is {saga.status}: a return can be requested once it is delivered")
    if req.amount > saga.captured - saga.refund_asked:
        raise Refused("the return is worth more than is left to refund")
    saga = replace(saga, status=RETURN.waits_in, return_items=tuple(req.items), return_amount=req.amount)
    assert RETURN.command is not None
    return saga, RETURN.command(saga)


# the deadline: resend, warn, give up


def _deadline(saga: Saga, _: DeadlineReached, now: datetime, t: Timeouts) -> Outcome:
    waiting = saga.waiting_for
    if saga.deadline_at is None or waiting is None or now < saga.deadline_at:
        return _ignore(saga)  # fired early or twice
    if saga.waiting_for is Wait.CUSTOMER:  # the customer's time is up
        paying = next(s for s in STEPS if s.customer and getattr(saga, s.progress) is s.asked)
        return _cancel(saga, CancelReason(paying.customer_late), now, t)
    since = saga.waiting_since or now
    if now >= since + timedelta(seconds=t.give_up_seconds):
        if saga.waiting_for is Wait.RESEND:  # the order is with the carrier: not cancelled, put to ops
            detail = f"no answer to sending a lost parcel again since {since.isoformat()}"
            return _wait(replace(saga, attention=detail), None, now, t), [
                RaiseAttention(step="resend", detail=detail)
            ]
        if saga.waiting_for is not Wait.COMPENSATE:
            return _cancel(saga, CancelReason.SAGA_TIMEOUT, now, t)
        pending = ", ".join(type(i).__name__ for i in _pending_compensations(saga)) or "compensation"
        detail = f"no answer to {pending} since {since.isoformat()}"
        saga = _wait(replace(saga, attention=detail), None, now, t)
        return saga, [RaiseAttention(step="compensate", detail=detail)]
    intents: list[Intent] = []
    if not saga.warned and now >= since + timedelta(seconds=t.warn_seconds):
        saga = replace(saga, warned=True)
        intents.append(
            Warn(step=waiting, waiting_since=since, give_up_at=since + timedelta(seconds=t.give_up_seconds))
        )
    step = _step(saga.waiting_for)
    intents += step.command(saga) if step and step.command else _pending_compensations(saga)
    saga = replace(saga, resends=saga.resends + 1)
    return replace(saga, deadline_at=_next_look(saga, now, t)), intents


# --- compensation ---------------------------------------------------------------------------


def _stock_released(saga: Saga, reply: StockReleased, now: datetime, t: Timeouts) -> Outcome:
    """The release's answer: the stock is back, and the saga stops waiting once every compensation is.
    A release that names a parcel gave back the units of a parcel sent again that no carrier took."""
    if reply.parcel is not None:
        i = next(
            (k for k, p in enumerate(saga.parcels) if p.stock_name == reply.parcel and p.releasing), None
        )
        if i is None:
            return _ignore(saga)  # told again
        saga = _with_leg(saga, i, releasing=False)
        if saga.final:
            return _settle(saga, now, t), []
        saga = _resend_waits(saga, now, t)
        if all(q.leg in ENDED and not q.releasing for q in saga.parcels):
            return _delivery_over(saga, now, t, [])
        return saga, []
    if saga.stock is not Stock.RELEASING:
        return _ignore(saga)  # told again (a resent release)
    return _settle(replace(saga, stock=Stock.RELEASED), now, t), []


def _payment_refunded(saga: Saga, reply: PaymentRefunded, now: datetime, t: Timeouts) -> Outcome:
    if reply.refund_id in saga.refund_ids:
        return _ignore(saga)  # the same refund told twice
    saga = replace(
        saga,
        refund_ids=(*saga.refund_ids, reply.refund_id),
        refunded=saga.refunded + reply.amount,
        refunds_done=(*saga.refunds_done, reply.refund_key) if reply.refund_key else saga.refunds_done,
    )
    return _settle(saga, now, t), []


def _cancel(saga: Saga, reason: CancelReason, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    return _compensate(replace(saga, status=S.CANCELLED, reason=reason), now, t)


def _compensate(saga: Saga, now: datetime, t: Timeouts) -> tuple[Saga, list[Intent]]:
    """Undo, in reverse order of the table, every step done so far that a cancelled order must not keep."""
    intents: list[Intent] = []
    for step in reversed(STEPS):
        if step.undo is not None:
            saga, more = step.undo(saga)
            intents += more
    return _settle(saga, now, t), intents


def _pending_compensations(saga: Saga) -> list[Intent]:
    return [i for step in reversed(STEPS) if step.pending_undo for i in step.pending_undo(saga)]


def _refund(saga: Saga, amount: Any, purpose: str) -> Refund | None:
    key = f"{saga.order_id}:{purpose}"
    if amount <= 0 or any(k == key for k, _ in saga.refunds):
        return None  # one refund per purpose at most, whatever is replayed
    return Refund(amount=amount, key=key)


def _with_refund(saga: Saga, refund: Refund | None) -> Saga:
    if refund is None:
        return saga
    return replace(saga, refunds=(*saga.refunds, (refund.key, refund.amount)))


def _settle(saga: Saga, now: datetime, t: Timeouts) -> Saga:
    """Wait for outstanding compensations, or stop waiting once they are all answered."""
    if saga.status not in FINAL:
        return saga
    if _pending_compensations(saga):
        return saga if saga.waiting_for is Wait.COMPENSATE else _wait(saga, Wait.COMPENSATE, now, t)
    return _wait(saga, None, now, t)


def _from_table() -> dict[type, Callable[..., tuple[Saga, list[Intent]]]]:
    """The replies each row of the table answers to, handled by the table's rules."""
    handlers: dict[type, Callable[..., tuple[Saga, list[Intent]]]] = {}
    for step in STEPS:
        if step.command is None:
            continue  # the other side reports by itself: its replies have rules of their own, below
        handlers[step.success] = lambda saga, reply, now, t, step=step: _succeeded(step, saga, reply, now, t)
        for failure in step.failures:
            handlers[failure] = lambda saga, reply, now, t, step=step: _failed(step, saga, reply, now, t)
        for asked in step.customer:
            handlers[asked] = lambda saga, reply, now, t, step=step: _customer_asked(
                step, saga, reply, now, t
            )
    handlers[StockReleased] = _stock_released
    handlers[ShipmentCancelled] = _parcels_cancelled
    handlers[PaymentRefunded] = _payment_refunded
    handlers[ShipmentFailed] = _shipment_failed  # a failure that may answer a cancel
    handlers[ShipmentUpdated] = _shipment_updated  # the follow step
    handlers[ShipmentReturned] = _shipment_returned  # the return step
    # the resend step's replies name the parcel sent again; the others are the forward flow's
    again: list[tuple[type, Callable[..., Outcome]]] = [
        (RESEND.success, _resend_answered),
        *((f, _resend_answered) for f in RESEND.failures),
        (ShipmentCreated, _replacement_booked),
        (ShipmentFailed, _replacement_failed),
    ]
    for reply_type, handle in again:
        handlers[reply_type] = _by_parcel(handle, handlers[reply_type])
    return handlers


def _by_parcel(again: Callable[..., Outcome], first: Callable[..., Outcome]) -> Callable[..., Outcome]:
    """``again`` for a reply about a parcel sent instead of a lost one, else ``first``."""

    def handle(saga: Saga, reply: Any, now: datetime, t: Timeouts) -> Outcome:
        name = getattr(reply, "parcel", None)
        if name is not None and any(p.replaces is not None and p.name == name for p in saga.parcels):
            return again(saga, reply, now, t)
        return first(saga, reply, now, t)

    return handle


_HANDLERS: dict[type, Callable[..., tuple[Saga, list[Intent]]]] = {
    **_from_table(),
    CancelRequested: _cancel_requested,
    AddressChangeRequested: _address_change,
    AttentionResolved: _attention_resolved,
    ReturnRequested: _return_requested,
    DeadlineReached: _deadline,
}

REPLIES: frozenset[type] = frozenset(
    t
    for step in TABLE
    for t in (step.success, *step.failures, *step.customer, step.undone_by)
    if t is not None
)
"""Every message from another service that the saga follows: its subscribers are made from this."""
