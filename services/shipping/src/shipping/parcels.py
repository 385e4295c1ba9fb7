"""Shipment operations, in the caller's transaction, with the events they emit.

A cancel marks the shipment cancelled if the carrier does not have it yet (the simulation and
carrier reports then leave it alone), or remembers the order when no shipment exists yet, so that
a create command arriving after it books no parcel (``shipment.failed``, reason ``cancelled``);
either way it answers ``shipment.cancelled``. When the carrier has the parcel already, the cancel
comes too late and answers nothing new: the ``shipment.updated`` of the carrier's scan, published
before it, tells the orders saga that the parcel left.

A cancel, an address change and a carrier's report on one parcel lock its row first, so on
PostgreSQL they run one after the other as on SQLite (a report and a cancel could otherwise both
succeed).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from events import outbox
from events.db import InsertIfAbsent
from events.envelope import Envelope, Incoming
from events.logs import get_logger
from events.shipping import (
    CreateShipment,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
    ShipmentReturned,
    ShipmentUpdated,
)
from events.types import LineItem
from events.types import ShipmentStatus as St
from shipping import domain
from shipping.db import CancelledOrder, Shipment, ShipmentEvent

SERVICE = "shipping"
log = get_logger(__name__)
Cause = Incoming | Envelope[Any] | None


def _now() -> datetime:
    return datetime.now(UTC)


async def _stage(session: AsyncSession, payload: Any, order_id: str, cause: Cause) -> None:
    await outbox.stage(session, payload, service=SERVICE, subject=order_id, causation=cause)


def _created(s: Any) -> ShipmentCreated:
    return ShipmentCreated(order_id=s.order_id, shipment_id=s.shipment_id, carrier=s.carrier,
                           tracking_number=s.tracking_number, warehouse=s.warehouse, estimated_delivery=s.estimated_delivery)


# Built once: the create command and every carrier scan run these; a statement built per call (and
# the ORM's get and flush) cost SQLAlchemy more than SQLite took to run it.
_shipment, _event, _cancelled = Shipment.__table__, ShipmentEvent.__table__, CancelledOrder.__table__
# A parcel as a report reads it and the carrier endpoint answers with it (not its address).
_PARCEL = select(
    _shipment.c.shipment_id, _shipment.c.order_id, _shipment.c.warehouse, _shipment.c.carrier,
    _shipment.c.tracking_number, _shipment.c.status, _shipment.c.estimated_delivery, _shipment.c.cancelled,
    _shipment.c.return_expected, _shipment.c.return_items,
)
_BY_ORDER = _PARCEL.where(_shipment.c.order_id == bindparam("order_id"))
# Locked: a report changes the parcel (see the module's docstring).
_BY_TRACKING = _PARCEL.where(_shipment.c.tracking_number == bindparam("tracking_number")).with_for_update()
_DUE = (
    _PARCEL.where(
        _shipment.c.next_step_at.is_not(None), _shipment.c.next_step_at <= bindparam("now"),
        _shipment.c.cancelled.is_(False),
    )
    .limit(bindparam("batch"))
    .with_for_update(skip_locked=True)  # a parcel being changed right now moves at the next tick
)
_IS_CANCELLED = select(_cancelled.c.order_id).where(_cancelled.c.order_id == bindparam("order_id"))
_INSERT_SHIPMENT = insert(_shipment)
_INSERT_EVENT = insert(_event)
# A report seen before (same parcel, status and time) is a repeat: the unique key refuses it.
_record_event = InsertIfAbsent(_event)
# No values: the SET clause is the columns the parameters name.
_UPDATE = update(_shipment).where(_shipment.c.shipment_id == bindparam("key_id"))


async def by_order(session: AsyncSession, order_id: str, *, lock: bool = False) -> Shipment | None:
    """The order's shipment; ``lock``: locked for this transaction (to change it)."""
    query = select(Shipment).where(Shipment.order_id == order_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def by_tracking(session: AsyncSession, tracking_number: str) -> SimpleNamespace | None:
    """The parcel a carrier reports on, for :func:`report`."""
    row = (await session.execute(_BY_TRACKING, {"tracking_number": tracking_number})).mappings().first()
    return SimpleNamespace(**row) if row is not None else None


async def due(session: AsyncSession, now: datetime, batch: int) -> list[SimpleNamespace]:
    """The parcels, not cancelled, whose next simulated step is due, for :func:`report`."""
    rows = (await session.execute(_DUE, {"now": now, "batch": batch})).mappings().all()
    return [SimpleNamespace(**row) for row in rows]


async def unschedule(session: AsyncSession, shipment: SimpleNamespace) -> None:
    """The simulated carrier has no next step for the parcel."""
    await session.execute(_UPDATE, {"key_id": shipment.shipment_id, "next_step_at": None})


async def create(session: AsyncSession, cmd: CreateShipment, cause: Cause, *, step_seconds: float | None) -> None:
    existing = (await session.execute(_BY_ORDER, {"order_id": cmd.order_id})).first()
    if existing is not None:  # asked again: the same parcel, never a second one
        await _stage(session, _created(existing), cmd.order_id, cause)
        return
    if (await session.execute(_IS_CANCELLED, {"order_id": cmd.order_id})).first() is not None:
        await _stage(session, ShipmentFailed(order_id=cmd.order_id, reason="cancelled"), cmd.order_id, cause)
        return
    origin = cmd.warehouse_country or domain.WAREHOUSE_COUNTRY.get(cmd.warehouse, "CN")
    try:
        carrier = domain.choose_carrier(origin, cmd.address.country)
    except domain.NoCarrier:
        await _stage(session, ShipmentFailed(order_id=cmd.order_id, reason="no_carrier"), cmd.order_id, cause)
        return
    now = _now()
    shipment = SimpleNamespace(
        shipment_id=f"shp_{uuid.uuid4().hex}", order_id=cmd.order_id, warehouse=cmd.warehouse, carrier=carrier.code,
        tracking_number=domain.tracking_number(carrier), status=St.CREATED,
        estimated_delivery=domain.estimated_delivery(carrier, now.date()), address=cmd.address.model_dump(mode="json"),
        cancelled=False, return_expected=False, return_items=None,
        next_step_at=now + timedelta(seconds=step_seconds) if step_seconds else None, created_at=now, updated_at=now,
    )
    await session.execute(_INSERT_SHIPMENT, vars(shipment))  # the unique order id: never a second parcel
    await session.execute(_INSERT_EVENT, {"shipment_id": shipment.shipment_id, "status": St.CREATED, "at": now,
                                          "location": cmd.warehouse})
    await _stage(session, _created(shipment), cmd.order_id, cause)
    log.info("shipment.created", order_id=cmd.order_id, carrier=carrier.code)


async def change_address(session: AsyncSession, order_id: str, address: dict[str, Any]) -> bool:
    shipment = await by_order(session, order_id, lock=True)
    if shipment is None or shipment.status != St.CREATED:
        log.info("shipment.address_not_changed", order_id=order_id, status=shipment.status if shipment else None)
        return False
    shipment.address, shipment.updated_at = address, _now()
    return True


async def cancel(session: AsyncSession, order_id: str, cause: Cause) -> None:
    """Stop the order's parcel and answer ``shipment.cancelled``; no answer when the carrier has it
    already (too late)."""
    shipment = await by_order(session, order_id, lock=True)
    if shipment is None:
        if await session.get(CancelledOrder, order_id) is None:
            session.add(CancelledOrder(order_id=order_id, at=_now()))
    elif shipment.status == St.CREATED:  # or cancelled before: told again
        shipment.cancelled, shipment.next_step_at, shipment.updated_at = True, None, _now()
    else:
        log.warning("shipment.cancel_too_late", order_id=order_id, status=shipment.status)
        return
    answer = ShipmentCancelled(order_id=order_id, shipment_id=shipment.shipment_id if shipment else None)
    await _stage(session, answer, order_id, cause)


async def expect_return(session: AsyncSession, order_id: str, items: list[LineItem]) -> None:
    shipment = await by_order(session, order_id, lock=True)
    if shipment is None:
        raise LookupError(f"no shipment for order {order_id}")
    shipment.return_expected = True
    shipment.return_items = [i.model_dump() for i in items]


class Refused(Exception):
    pass


async def report(session: AsyncSession, shipment: SimpleNamespace, status: St, at: datetime, location: str | None,
                 *, step_seconds: float | None = None) -> bool:
    """A carrier's report (or the simulated carrier's): record it and tell the others. Returns
    False when it changes nothing (a repeat, or news the parcel is already past).

    ``shipment`` is the parcel as :func:`by_tracking` or :func:`due` read it, in this transaction;
    its status is brought up to date with the row's."""
    if shipment.cancelled:
        raise Refused("the shipment was cancelled")
    if not await _record_event(session, {"shipment_id": shipment.shipment_id, "status": status, "at": at,
                                         "location": location}):
        return False  # seen before
    if not domain.accepts(St(shipment.status), status, return_expected=shipment.return_expected):
        log.info("shipment.report_ignored", order_id=shipment.order_id, current=shipment.status, reported=status)
        return False
    now = _now()
    more = domain.next_step(status) is not None
    next_step_at = now + timedelta(seconds=step_seconds) if step_seconds and more else None
    await session.execute(_UPDATE, {"key_id": shipment.shipment_id, "status": status, "updated_at": now,
                                    "next_step_at": next_step_at})
    shipment.status = status
    await _stage(session, ShipmentUpdated(order_id=shipment.order_id, shipment_id=shipment.shipment_id, carrier=shipment.carrier,
                                          tracking_number=shipment.tracking_number, status=status, at=at, location=location),
                 shipment.order_id, None)
    if status == St.RETURNED:
        items = [LineItem(**i) for i in shipment.return_items or []]
        await _stage(session, ShipmentReturned(order_id=shipment.order_id, shipment_id=shipment.shipment_id,
                                               tracking_number=shipment.tracking_number, items=items, at=at),
                     shipment.order_id, None)
    return True
