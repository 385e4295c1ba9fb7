"""Shipment operations, in the caller's transaction, with the events they emit; and the simulated
carrier of local runs (``simulation``), which reports its scans through the same ``report``.

An order has one parcel per warehouse its stock came from (``parcel``: the order's name for it),
and one more for each parcel sent again. A cancel marks every parcel of the order cancelled that
the carrier does not have yet (the simulation and carrier reports then leave it alone), or
remembers the order when no shipment exists yet, so that a create command arriving after it books
no parcel (``shipment.failed``, reason ``cancelled``); it answers ``shipment.cancelled`` naming
the parcels that will not leave. When the carrier has a parcel already, the cancel comes too late
for it and answers nothing new for it: the ``shipment.updated`` of the carrier's scan, published
before it, tells the orders saga that the parcel left.

A cancel, an address change and a carrier's report on one parcel lock its row first, so on
PostgreSQL they run one after the other as on SQLite (a report and a cancel could otherwise both
succeed).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chassis import outbox
from chassis.db import InsertIfAbsent, held, held_first, table
from chassis.logs import get_logger
from chassis.tasks import background
from events.envelope import Cause, utcnow
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
from shipping import carriers, domain
from shipping.db import CancelledOrder, Shipment, ShipmentEvent

SERVICE = "shipping"
log = get_logger(__name__)
_now = utcnow
_stage = outbox.stager(SERVICE)


def _tracking_url(carrier_code: str, tracking_number: str) -> str | None:
    carrier = domain.BY_CODE.get(carrier_code)
    return carrier.track_url.format(tracking_number) if carrier and carrier.track_url else None


def _created(s: Any) -> ShipmentCreated:
    return ShipmentCreated(
        order_id=s.order_id,
        shipment_id=s.shipment_id,
        carrier=s.carrier,
        parcel=s.parcel,
        tracking_number=s.tracking_number,
        warehouse=s.warehouse,
        estimated_delivery=s.estimated_delivery,
        items=[LineItem(**i) for i in s.items or []],
        tracking_url=_tracking_url(s.carrier, s.tracking_number),
        replaces=s.replaces,
    )


# Prebuilt Core statements for the create command and every carrier scan: see docs/operations.md,
# "Prebuilt statements on the message paths".
_shipment, _event, _cancelled = table(Shipment), table(ShipmentEvent), table(CancelledOrder)
# A parcel as a report reads it and the carrier endpoint answers with it (not its address).
_PARCEL = select(
    _shipment.c.shipment_id,
    _shipment.c.order_id,
    _shipment.c.parcel,
    _shipment.c.warehouse,
    _shipment.c.carrier,
    _shipment.c.tracking_number,
    _shipment.c.status,
    _shipment.c.estimated_delivery,
    _shipment.c.cancelled,
    _shipment.c.return_expected,
    _shipment.c.return_items,
    _shipment.c["items"],
    _shipment.c.replaces,
)
_BY_PARCEL = _PARCEL.where(
    _shipment.c.order_id == bindparam("order_id"), _shipment.c.parcel == bindparam("parcel")
)
# Locked: a report changes the parcel (see the module's docstring).
_BY_TRACKING = _PARCEL.where(_shipment.c.tracking_number == bindparam("tracking_number")).with_for_update()
_DUE = (
    _PARCEL.where(
        _shipment.c.next_step_at.is_not(None),
        _shipment.c.next_step_at <= bindparam("now"),
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


_OF_ORDER = (
    select(_shipment)
    .where(_shipment.c.order_id == bindparam("order_id"))
    .order_by(_shipment.c.created_at, _shipment.c.shipment_id)
)
_OF_ORDER_LOCKED = _OF_ORDER.with_for_update()
_BY_ID = select(_shipment).where(_shipment.c.shipment_id == bindparam("shipment_id"))
_remember_cancelled = InsertIfAbsent(_cancelled)


async def of_order(session: AsyncSession, order_id: str, *, lock: bool = False) -> list[SimpleNamespace]:
    """The order's parcels, first booked first; ``lock``: locked for this transaction (to change them)."""
    return held(await session.execute(_OF_ORDER_LOCKED if lock else _OF_ORDER, {"order_id": order_id}))


async def by_order(session: AsyncSession, order_id: str, *, lock: bool = False) -> SimpleNamespace | None:
    """The order's first parcel."""
    found = await of_order(session, order_id, lock=lock)
    return found[0] if found else None


async def by_id(session: AsyncSession, shipment_id: str) -> SimpleNamespace | None:
    return held_first(await session.execute(_BY_ID, {"shipment_id": shipment_id}))


async def _change(session: AsyncSession, shipment: SimpleNamespace, **values: Any) -> None:
    """Write ``values`` to the parcel's row, and to the row as held here."""
    for name, value in values.items():
        setattr(shipment, name, value)
    await session.execute(_UPDATE, {"key_id": shipment.shipment_id, **values})


async def trail(session: AsyncSession, shipment_id: str) -> list[dict[str, Any]]:
    """The parcel's tracking trail, oldest first: ``at``, ``status``, ``location``."""
    rows = await session.execute(
        select(ShipmentEvent.at, ShipmentEvent.status, ShipmentEvent.location)
        .where(ShipmentEvent.shipment_id == shipment_id)
        .order_by(ShipmentEvent.at, ShipmentEvent.id)
    )
    return [{"at": r.at.isoformat(), "status": r.status, "location": r.location} for r in rows]


async def by_tracking(session: AsyncSession, tracking_number: str) -> SimpleNamespace | None:
    """The parcel a carrier reports on, for :func:`report`."""
    return held_first(await session.execute(_BY_TRACKING, {"tracking_number": tracking_number}))


async def due(session: AsyncSession, now: datetime, batch: int) -> list[SimpleNamespace]:
    """The parcels, not cancelled, whose next simulated step is due, for :func:`report`."""
    return held(await session.execute(_DUE, {"now": now, "batch": batch}))


async def unschedule(session: AsyncSession, shipment: SimpleNamespace) -> None:
    """The simulated carrier has no next step for the parcel."""
    await session.execute(_UPDATE, {"key_id": shipment.shipment_id, "next_step_at": None})


async def create(
    session: AsyncSession,
    cmd: CreateShipment,
    cause: Cause,
    *,
    adapters: dict[str, carriers.CarrierAdapter],
    step_seconds: float | None,
) -> None:
    """Book the parcel with a carrier that serves its route (warehouse → address)."""
    name = cmd.parcel or cmd.warehouse
    existing = (await session.execute(_BY_PARCEL, {"order_id": cmd.order_id, "parcel": name})).first()
    if existing is not None:  # asked again: the same parcel, never a second one
        await _stage(session, _created(existing), cmd.order_id, cause)
        return
    if (await session.execute(_IS_CANCELLED, {"order_id": cmd.order_id})).first() is not None:
        await _stage(
            session,
            ShipmentFailed(order_id=cmd.order_id, reason="cancelled", parcel=name),
            cmd.order_id,
            cause,
        )
        return
    origin = cmd.warehouse_country or domain.WAREHOUSE_COUNTRY.get(cmd.warehouse, "CN")
    try:
        carrier = domain.choose_carrier(origin, cmd.address.country)
    except domain.NoCarrier:
        await _stage(
            session,
            ShipmentFailed(order_id=cmd.order_id, reason="no_carrier", parcel=name),
            cmd.order_id,
            cause,
        )
        return
    lost = None
    if cmd.replaces:  # the customer is told which parcel this one is sent instead of
        lost = (await session.execute(_BY_PARCEL, {"order_id": cmd.order_id, "parcel": cmd.replaces})).first()
    now = _now()
    address = cmd.address.model_dump(mode="json")
    booking = await adapters[carrier.code].book(  # before the commit: a retry books by the same reference
        reference=domain.booking_reference(cmd.order_id, name),
        order_id=cmd.order_id,
        from_country=origin,
        address=address,
        today=now.date(),
    )
    shipment = SimpleNamespace(
        shipment_id=f"shp_{uuid.uuid4().hex}",
        order_id=cmd.order_id,
        parcel=name,
        warehouse=cmd.warehouse,
        carrier=carrier.code,
        tracking_number=booking.tracking_number,
        status=St.CREATED,
        estimated_delivery=booking.estimated_delivery,
        address=address,
        cancelled=False,
        return_expected=False,
        return_items=None,
        items=[i.model_dump() for i in cmd.items],
        next_step_at=now + timedelta(seconds=step_seconds) if step_seconds else None,
        created_at=now,
        updated_at=now,
        status_since=now,
        replaces=lost.tracking_number if lost is not None else None,
    )
    await session.execute(_INSERT_SHIPMENT, vars(shipment))  # the unique order id: never a second parcel
    await session.execute(
        _INSERT_EVENT,
        {"shipment_id": shipment.shipment_id, "status": St.CREATED, "at": now, "location": cmd.warehouse},
    )
    await _stage(session, _created(shipment), cmd.order_id, cause)
    log.info("shipment.created", order_id=cmd.order_id, parcel=name, carrier=carrier.code)


async def change_address(session: AsyncSession, order_id: str, address: dict[str, Any]) -> bool:
    """The new address goes on every parcel of the order that has not left; False when none."""
    changed = False
    for shipment in await of_order(session, order_id, lock=True):
        if shipment.status != St.CREATED or shipment.cancelled:
            log.info(
                "shipment.address_not_changed",
                order_id=order_id,
                parcel=shipment.parcel,
                status=shipment.status,
            )
            continue
        await _change(session, shipment, address=address, updated_at=_now())
        changed = True
    return changed


async def cancel(
    session: AsyncSession, order_id: str, cause: Cause, adapters: dict[str, carriers.CarrierAdapter]
) -> None:
    """Stop every parcel of the order the carrier has not taken, and answer ``shipment.cancelled``
    naming them; no answer when every parcel has left (too late: their scans answer)."""
    shipments = await of_order(session, order_id, lock=True)
    if not shipments:  # remembered, so that a create arriving after it books nothing
        await _remember_cancelled(session, {"order_id": order_id, "at": _now()})
    left = [s for s in shipments if s.status != St.CREATED]
    for shipment in shipments:
        if shipment.status == St.CREATED and not shipment.cancelled:  # or cancelled before: told again
            await adapters[shipment.carrier].cancel(shipment.tracking_number)
            await _change(session, shipment, cancelled=True, next_step_at=None, updated_at=_now())
    if left:
        log.warning("shipment.cancel_too_late", order_id=order_id, parcels=[s.parcel for s in left])
        if len(left) == len(shipments):
            return
    ids = [s.shipment_id for s in shipments if s.cancelled]
    answer = ShipmentCancelled(
        order_id=order_id,
        shipment_id=ids[0] if ids else None,
        shipment_ids=ids,
        parcels=[s.parcel for s in shipments if s.cancelled],
    )
    await _stage(session, answer, order_id, cause)


async def expect_return(
    session: AsyncSession, order_id: str, items: list[LineItem], shipment_id: str | None = None
) -> None:
    """Expect the returned items back: in the parcel named, else in the order's delivered parcels
    that hold them (each parcel expects what it held)."""
    shipments = [
        s for s in await of_order(session, order_id, lock=True) if shipment_id in (None, s.shipment_id)
    ]
    if not shipments:
        raise LookupError(f"no shipment {shipment_id or ''} for order {order_id}")
    wanted = {i.sku: i.quantity for i in items}
    if len(shipments) == 1:
        await _change(
            session, shipments[0], return_expected=True, return_items=[i.model_dump() for i in items]
        )
        return
    for shipment in shipments:
        if shipment.status != St.DELIVERED:
            continue
        here = []
        for line in shipment.items or []:
            take = min(line["quantity"], wanted.get(line["sku"], 0))
            if take:
                here.append({"sku": line["sku"], "quantity": take})
                wanted[line["sku"]] -= take
        if here:
            await _change(session, shipment, return_expected=True, return_items=here)


class Refused(Exception):
    pass


async def report(
    session: AsyncSession,
    shipment: SimpleNamespace,
    status: St,
    at: datetime,
    location: str | None,
    *,
    estimated_delivery: date | None = None,
    step_seconds: float | None = None,
) -> bool:
    """A carrier's report (or the simulated carrier's): record it, bring the delivery estimate up
    to date, and tell the others. Returns False when it changes nothing (a repeat, or news the
    parcel is already past).

    ``shipment`` is the parcel as :func:`by_tracking` or :func:`due` read it, in this transaction;
    its status and estimate are brought up to date with the row's."""
    if shipment.cancelled:
        raise Refused("the shipment was cancelled")
    if not await _record_event(
        session, {"shipment_id": shipment.shipment_id, "status": status, "at": at, "location": location}
    ):
        return False  # seen before
    if not domain.accepts(St(shipment.status), status, return_expected=shipment.return_expected):
        log.info(
            "shipment.report_ignored", order_id=shipment.order_id, current=shipment.status, reported=status
        )
        return False
    now = _now()
    more = domain.next_step(status) is not None
    next_step_at = now + timedelta(seconds=step_seconds) if step_seconds and more else None
    eta = domain.eta(
        shipment.estimated_delivery, domain.BY_CODE.get(shipment.carrier), status, at, estimated_delivery
    )
    await session.execute(
        _UPDATE,
        {
            "key_id": shipment.shipment_id,
            "status": status,
            "updated_at": now,
            "status_since": now,
            "next_step_at": next_step_at,
            "estimated_delivery": eta,
        },
    )
    was_delivered = shipment.status == St.DELIVERED
    undelivered = status == St.LOST or (status == St.RETURNED and not was_delivered)
    shipment.status, shipment.estimated_delivery = status, eta
    await _stage(
        session,
        ShipmentUpdated(
            order_id=shipment.order_id,
            shipment_id=shipment.shipment_id,
            carrier=shipment.carrier,
            tracking_number=shipment.tracking_number,
            status=status,
            at=at,
            location=location,
            parcel=shipment.parcel,
            estimated_delivery=eta,
            tracking_url=_tracking_url(shipment.carrier, shipment.tracking_number),
            undelivered=undelivered,
            replaces=shipment.replaces,
        ),
        shipment.order_id,
        None,
    )
    if status == St.EXCEPTION or undelivered:
        log.warning(
            "shipment.delivery_trouble", order_id=shipment.order_id, parcel=shipment.parcel, status=status
        )
    if status == St.RETURNED and was_delivered:
        items = [LineItem(**i) for i in shipment.return_items or []]
        await _stage(
            session,
            ShipmentReturned(
                order_id=shipment.order_id,
                shipment_id=shipment.shipment_id,
                tracking_number=shipment.tracking_number,
                items=items,
                at=at,
            ),
            shipment.order_id,
            None,
        )
    return True


# -- the simulated carrier of local runs ---------------------------------------------------


async def simulate_step(sessions: async_sessionmaker, step_seconds: float, batch: int = 200) -> int:
    moved = 0
    async with sessions.begin() as session:
        for shipment in await due(session, datetime.now(UTC), batch):
            status = domain.next_step(St(shipment.status))
            if status is None:
                await unschedule(session, shipment)
                continue
            if await report(
                session, shipment, status, datetime.now(UTC), "simulated", step_seconds=step_seconds
            ):
                moved += 1
    return moved


async def _simulate(sessions: async_sessionmaker, step_seconds: float) -> None:
    while True:
        try:
            await simulate_step(sessions, step_seconds)
        except Exception as exc:
            log.warning("carrier_simulation.failed", error=repr(exc))
        await asyncio.sleep(min(step_seconds, 1.0) / 2)


def simulation(
    sessions: async_sessionmaker, step_seconds: float, enabled: bool
) -> contextlib.AbstractAsyncContextManager:
    """The simulated carrier of local runs: every ``step_seconds`` it moves each due, not cancelled
    parcel one step on (created → picked_up → in_transit → out_for_delivery → delivered), through
    ``report`` as a real carrier's scan. Its schedule is in the database (``next_step_at``), so it
    carries on after a restart and never moves a parcel twice per step. Every replica runs it: a
    step locks the parcels it moves (``due``, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so two
    replicas never move the same one."""
    if not enabled:
        return contextlib.nullcontext()
    return background(_simulate(sessions, step_seconds), name="carrier-simulation")
