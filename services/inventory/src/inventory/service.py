"""Stock operations, each inside the caller's transaction, with the events they emit staged in
the same transaction. Used by the subscribers (reserve, release, commit, restock) and by the
admin API (receipts, adjustments, thresholds).

Concurrency: every operation first locks the stock rows it will change (``SELECT … FOR UPDATE``,
in id order, so two transactions never wait on each other in a circle; SQLite instead takes its
one write lock when the transaction begins). Release, commit and restock lock the order's hold
before they read its reservations, so two of them for one order run one after the other and the
second reads what the first left (on PostgreSQL both could otherwise take the same units off).
A reservation then takes units with a guarded
``UPDATE … WHERE on_hand - reserved >= :q`` and checks the row count, and the table's CHECK
constraints refuse negative or over-reserved rows, so no interleaving can oversell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Select, bindparam, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from chassis import outbox
from chassis.db import InsertIfAbsent, rowcount, table
from events.envelope import Cause, utcnow
from events.inventory import (
    Shortage,
    StockCommitted,
    StockLow,
    StockReleased,
    StockReservationFailed,
    StockReserved,
    StockRestocked,
)
from events.types import Allocation, LineItem
from inventory import domain
from inventory.db import OrderHold, Reservation, Stock, StockMovement, Warehouse

SERVICE = "inventory"
Key = tuple[str, str]  # (warehouse, sku)


class Conflict(Exception):
    """A change the current stock does not allow (answered 409)."""


class Refused(Exception):
    """A command that can never succeed for this order (it is dead-lettered for people to see)."""


class StockChanged(RuntimeError):
    """A guarded update found fewer units than planned: the message is retried."""


@dataclass(slots=True)
class Level:
    """A stock row as the message paths read (locked) and change it: a plain object, not an ORM
    one, written back with the statements below."""

    id: int
    warehouse: str
    sku: str
    on_hand: int
    reserved: int
    low_stock_threshold: int
    reorder_quantity: int
    low_alerted: bool


# Prebuilt Core statements (docs/operations.md, "Prebuilt statements on the message paths"); the
# admin paths (receipts, counts, thresholds) lock and write a row with the same ones.
_stock, _reservation, _hold = table(Stock), table(Reservation), table(OrderHold)
_movement, _warehouse = table(StockMovement), table(Warehouse)
_LEVEL_COLUMNS = [_stock.c[f.name] for f in fields(Level)]
_LEVEL = select(*_LEVEL_COLUMNS).order_by(_stock.c.id).with_for_update()
_LOCK_SKUS = _LEVEL.where(_stock.c.sku.in_(bindparam("skus", expanding=True)))
_LOCK_KEYS = _LEVEL.where(tuple_(_stock.c.warehouse, _stock.c.sku).in_(bindparam("keys", expanding=True)))
_TAKE = (
    update(_stock)
    .where(
        _stock.c.id == bindparam("stock_id"), _stock.c.on_hand - _stock.c.reserved >= bindparam("quantity")
    )
    .values(reserved=_stock.c.reserved + bindparam("quantity"))
)
# No values: the SET clause is the columns the parameters name.
_UPDATE_STOCK = update(_stock).where(_stock.c.id == bindparam("stock_id"))
_create_stock = InsertIfAbsent(_stock)
_UPDATE_RESERVATION = update(_reservation).where(_reservation.c.id == bindparam("key_id"))
_UPDATE_HOLD = update(_hold).where(_hold.c.order_id == bindparam("key_order_id"))
_INSERT_RESERVATION = insert(_reservation)
_INSERT_HOLD = insert(_hold)
_INSERT_MOVEMENT = insert(_movement)
_HOLD = select(_hold.c.state, _hold.c.shortages, _hold.c.allocations).where(
    _hold.c.order_id == bindparam("order_id")
)
_LOCK_HOLD = _HOLD.with_for_update()
_RESERVATIONS = (
    select(
        _reservation.c.id,
        _reservation.c.warehouse,
        _reservation.c.sku,
        _reservation.c.quantity,
        _reservation.c.returned,
        _reservation.c.parcel,
    )
    .where(_reservation.c.order_id == bindparam("order_id"), _reservation.c.status == bindparam("status"))
    .order_by(_reservation.c.id)
)
_WAREHOUSES = select(_warehouse.c.code, _warehouse.c.country, _warehouse.c.latitude, _warehouse.c.longitude)


def _source(cause: Cause) -> str | None:
    return cause.source if cause is not None else None


_now = utcnow
_stage = outbox.stager(SERVICE)


def _move(
    row: Level,
    kind: str,
    quantity: int,
    order_id: str | None = None,
    reason: str | None = None,
    *,
    actor: str | None,
) -> dict[str, Any]:
    """A stock_movement row, for ``_INSERT_MOVEMENT``; ``actor``: an API key's name, or the source
    of the command that moved it (``oms/orders``)."""
    return {
        "warehouse": row.warehouse,
        "sku": row.sku,
        "kind": kind,
        "quantity": quantity,
        "order_id": order_id,
        "reason": reason,
        "actor": actor,
        "at": _now(),
    }


async def _lock(session: AsyncSession, statement: Any, params: dict[str, Any]) -> dict[Key, Level]:
    """The stock rows ``statement`` selects, locked for this transaction, in id order."""
    rows = await session.execute(statement, params)
    return {(r.warehouse, r.sku): Level(*r) for r in rows}


async def _lock_keys(session: AsyncSession, keys: Iterable[Key]) -> dict[Key, Level]:
    keys = sorted(set(keys))
    if not keys:
        return {}
    return await _lock(session, _LOCK_KEYS, {"keys": keys})


async def _lock_one(session: AsyncSession, warehouse: str, sku: str) -> Level | None:
    """The stock row of ``sku`` at ``warehouse``, locked; None when there is none."""
    return (await _lock_keys(session, [(warehouse, sku)])).get((warehouse, sku))


async def _lock_or_create(
    session: AsyncSession, warehouse: str, sku: str, *, threshold: int, reorder: int
) -> Level:
    """The row of ``sku`` at ``warehouse``, locked; created empty when there is none yet (a row a
    concurrent transaction created meanwhile is taken as it is)."""
    row = await _lock_one(session, warehouse, sku)
    if row is None:
        await _create_stock(
            session,
            {
                "warehouse": warehouse,
                "sku": sku,
                "on_hand": 0,
                "reserved": 0,
                "low_stock_threshold": threshold,
                "reorder_quantity": reorder,
                "low_alerted": False,
            },
        )
        row = await _lock_one(session, warehouse, sku)
    assert row is not None
    return row


async def _write(session: AsyncSession, row: Level, *names: str) -> None:
    """Write the named columns of ``row`` (changed here) back to its stock row."""
    await session.execute(_UPDATE_STOCK, {"stock_id": row.id, **{n: getattr(row, n) for n in names}})


async def check_low(session: AsyncSession, row: Level, cause: Cause) -> None:
    """stock.low once when available falls to the threshold; armed again when it rises above.
    Sets ``row.low_alerted``; a :class:`Level`'s caller writes it back."""
    available = row.on_hand - row.reserved
    if domain.is_low(available, row.low_stock_threshold):
        if not row.low_alerted:
            row.low_alerted = True
            suggestion = domain.reorder_suggestion(available, row.low_stock_threshold, row.reorder_quantity)
            low = StockLow(
                warehouse=row.warehouse,
                sku=row.sku,
                available=available,
                threshold=row.low_stock_threshold,
                reorder_quantity=suggestion,
            )
            await _stage(session, low, None, cause)
    else:
        row.low_alerted = False


async def _set_hold(
    session: AsyncSession,
    order_id: str,
    state: str,
    shortages: list[dict[str, Any]] | None = None,
    *,
    new: bool = False,
    allocations: list[dict[str, Any]] | None = None,
) -> None:
    """The order's hold in ``state``: updated, or inserted when it has none (``new``: known to have
    none in this transaction, so a concurrent first answer fails the insert and is retried)."""
    values = {"state": state, "shortages": shortages, "updated_at": _now()}
    if new:
        values["allocations"] = allocations
    if not new and rowcount(await session.execute(_UPDATE_HOLD, {"key_order_id": order_id, **values})) == 1:
        return
    await session.execute(_INSERT_HOLD, {"order_id": order_id, **values})


async def _hold_of(session: AsyncSession, order_id: str, *, lock: bool = False) -> Any:
    """The order's hold (None before its first answer); ``lock``: locked for this transaction."""
    return (await session.execute(_LOCK_HOLD if lock else _HOLD, {"order_id": order_id})).first()


async def _reservations(session: AsyncSession, order_id: str, status: str = "reserved") -> list[Any]:
    return list(await session.execute(_RESERVATIONS, {"order_id": order_id, "status": status}))


def _allocations(rows: list[Any]) -> list[Allocation]:
    return [Allocation(warehouse=r.warehouse, sku=r.sku, quantity=r.quantity) for r in rows]


async def _answer_again(
    session: AsyncSession, order_id: str, hold: Any, parcel: str | None = None
) -> StockReserved | StockReservationFailed:
    """The order (or its replacement ``parcel``) was answered before: the same answer, whatever
    was asked this time."""
    if parcel is not None:
        if hold.state == "failed":
            shortages = [Shortage.model_validate(s) for s in hold.shortages or []]
            return StockReservationFailed(order_id=order_id, shortages=shortages, parcel=parcel)
        allocations = [Allocation.model_validate(a) for a in hold.allocations or []]
        return StockReserved(order_id=order_id, allocations=allocations, parcel=parcel)
    match hold.state:
        case "released":
            return StockReservationFailed(order_id=order_id, reason="released")
        case "failed":
            shortages = [Shortage.model_validate(s) for s in hold.shortages or []]
            return StockReservationFailed(order_id=order_id, shortages=shortages)
        case state:  # reserved or committed
            held = await _reservations(session, order_id, state)
            return StockReserved(order_id=order_id, allocations=_allocations(held))


async def reserve(
    session: AsyncSession,
    order_id: str,
    items: list[LineItem],
    to: domain.Destination,
    cause: Cause,
    parcel: str | None = None,
) -> StockReserved | StockReservationFailed:
    """Reserve every line, all or nothing, once per order; ``parcel``: once more for that parcel of
    the order (one sent again after the carrier lost the first). A replacement's units are the
    order's reservations, so the order's commit, release and restock treat them as the rest; its
    own hold (``<order>/<parcel>``) answers a resent command as the first time."""
    key = order_id if parcel is None else f"{order_id}/{parcel}"
    hold = await _hold_of(session, key)
    if hold is not None:
        answer = await _answer_again(session, order_id, hold, parcel)
        await _stage(session, answer, order_id, cause)
        return answer

    lines = domain.merge_lines(items)
    rows = await _lock(session, _LOCK_SKUS, {"skus": sorted({i.sku for i in lines})})
    warehouses = [domain.Warehouse(*w) for w in await session.execute(_WAREHOUSES)]
    available = {key: r.on_hand - r.reserved for key, r in rows.items()}
    try:
        allocations = domain.allocate(lines, warehouses, available, to)
    except domain.OutOfStock as exc:
        shortages = [s.model_dump(mode="json") for s in exc.shortages]
        await _set_hold(session, key, "failed", shortages, new=True)
        failed = StockReservationFailed(order_id=order_id, shortages=exc.shortages, parcel=parcel)
        await _stage(session, failed, order_id, cause)
        return failed

    now = _now()
    reservations, moves = [], []
    for a in allocations:
        row = rows[(a.warehouse, a.sku)]
        taken = await session.execute(_TAKE, {"stock_id": row.id, "quantity": a.quantity})
        if rowcount(taken) != 1:
            raise StockChanged(f"stock of {a.sku} at {a.warehouse} changed while reserving")
        row.reserved += a.quantity  # the row is locked: this is what the update left
        reservations.append(
            {
                "order_id": order_id,
                "warehouse": a.warehouse,
                "sku": a.sku,
                "quantity": a.quantity,
                "status": "reserved",
                "parcel": parcel,
                "returned": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
        moves.append(_move(row, "reservation", a.quantity, order_id, actor=_source(cause)))
        alerted = row.low_alerted
        await check_low(session, row, cause)
        if row.low_alerted != alerted:
            await session.execute(_UPDATE_STOCK, {"stock_id": row.id, "low_alerted": row.low_alerted})
    if allocations:
        await session.execute(_INSERT_RESERVATION, reservations)
        await session.execute(_INSERT_MOVEMENT, moves)
    await _set_hold(
        session,
        key,
        "reserved",
        new=True,
        allocations=[a.model_dump(mode="json") for a in allocations] if parcel else None,
    )
    reserved = StockReserved(order_id=order_id, allocations=allocations, parcel=parcel)
    await _stage(session, reserved, order_id, cause)
    return reserved


async def release(
    session: AsyncSession,
    order_id: str,
    reason: str,
    cause: Cause,
    warehouses: list[str] | None = None,
    parcel: str | None = None,
) -> StockReleased:
    """Give back what the order still holds (``warehouses``: only what those hold, so the units of
    a parcel that left stay reserved for its commit, whichever comes first); remember the release
    so the order is never reserved later. ``parcel``: only what was reserved for that replacement
    parcel (its own hold is released; the order's stays as it is). Without it, only the order's
    own units: a replacement's are released by name, so that one waiting in a released warehouse
    stays reserved."""
    key = order_id if parcel is None else f"{order_id}/{parcel}"
    hold = await _hold_of(session, key, lock=True)
    held = [
        r
        for r in await _reservations(session, order_id)
        if (warehouses is None or r.warehouse in warehouses) and r.parcel == parcel
    ]
    rows = await _lock_keys(session, ((r.warehouse, r.sku) for r in held))
    moves = []
    for r in held:
        row = rows[(r.warehouse, r.sku)]
        row.reserved -= r.quantity
        moves.append(_move(row, "release", r.quantity, order_id, reason[:200], actor=_source(cause)))
        await check_low(session, row, cause)
    if held:
        await session.execute(
            _UPDATE_STOCK,
            [
                {"stock_id": row.id, "reserved": row.reserved, "low_alerted": row.low_alerted}
                for row in rows.values()
            ],
        )
        now = _now()
        await session.execute(
            _UPDATE_RESERVATION, [{"key_id": r.id, "status": "released", "updated_at": now} for r in held]
        )
        await session.execute(_INSERT_MOVEMENT, moves)
    if parcel is not None:
        if hold is not None and hold.state == "reserved":
            await _set_hold(session, key, "released")
    elif hold is None or hold.state == "reserved":
        await _set_hold(session, order_id, "released", new=hold is None)
    released = StockReleased(order_id=order_id, allocations=_allocations(held), parcel=parcel)
    await _stage(session, released, order_id, cause)
    return released


async def commit(
    session: AsyncSession,
    order_id: str,
    cause: Cause,
    warehouse: str | None = None,
    *,
    parcel: str | None = None,
) -> StockCommitted:
    """The parcel left: the reserved units leave the shelf (on hand and reserved both go down).
    ``warehouse``: only that warehouse's parcel left (an order split over warehouses ships one
    parcel from each); ``parcel``: a parcel sent again left, only the units reserved for it (None:
    the order's own units, never a replacement's, which may wait in the same warehouse). The
    order's hold is committed once nothing of it is reserved any more."""
    await _hold_of(session, order_id, lock=True)

    def its(r: Any) -> bool:
        return warehouse in (None, r.warehouse) and r.parcel == parcel

    reserved = await _reservations(session, order_id)
    held = [r for r in reserved if its(r)]
    if not held:
        done = [r for r in await _reservations(session, order_id, "committed") if its(r)]
        if not done:
            raise Refused(f"order {order_id} holds no reserved stock to commit")
        committed = StockCommitted(order_id=order_id, allocations=_allocations(done))  # told again
        await _stage(session, committed, order_id, cause)
        return committed
    rows = await _lock_keys(session, ((r.warehouse, r.sku) for r in held))
    moves = []
    for r in held:
        row = rows[(r.warehouse, r.sku)]
        row.reserved -= r.quantity
        row.on_hand -= r.quantity
        moves.append(_move(row, "commit", -r.quantity, order_id, actor=_source(cause)))
    await session.execute(
        _UPDATE_STOCK,
        [{"stock_id": row.id, "reserved": row.reserved, "on_hand": row.on_hand} for row in rows.values()],
    )
    now = _now()
    await session.execute(
        _UPDATE_RESERVATION, [{"key_id": r.id, "status": "committed", "updated_at": now} for r in held]
    )
    await session.execute(_INSERT_MOVEMENT, moves)
    if len(held) == len(reserved):
        await _set_hold(session, order_id, "committed")
    committed = StockCommitted(order_id=order_id, allocations=_allocations(held))
    await _stage(session, committed, order_id, cause)
    return committed


async def restock(
    session: AsyncSession, order_id: str, items: list[LineItem], cause: Cause
) -> list[StockRestocked]:
    """Returned units go back on the shelf of the warehouse they left from; one event per line
    and warehouse. Never more than the order shipped and has not returned already."""
    await _hold_of(session, order_id, lock=True)
    shipped = await _reservations(session, order_id, "committed")
    try:
        placed = domain.place_returns(
            items, [domain.Shipped(r.warehouse, r.sku, r.quantity, r.returned) for r in shipped]
        )
    except domain.ReturnRefused as exc:
        raise Refused(f"order {order_id}: {exc}") from exc
    rows = await _lock_keys(session, ((p.warehouse, p.sku) for p in placed))
    now = _now()
    by_key = {
        (r.warehouse, r.sku): {"key_id": r.id, "returned": r.returned, "updated_at": now} for r in shipped
    }
    returned, moves, events = {}, [], []
    for p in placed:
        key = (p.warehouse, p.sku)
        row, reservation = rows[key], by_key[key]
        row.on_hand += p.quantity
        reservation["returned"] += p.quantity
        returned[key] = reservation
        moves.append(_move(row, "restock", p.quantity, order_id, "returned", actor=_source(cause)))
        await check_low(session, row, cause)
        event = StockRestocked(order_id=order_id, warehouse=p.warehouse, sku=p.sku, quantity=p.quantity)
        await _stage(session, event, order_id, cause)
        events.append(event)
    if placed:
        await session.execute(
            _UPDATE_STOCK,
            [
                {"stock_id": row.id, "on_hand": row.on_hand, "low_alerted": row.low_alerted}
                for row in rows.values()
            ],
        )
        await session.execute(_UPDATE_RESERVATION, list(returned.values()))
        await session.execute(_INSERT_MOVEMENT, moves)
    return events


async def receive(
    session: AsyncSession,
    warehouse: str,
    sku: str,
    quantity: int,
    *,
    actor: str,
    threshold: int,
    reorder: int,
) -> Level:
    """A delivery from a supplier: units onto the shelf (``stock.restocked`` without an order)."""
    row = await _lock_or_create(session, warehouse, sku, threshold=threshold, reorder=reorder)
    row.on_hand += quantity
    await session.execute(_INSERT_MOVEMENT, _move(row, "receipt", quantity, actor=actor))
    await check_low(session, row, None)
    await _write(session, row, "on_hand", "low_alerted")
    await _stage(session, StockRestocked(warehouse=warehouse, sku=sku, quantity=quantity), None, None)
    return row


async def adjust(
    session: AsyncSession,
    warehouse: str,
    sku: str,
    on_hand: int,
    reason: str,
    *,
    actor: str,
    threshold: int,
    reorder: int,
) -> Level:
    """A count: ``on_hand`` is what is on the shelf now. Never below what orders hold reserved."""
    row = await _lock_or_create(session, warehouse, sku, threshold=threshold, reorder=reorder)
    if on_hand < row.reserved:
        raise Conflict(
            f"{row.reserved} units of {sku} at {warehouse} are reserved: the count cannot be below that"
        )
    await session.execute(
        _INSERT_MOVEMENT, _move(row, "adjustment", on_hand - row.on_hand, reason=reason, actor=actor)
    )
    row.on_hand = on_hand
    await check_low(session, row, None)
    await _write(session, row, "on_hand", "low_alerted")
    return row


async def set_threshold(
    session: AsyncSession, warehouse: str, sku: str, threshold: int, reorder: int | None
) -> Level | None:
    row = await _lock_one(session, warehouse, sku)
    if row is None:
        return None
    row.low_stock_threshold = threshold
    if reorder:
        row.reorder_quantity = reorder
    await check_low(session, row, None)
    await _write(session, row, "low_stock_threshold", "reorder_quantity", "low_alerted")
    return row


async def levels(session: AsyncSession, query: Select[Any]) -> list[Level]:
    """The stock rows ``query`` selects (a ``select`` of the stock table with its filters and
    order), as every operation here holds one, unlocked (for reading)."""
    return [Level(*row) for row in await session.execute(query.with_only_columns(*_LEVEL_COLUMNS))]


_PUT_WAREHOUSE = update(_warehouse).where(_warehouse.c.code == bindparam("key_code"))
_create_warehouse = InsertIfAbsent(_warehouse)


async def put_warehouse(session: AsyncSession, code: str, values: dict[str, Any]) -> None:
    """Create the warehouse ``code``, or change it to ``values`` (name, country, coordinates)."""
    if not await _create_warehouse(session, {"code": code, **values}):
        await session.execute(_PUT_WAREHOUSE, {"key_code": code, **values})
