"""The two things the orders service does to an order, each in ONE transaction with the messages
it emits: create it (HTTP or AMQP), and move its saga (a reply, a deadline, a person's request).

Both the subscribers (handlers.py), the HTTP routes (api.py) and the deadline scanner call these.
Every change names its ``actor`` (an API key's name, or ``oms/<service>`` for the saga's own
steps), recorded in the order's history. A person's request may also name a ``gateway``: the
order is then touched only if that gateway placed it, else it is treated as unknown (``None``),
so one gateway never learns of another's orders (CONTRACT §3).
"""

from __future__ import annotations

import contextlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from chassis import inbox, outbox
from chassis.db import InsertIfAbsent, rowcount, table
from chassis.logs import get_logger
from events import inventory, notifications, payments, shipping
from events.envelope import Cause, utcnow
from events.names import source
from events.orders import (
    Address,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderNeedsAttention,
    OrderPaid,
    OrderPlaced,
    OrderStatusChanged,
    PlaceOrder,
)
from events.types import LineItem, OrderStatus, PricedLine
from orders import saga as flow
from orders import saga_state as state
from orders.admission import Admission
from orders.config import Settings
from orders.db import IdempotencyKey, Order, OrderHistory, OrderLine, OrderParcel
from orders.domain import order_total, request_fingerprint, return_value
from orders.saga_state import projection

SERVICE = "orders"
SELF = source(SERVICE)  # the actor of what the saga does on its own (a deadline)
log = get_logger(__name__)
_METRICS: dict[str, Counter] = {}


def _saga_warnings() -> Counter:
    """Sagas that waited past the warning (``saga.Warn``), by step: ``saga_timeout`` comes next."""
    if not _METRICS:  # once per process: the default registry refuses a second registration
        _METRICS["warnings"] = Counter("oms_saga_warnings", "Saga steps waiting past the warning", ["step"])
    return _METRICS["warnings"]


class KeyReused(Exception):
    """The Idempotency-Key was used before with another body (422)."""


class KeyInProgress(Exception):
    """The first request with this Idempotency-Key is still being handled (409)."""


class DeadlineFailed(Exception):
    """Feeding a due deadline to the order's saga failed (its transaction rolled back)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(order_id)
        self.order_id = order_id


@dataclass(frozen=True)
class Placed:
    order_id: str
    created: bool  # False: the same request again, answered with the order it made


_now = utcnow
_stage = outbox.stager(SERVICE, correlate_by_subject=True)


# --- creating an order ------------------------------------------------------------------------


async def place_order(
    sessions: async_sessionmaker,
    request: PlaceOrder,
    *,
    key: str,
    actor: str,
    settings: Settings,
    cause: Cause = None,
    admission: Admission | None = None,
) -> Placed:
    """Create the order once per key and actor. A first short transaction claims the key (so a
    concurrent duplicate sees it "in progress"); a second creates the order and everything it emits.
    ``actor`` is the gateway placing it: the order is its own, and the key is scoped to it (another
    gateway's same key is another order).

    With ``admission``, a new key is refused (:class:`Overloaded`, nothing stored) while the door is
    closed; a key seen before is answered as always, so a gateway that lost its answer gets it."""
    fingerprint = request_fingerprint(request)
    key = f"{actor}:{key}"
    now = _now()
    admitted = False  # let in by the door: it counts the order until its key is stored
    try:
        try:
            async with sessions.begin() as session:
                existing = (await session.execute(_KEY, {"key": key})).first()
                if existing is None and admission is not None:
                    await admission.check(session, now)
                    admitted = True
                if existing is not None:
                    if existing.fingerprint != fingerprint:
                        raise KeyReused(key)
                    if existing.state == "done":
                        return Placed(existing.order_id, created=False)
                    if now - existing.created_at < timedelta(seconds=settings.idempotency_abandoned_seconds):
                        raise KeyInProgress(key)
                    # The first attempt died half-way: take it over, unless another request just did
                    # (compare-and-set on the claim it saw), so a key never makes two orders.
                    taken = await session.execute(
                        _TAKE_OVER, {"key_key": key, "seen": existing.created_at, "created_at": now}
                    )
                    if taken.rowcount != 1:
                        raise KeyInProgress(key)
                else:
                    await session.execute(
                        _INSERT_KEY,
                        {
                            "key": key,
                            "fingerprint": fingerprint,
                            "state": "in_progress",
                            "order_id": None,
                            "created_at": now,
                        },
                    )
        except IntegrityError as exc:  # a concurrent request claimed the key first
            raise KeyInProgress(key) from exc
        if admission is not None and admitted:  # stored in progress: every replica's door counts it
            admitted = False
            admission.settled()

        order_id = f"ord_{uuid.uuid4().hex}"
        async with sessions.begin() as session:
            if cause is not None and not await inbox.claim(session, cause.id, "orders.place_order"):
                claim = (await session.execute(_KEY, {"key": key})).first()
                return Placed(claim.order_id or "", created=False)
            # Only the request holding the claim makes the order: one taken over meanwhile does not.
            mine = await session.execute(
                _FINISH_KEY, {"key_key": key, "claimed_at": now, "order_id": order_id}
            )
            if mine.rowcount != 1:
                raise KeyInProgress(key)
            await _create(session, order_id, request, actor=actor, settings=settings, cause=cause, now=now)
        log.info("order.placed", order_id=order_id, channel=request.channel, total=str(order_total(request)))
        return Placed(order_id, created=True)
    finally:
        if admission is not None and admitted:
            admission.settled()


# Prebuilt Core statements, executed with parameters: see docs/operations.md, "Prebuilt statements
# on the message paths".
_orders, _lines, _history, _keys = (
    table(Order),
    table(OrderLine),
    table(OrderHistory),
    table(IdempotencyKey),
)
_KEY = select(_keys).where(_keys.c.key == bindparam("key"))
_INSERT_KEY = insert(_keys)
_TAKE_OVER = update(_keys).where(
    _keys.c.key == bindparam("key_key"),
    _keys.c.state == "in_progress",
    _keys.c.created_at == bindparam("seen"),
)  # SET: the columns the parameters name
_FINISH_KEY = (
    update(_keys)
    .where(
        _keys.c.key == bindparam("key_key"),
        _keys.c.state == "in_progress",
        _keys.c.created_at == bindparam("claimed_at"),
    )
    .values(state="done", order_id=bindparam("order_id"))
)
_INSERT_ORDER = insert(_orders)
_INSERT_LINES = insert(_lines)


async def _create(
    session: AsyncSession,
    order_id: str,
    request: PlaceOrder,
    *,
    actor: str,
    settings: Settings,
    cause: Cause,
    now: datetime,
) -> None:
    total = order_total(request)
    prices = tuple({line.sku: line.unit_price for line in reversed(request.items)}.items())
    saga, intents = flow.start(
        order_id=order_id,
        total=total,
        currency=request.currency,
        now=now,
        timeouts=settings.timeouts,
        prices=prices,
    )
    row = {
        "id": order_id,
        "customer_id": request.customer.id,
        "gateway": actor,
        "channel": request.channel,
        "currency": request.currency,
        "total": total,
        "customer": request.customer.model_dump(mode="json"),
        "shipping_address": request.shipping_address.model_dump(mode="json"),
        "payment_method": request.payment.method,
        "payment_token": request.payment.token,
        "shipment": None,
        **projection(saga),
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    lines = [
        {
            "order_id": order_id,
            "position": i,
            "sku": line.sku,
            "quantity": line.quantity,
            "unit_price": line.unit_price,
        }
        for i, line in enumerate(request.items)
    ]
    # The order, its lines and its first history row, a statement each.
    await session.execute(_INSERT_ORDER, row)
    await session.execute(_INSERT_LINES, lines)
    await session.execute(
        _INSERT_HISTORY,
        {
            "order_id": order_id,
            "status": saga.status,
            "reason": None,
            "at": now,
            "actor": actor,
            "note": None,
        },
    )
    order = SimpleNamespace(**row, lines=[SimpleNamespace(**line) for line in lines])
    customer = request.customer
    await _stage(
        session,
        OrderPlaced(
            order_id=order_id,
            customer_id=customer.id,
            channel=request.channel,
            currency=request.currency,
            total=total,
            items=[
                PricedLine(sku=i.sku, quantity=i.quantity, unit_price=i.unit_price) for i in request.items
            ],
            country=request.shipping_address.country,
            placed_at=now,
        ),
        order_id,
        cause,
    )
    await _stage(
        session,
        OrderStatusChanged(
            order_id=order_id, customer_id=customer.id, from_status=None, to_status=saga.status, at=now
        ),
        order_id,
        cause,
    )
    await _stage(
        session,
        notifications.RegisterRecipient(
            order_id=order_id,
            customer_id=customer.id,
            name=customer.name,
            email=customer.email,
            phone=customer.phone,
            locale=customer.locale,
        ),
        order_id,
        cause,
    )
    for intent in intents:
        await _stage(session, _command(order, saga, intent), order_id, cause)


# --- moving the saga --------------------------------------------------------------------------


async def apply(
    sessions: async_sessionmaker,
    order_id: str,
    reply: object,
    *,
    actor: str,
    settings: Settings,
    gateway: str | None = None,
    note: str | None = None,
    recorded_as: str | None = None,
    cause: Cause = None,
    consumer: str | None = None,
    before: Any = None,
    session: AsyncSession | None = None,
) -> SimpleNamespace | None:
    """Feed one reply, deadline or request to the order's saga, and save the outcome with the
    commands and events it emits. Raises ``saga.Refused`` for a request not allowed now.

    Returns the order's row as saved (its columns as attributes), or None for an order that is
    not ours, not ``gateway``'s (when given), or a message seen before. ``before(order)`` may
    change it first, in the same transaction (an address change); like every change here, by
    assigning a new value, never by changing a dict or list in place (only what compares unequal
    to the loaded row is written). A request that leaves the status as it is still gets a history
    row when ``recorded_as`` names it (the status repeated, with that reason), so every person's
    change is in the history with its actor and ``note``. With ``session``, in the caller's
    transaction.
    """
    now = _now()
    async with contextlib.nullcontext(session) if session is not None else sessions.begin() as session:
        if cause is not None and consumer is not None and not await inbox.claim(session, cause.id, consumer):
            return None
        # One row read and what changed written back, with prebuilt statements (not the ORM).
        loaded = (await session.execute(_LOAD, {"order_id": order_id})).mappings().first()
        if loaded is None:
            log.info("saga.unknown_order", order_id=order_id, reply=type(reply).__name__)
            return None
        if gateway is not None and loaded["gateway"] != gateway:
            return None  # another gateway's order: as if it did not exist
        order = SimpleNamespace(**loaded)
        old = state.Saga.from_dict(order.saga)
        new, intents = flow.advance(old, reply, now=now, timeouts=settings.timeouts)
        if before is not None:
            before(order)
        if isinstance(reply, SHIPPING_NEWS):
            await _new_parcel(session, order, reply)
            order.shipment = parcels_summary(order.shipment, reply, now)
        if new.ignored > old.ignored:
            log.info("saga.reply_ignored", order_id=order_id, reply=type(reply).__name__, status=old.status)
        if old.attention is not None and new.attention is None:  # resolved by a person
            log.warning("order.attention_resolved", order_id=order_id, was=order.attention, actor=actor)
        _project(order, new, now)
        history: list[dict[str, Any]] = []
        if new.status != old.status:
            previous = old.status
            for status in flow.passed_through(old.status, new.status):
                await _status_changed(session, order, history, previous, status, new, now, cause)
                previous = status
        elif recorded_as is not None:
            history.append({"order_id": order_id, "status": order.status, "reason": recorded_as, "at": now})
        for row in history:
            row.update(actor=actor, note=note)
        if any(isinstance(intent, NEEDS_LINES) for intent in intents):
            order.lines = (await session.execute(_LINES, {"order_id": order_id})).all()
        for intent in intents:
            if isinstance(intent, state.Warn):
                _saga_warnings().labels(intent.step).inc()
                log.warning(
                    "saga.deadline_near",
                    order_id=order_id,
                    step=intent.step,
                    waiting_since=intent.waiting_since.isoformat(),
                    gives_up_at=intent.give_up_at.isoformat(),
                )
            elif isinstance(intent, state.RaiseAttention):
                await _stage(
                    session,
                    OrderNeedsAttention(order_id=order_id, step=intent.step, detail=intent.detail),
                    order_id,
                    cause,
                )
                log.error("saga.needs_attention", order_id=order_id, detail=intent.detail)
            else:
                await _stage(session, _command(order, new, intent), order_id, cause)
        await _save(session, loaded, order)
        if history:
            await session.execute(_INSERT_HISTORY, history)
        return order


_LOAD = select(_orders).where(_orders.c.id == bindparam("order_id"))
_LINES = (
    select(_lines.c.sku, _lines.c.quantity)
    .where(_lines.c.order_id == bindparam("order_id"))
    .order_by(_lines.c.position)
)
# No values: the SET clause is the columns the parameters name, those that changed.
_UPDATE = update(_orders).where(
    _orders.c.id == bindparam("key_id"), _orders.c.version == bindparam("key_version")
)
_INSERT_HISTORY = insert(_history)


async def _save(session: AsyncSession, loaded: Any, order: SimpleNamespace) -> None:
    """Write back the columns that changed, if nobody saved the order since it was loaded: the
    same optimistic concurrency as the ORM's ``version_id_col``, and the same StaleDataError."""
    changed = {k: v for k, v in vars(order).items() if k in loaded and loaded[k] != v}
    version = loaded["version"]
    result = await session.execute(
        _UPDATE, {**changed, "version": version + 1, "key_id": order.id, "key_version": version}
    )
    if rowcount(result) != 1:
        raise StaleDataError(f"order {order.id} was saved by someone else since version {version} was loaded")


async def _status_changed(
    session: AsyncSession,
    order: Any,
    history: list[dict[str, Any]],
    from_status: Any,
    to_status: Any,
    new: state.Saga,
    now: datetime,
    cause: Cause,
) -> None:
    reason = new.reason if to_status == new.status else None
    history.append({"order_id": order.id, "status": to_status, "reason": reason, "at": now})
    oid = order.id
    await _stage(
        session,
        OrderStatusChanged(
            order_id=oid,
            customer_id=order.customer_id,
            from_status=from_status,
            to_status=to_status,
            reason=reason,
            at=now,
        ),
        oid,
        cause,
    )
    specific = {
        OrderStatus.CONFIRMED: lambda: OrderConfirmed(order_id=oid),
        OrderStatus.PAID: lambda: OrderPaid(order_id=oid, amount=new.captured, currency=order.currency),
        OrderStatus.CANCELLED: lambda: OrderCancelled(order_id=oid, reason=new.reason),
        OrderStatus.DELIVERED: lambda: OrderDelivered(order_id=oid, delivered_at=now),
    }.get(to_status)
    if specific is not None:
        await _stage(session, specific(), oid, cause)
    log.info(
        "order.status_changed", order_id=oid, from_status=from_status, to_status=to_status, reason=reason
    )


def parcels_summary(shipment: dict[str, Any] | None, reply: Any, now: datetime) -> dict[str, Any]:
    """The order's record of its parcels, one per parcel as shipping reports them (a new value:
    the row is written only when it compares unequal). ``{"parcels": [...]}``, each with its
    carrier, tracking number and link, status (and since when), estimate, items and trail (the
    console's search finds each tracking number in ``order_parcel``)."""
    parcels = [dict(p) for p in (shipment or {}).get("parcels", [])]
    mine = next((p for p in parcels if p["shipment_id"] == reply.shipment_id), None)
    if mine is None:
        mine = {
            "shipment_id": reply.shipment_id,
            "parcel": getattr(reply, "parcel", None),
            "warehouse": getattr(reply, "warehouse", None),
            "carrier": getattr(reply, "carrier", None),
            "tracking_number": reply.tracking_number,
            "tracking_url": None,
            "status": "created",
            "status_since": now.isoformat(),
            "estimated_delivery": None,
            "items": [],
            "events": [],
        }
        parcels.append(mine)
    match reply:
        case shipping.ShipmentCreated():
            mine.update(
                parcel=reply.parcel,
                warehouse=reply.warehouse,
                carrier=reply.carrier,
                tracking_url=reply.tracking_url,
                estimated_delivery=reply.estimated_delivery.isoformat(),
                items=[i.model_dump(mode="json") for i in reply.items],
            )
            if not mine["events"]:
                mine["events"] = [{"at": now.isoformat(), "status": "created", "location": reply.warehouse}]
        case shipping.ShipmentUpdated():
            scan = {"at": reply.at.isoformat(), "status": reply.status, "location": reply.location}
            if scan not in mine["events"]:
                mine["events"] = sorted([*mine["events"], scan], key=lambda e: e["at"])
            if mine["status"] != reply.status:
                mine.update(status=reply.status, status_since=now.isoformat())
            if reply.estimated_delivery:
                mine["estimated_delivery"] = reply.estimated_delivery.isoformat()
        case shipping.ShipmentReturned():
            mine.update(status="returned", status_since=now.isoformat())
    return {"parcels": parcels}


_record_parcel = InsertIfAbsent(table(OrderParcel))


async def _new_parcel(session: AsyncSession, order: Any, reply: object) -> None:
    """A parcel the order did not know yet: its tracking number is recorded for the search."""
    number = getattr(reply, "tracking_number", None)
    if not isinstance(reply, shipping.ShipmentCreated | shipping.ShipmentUpdated) or not number:
        return
    if any(p.get("tracking_number") == number for p in (order.shipment or {}).get("parcels", [])):
        return
    await _record_parcel(session, {"tracking_number": number, "order_id": order.id})


SHIPPING_NEWS = (shipping.ShipmentCreated, shipping.ShipmentUpdated, shipping.ShipmentReturned)
"""The replies whose tracking details the order's ``shipment`` column records for the customer."""


def _project(order: SimpleNamespace, saga: state.Saga, now: datetime) -> None:
    """Write the saga's new state into the order's row: its JSON, and the columns projected from it
    (``saga_state.projection``). The only place a saga step changes those columns."""
    vars(order).update(projection(saga), updated_at=now)
    if saga.payment in (state.Pay.CAPTURED, state.Pay.FAILED) or saga.final:
        order.payment_token = None  # decided, or the order is over: the token is of no more use


NEEDS_LINES = (state.Reserve, state.CreateShipment)  # the intents whose command lists the order's items


def _command(order: Any, saga: state.Saga, intent: object) -> Any:
    """An intent of the saga as the command another service takes, with the order's data."""
    oid = order.id
    address = order.shipping_address

    def items() -> list[LineItem]:  # NEEDS_LINES: loaded for these only
        return [LineItem(sku=line.sku, quantity=line.quantity) for line in order.lines]

    match intent:
        case state.Reserve(parcel=parcel, items=held):
            return inventory.ReserveStock(
                order_id=oid,
                items=list(held) if held else items(),
                country=address["country"],
                latitude=address.get("latitude"),
                longitude=address.get("longitude"),
                parcel=parcel,
            )
        case state.Release(warehouses=warehouses, parcel=parcel):
            return inventory.ReleaseStock(
                order_id=oid,
                reason=saga.reason or "released",
                warehouses=list(warehouses) if warehouses is not None else None,
                parcel=parcel,
            )
        case state.Commit(warehouse=warehouse, parcel=parcel):
            return inventory.CommitStock(order_id=oid, warehouse=warehouse, parcel=parcel)
        case state.Restock(items=returned):
            return inventory.RestockItems(order_id=oid, items=returned)
        case state.Capture():
            if not order.payment_token and order.payment_method == "card":
                raise RuntimeError(f"order {oid} has no payment token left to capture with")
            return payments.CapturePayment(
                order_id=oid,
                amount=order.total,
                currency=order.currency,
                method=order.payment_method,
                token=order.payment_token,
            )
        case state.CancelPayment():
            return payments.CancelPayment(order_id=oid, reason=saga.reason or "cancelled")
        case state.Refund(amount=amount, key=key):
            return payments.RefundPayment(
                order_id=oid, amount=amount, reason=saga.reason or "return", refund_key=key
            )
        case state.CreateShipment(warehouse=warehouse, parcel=parcel, items=held, replaces=replaces):
            return shipping.CreateShipment(
                order_id=oid,
                warehouse=warehouse,
                parcel=parcel,
                address=Address(**address),
                items=list(held) if held else items(),
                replaces=replaces,
            )
        case state.CancelShipment():
            return shipping.CancelShipment(order_id=oid, reason=saga.reason or "cancelled")
        case state.ChangeShipmentAddress():
            return shipping.ChangeShipmentAddress(order_id=oid, address=Address(**address))
        case state.ExpectReturn(items=returned):
            return shipping.ExpectReturn(order_id=oid, items=returned)
    raise TypeError(f"no command for {intent!r}")


async def waiting_long(sessions: async_sessionmaker, *, settings: Settings, limit: int = 50) -> list[Any]:
    """Orders whose saga has waited for one answer past the warning: ``saga_timeout`` comes next."""
    since = _now() - timedelta(seconds=settings.saga_warning_seconds)
    async with sessions() as session:
        rows = await session.execute(
            select(Order.id, Order.status, Order.waiting_since)
            .where(Order.waiting_since.is_not(None), Order.waiting_since <= since)
            .order_by(Order.waiting_since)
            .limit(limit)
        )
        return list(rows)


_DUE_DEADLINE = (
    select(_orders.c.id, _orders.c.deadline_at)
    .where(_orders.c.deadline_at <= bindparam("now"), _orders.c.id.not_in(bindparam("skip", expanding=True)))
    .order_by(_orders.c.deadline_at)
    .limit(1)
    .with_for_update(skip_locked=True)
)


async def fire_deadline(
    sessions: async_sessionmaker, *, settings: Settings, skip: frozenset[str] = frozenset()
) -> str | None:
    """Claim one order whose saga deadline has passed and feed its saga ``DeadlineReached``, in one
    transaction; returns its id, or None when no deadline is due (``skip``: ids not to claim).

    The claim is the row's lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), held until the saga's
    new state commits: replicas scanning at once each take another order, so a deadline fires
    once; a replica that dies mid-way loses its connection, the transaction rolls back and the
    deadline is due again for the others. (SQLite has no row locks, and one writer at a time.)"""
    async with sessions.begin() as session:
        due = (await session.execute(_DUE_DEADLINE, {"now": _now(), "skip": list(skip)})).first()
        if due is None:
            return None
        try:
            await apply(
                sessions, due.id, state.DeadlineReached(), actor=SELF, settings=settings, session=session
            )
        except Exception as exc:
            raise DeadlineFailed(due.id) from exc
    log.info("saga.deadline_fired", order_id=due.id, deadline_at=due.deadline_at.isoformat())
    return due.id


# --- a person's requests (the API and the ops console) ------------------------------------------


async def cancel(
    sessions: async_sessionmaker,
    order_id: str,
    *,
    actor: str,
    settings: Settings,
    gateway: str | None = None,
    note: str | None = None,
) -> SimpleNamespace | None:
    """Until shipped: cancelled, stock released, payment refunded (``saga.Refused`` from then on)."""
    return await apply(
        sessions,
        order_id,
        state.CancelRequested(),
        actor=actor,
        gateway=gateway,
        note=note,
        settings=settings,
    )


async def change_address(
    sessions: async_sessionmaker,
    order_id: str,
    address: Address,
    *,
    actor: str,
    settings: Settings,
    gateway: str | None = None,
    note: str | None = None,
) -> SimpleNamespace | None:
    """A new shipping address until shipped (``saga.Refused`` from then on)."""

    def set_address(order: Any) -> None:
        order.shipping_address = address.model_dump(mode="json")

    return await apply(
        sessions,
        order_id,
        state.AddressChangeRequested(),
        actor=actor,
        gateway=gateway,
        note=note,
        recorded_as="address_changed",
        settings=settings,
        before=set_address,
    )


async def request_return(
    sessions: async_sessionmaker,
    order_id: str,
    items: list[LineItem],
    *,
    actor: str,
    settings: Settings,
    gateway: str | None = None,
    note: str | None = None,
) -> SimpleNamespace | None:
    """After delivery: the parcel is expected back; ``domain.ReturnRefused`` for items the order
    does not have (or more of them than it has)."""
    async with sessions() as session:
        loaded = (await session.execute(_LOAD, {"order_id": order_id})).mappings().first()
        if loaded is None or (gateway is not None and loaded["gateway"] != gateway):
            return None
        lines = (await session.execute(_PRICED_LINES, {"order_id": order_id})).mappings().all()
    amount = return_value([dict(line) for line in lines], items)
    return await apply(
        sessions,
        order_id,
        state.ReturnRequested(items=list(items), amount=amount),
        actor=actor,
        gateway=gateway,
        note=note,
        settings=settings,
    )


_PRICED_LINES = (
    select(_lines.c.sku, _lines.c.quantity, _lines.c.unit_price)
    .where(_lines.c.order_id == bindparam("order_id"))
    .order_by(_lines.c.position)
)


async def resolve_attention(
    sessions: async_sessionmaker,
    order_id: str,
    *,
    actor: str,
    settings: Settings,
    note: str | None = None,
) -> SimpleNamespace | None:
    """A person handled what the saga marked for attention (``saga.Refused`` when nothing waits)."""
    return await apply(
        sessions,
        order_id,
        state.AttentionResolved(),
        actor=actor,
        note=note,
        recorded_as="attention_resolved",
        settings=settings,
    )


WITH_CARRIER = (OrderStatus.PICKING, OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT)


async def stuck_parcels(
    sessions: async_sessionmaker, *, settings: Settings, limit: int = 50, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Orders with a parcel that has stayed in one carrier status past ``parcel_stuck_after_seconds``
    (a failed attempt nobody retried, a parcel the carrier never collected or stopped scanning)."""
    before = (now or _now()) - timedelta(seconds=settings.parcel_stuck_after_seconds)
    return await _parcels_where(sessions, lambda p: datetime.fromisoformat(p["status_since"]) < before, limit)


async def delivery_exceptions(sessions: async_sessionmaker, *, limit: int = 50) -> list[dict[str, Any]]:
    """Orders with a parcel whose last delivery attempt failed (the carrier's ``exception``): ops
    see them at once, the customer was told, the carrier tries again."""
    return await _parcels_where(sessions, lambda p: p["status"] == "exception", limit)


async def _parcels_where(sessions: async_sessionmaker, wanted: Any, limit: int) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(
            select(Order.id, Order.status, Order.shipment)
            .where(Order.status.in_(WITH_CARRIER))
            .order_by(Order.updated_at)
            .limit(limit * 20)
        )
        found = []
        for order_id, status, shipment in rows:
            for p in (shipment or {}).get("parcels", []):
                if p["status"] not in ("delivered", "returned", "lost") and wanted(p):
                    found.append(
                        {
                            "id": order_id,
                            "status": status,
                            "since": p["status_since"],
                            "attention": None,
                            "parcel": p["tracking_number"],
                            "parcel_status": p["status"],
                        }
                    )
                    break
        return found[:limit]


# -- reading orders as the API and the console show them ----------------------------------------

_ORDER_LINES = (
    select(_lines)
    .where(_lines.c.order_id.in_(bindparam("ids", expanding=True)))
    .order_by(_lines.c.order_id, _lines.c.position)
)
_ORDER_HISTORY = (
    select(_history).where(_history.c.order_id.in_(bindparam("ids", expanding=True))).order_by(_history.c.id)
)


async def read(session: AsyncSession, query: Select[Any]) -> list[SimpleNamespace]:
    """The orders ``query`` selects (a ``select(Order)`` with its filters, order and limit), held as
    every operation here holds an order: its columns as attributes, with its ``lines`` and
    ``history``. Three statements, whatever the number of orders."""
    rows = (await session.execute(query.with_only_columns(*_orders.c))).mappings().all()
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    lines: defaultdict[str, list[SimpleNamespace]] = defaultdict(list)
    history: defaultdict[str, list[SimpleNamespace]] = defaultdict(list)
    for line in (await session.execute(_ORDER_LINES, {"ids": ids})).mappings():
        lines[line["order_id"]].append(SimpleNamespace(**line))
    for entry in (await session.execute(_ORDER_HISTORY, {"ids": ids})).mappings():
        history[entry["order_id"]].append(SimpleNamespace(**entry))
    return [SimpleNamespace(**row, lines=lines[row["id"]], history=history[row["id"]]) for row in rows]


async def read_one(session: AsyncSession, order_id: str) -> SimpleNamespace | None:
    found = await read(session, select(_orders).where(_orders.c.id == order_id))
    return found[0] if found else None
