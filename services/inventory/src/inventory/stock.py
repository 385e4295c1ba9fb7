"""Stock operations, each inside the caller's transaction, with the events they emit staged in
the same transaction. Used by the subscribers (reserve, release, commit, restock) and by the
admin API (receipts, adjustments, thresholds).

Concurrency: every operation first locks the stock rows it will change (``SELECT … FOR UPDATE``,
in id order, so two transactions never wait on each other in a circle; SQLite instead takes its
one write lock when the transaction begins). A reservation then takes units with a guarded
``UPDATE … WHERE on_hand - reserved >= :q`` and checks the row count, and the table's CHECK
constraints refuse negative or over-reserved rows, so no interleaving can oversell.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from events import outbox
from events.envelope import Envelope, Incoming, Message
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
Cause = Incoming | Envelope[Any] | None
Key = tuple[str, str]  # (warehouse, sku)


class Conflict(Exception):
    """A change the current stock does not allow (answered 409)."""


class Refused(Exception):
    """A command that can never succeed for this order (it is dead-lettered for people to see)."""


class StockChanged(RuntimeError):
    """A guarded update found fewer units than planned: the message is retried."""


def _now() -> datetime:
    return datetime.now(UTC)


async def _stage(session: AsyncSession, payload: Message, subject: str | None, cause: Cause) -> None:
    await outbox.stage(session, payload, service=SERVICE, subject=subject, causation=cause)


def _move(session: AsyncSession, row: Stock, kind: str, quantity: int, order_id: str | None = None,
          reason: str | None = None) -> None:
    session.add(StockMovement(warehouse=row.warehouse, sku=row.sku, kind=kind, quantity=quantity,
                              order_id=order_id, reason=reason, at=_now()))


async def _lock(session: AsyncSession, *criteria: Any) -> dict[Key, Stock]:
    """The stock rows matching ``criteria``, locked for this transaction and read afresh."""
    rows = await session.scalars(
        select(Stock).where(*criteria).order_by(Stock.id).with_for_update().execution_options(populate_existing=True)
    )
    return {(r.warehouse, r.sku): r for r in rows}


async def _lock_keys(session: AsyncSession, keys: Iterable[Key]) -> dict[Key, Stock]:
    keys = sorted(set(keys))
    if not keys:
        return {}
    return await _lock(session, or_(*(and_(Stock.warehouse == w, Stock.sku == s) for w, s in keys)))


async def _lock_or_create(session: AsyncSession, warehouse: str, sku: str, *, threshold: int, reorder: int) -> Stock:
    """The row of ``sku`` at ``warehouse``, locked; created empty when there is none yet."""
    row = (await _lock_keys(session, [(warehouse, sku)])).get((warehouse, sku))
    if row is not None:
        return row
    try:
        async with session.begin_nested():
            row = Stock(warehouse=warehouse, sku=sku, on_hand=0, reserved=0, low_stock_threshold=threshold,
                        reorder_quantity=reorder, low_alerted=False)
            session.add(row)
    except IntegrityError:  # created meanwhile by a concurrent transaction (PostgreSQL)
        row = (await _lock_keys(session, [(warehouse, sku)]))[(warehouse, sku)]
    return row


async def check_low(session: AsyncSession, row: Stock, cause: Cause) -> None:
    """stock.low once when available falls to the threshold; armed again when it rises above."""
    available = row.on_hand - row.reserved
    if domain.is_low(available, row.low_stock_threshold):
        if not row.low_alerted:
            row.low_alerted = True
            suggestion = domain.reorder_suggestion(available, row.low_stock_threshold, row.reorder_quantity)
            low = StockLow(warehouse=row.warehouse, sku=row.sku, available=available,
                           threshold=row.low_stock_threshold, reorder_quantity=suggestion)
            await _stage(session, low, None, cause)
    else:
        row.low_alerted = False


async def _set_hold(session: AsyncSession, order_id: str, state: str,
                    shortages: list[dict[str, Any]] | None = None) -> None:
    hold = await session.get(OrderHold, order_id)
    if hold is None:
        session.add(OrderHold(order_id=order_id, state=state, shortages=shortages, updated_at=_now()))
    else:
        hold.state, hold.shortages, hold.updated_at = state, shortages, _now()


async def _reservations(session: AsyncSession, order_id: str, status: str = "reserved") -> list[Reservation]:
    return list(await session.scalars(
        select(Reservation)
        .where(Reservation.order_id == order_id, Reservation.status == status)
        .order_by(Reservation.id)
    ))


def _allocations(rows: list[Reservation]) -> list[Allocation]:
    return [Allocation(warehouse=r.warehouse, sku=r.sku, quantity=r.quantity) for r in rows]


async def _answer_again(session: AsyncSession, hold: OrderHold) -> StockReserved | StockReservationFailed:
    """The order was answered before: the same answer, whatever was asked this time."""
    match hold.state:
        case "released":
            return StockReservationFailed(order_id=hold.order_id, reason="released")
        case "failed":
            shortages = [Shortage.model_validate(s) for s in hold.shortages or []]
            return StockReservationFailed(order_id=hold.order_id, shortages=shortages)
        case state:  # reserved or committed
            held = await _reservations(session, hold.order_id, state)
            return StockReserved(order_id=hold.order_id, allocations=_allocations(held))


async def reserve(session: AsyncSession, order_id: str, items: list[LineItem], to: domain.Destination,
                  cause: Cause) -> StockReserved | StockReservationFailed:
    """Reserve every line, all or nothing, once per order."""
    hold = await session.get(OrderHold, order_id)
    if hold is not None:
        answer = await _answer_again(session, hold)
        await _stage(session, answer, order_id, cause)
        return answer

    lines = domain.merge_lines(items)
    rows = await _lock(session, Stock.sku.in_(sorted({i.sku for i in lines})))
    warehouses = [domain.Warehouse(w.code, w.country, w.latitude, w.longitude)
                  for w in await session.scalars(select(Warehouse))]
    available = {key: r.on_hand - r.reserved for key, r in rows.items()}
    try:
        allocations = domain.allocate(lines, warehouses, available, to)
    except domain.OutOfStock as exc:
        shortages = [s.model_dump(mode="json") for s in exc.shortages]
        await _set_hold(session, order_id, "failed", shortages)
        failed = StockReservationFailed(order_id=order_id, shortages=exc.shortages)
        await _stage(session, failed, order_id, cause)
        return failed

    now = _now()
    for a in allocations:
        taken = await session.execute(
            update(Stock)
            .where(Stock.warehouse == a.warehouse, Stock.sku == a.sku, Stock.on_hand - Stock.reserved >= a.quantity)
            .values(reserved=Stock.reserved + a.quantity)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:
            raise StockChanged(f"stock of {a.sku} at {a.warehouse} changed while reserving")
        row = rows[(a.warehouse, a.sku)]
        await session.refresh(row)
        session.add(Reservation(order_id=order_id, warehouse=a.warehouse, sku=a.sku, quantity=a.quantity,
                                status="reserved", created_at=now, updated_at=now))
        _move(session, row, "reservation", a.quantity, order_id)
        await check_low(session, row, cause)
    await _set_hold(session, order_id, "reserved")
    reserved = StockReserved(order_id=order_id, allocations=allocations)
    await _stage(session, reserved, order_id, cause)
    return reserved


async def release(session: AsyncSession, order_id: str, reason: str, cause: Cause) -> StockReleased:
    """Give back what the order still holds; remember the release so it is never reserved later."""
    held = await _reservations(session, order_id)
    rows = await _lock_keys(session, ((r.warehouse, r.sku) for r in held))
    for r in held:
        row = rows[(r.warehouse, r.sku)]
        row.reserved -= r.quantity
        r.status, r.updated_at = "released", _now()
        _move(session, row, "release", r.quantity, order_id, reason[:200])
        await check_low(session, row, cause)
    hold = await session.get(OrderHold, order_id)
    if hold is None or hold.state == "reserved":
        await _set_hold(session, order_id, "released")
    released = StockReleased(order_id=order_id, allocations=_allocations(held))
    await _stage(session, released, order_id, cause)
    return released


async def commit(session: AsyncSession, order_id: str, cause: Cause) -> StockCommitted:
    """The parcel left: the reserved units leave the shelf (on hand and reserved both go down)."""
    held = await _reservations(session, order_id)
    if not held:
        done = await _reservations(session, order_id, "committed")
        if not done:
            raise Refused(f"order {order_id} holds no reserved stock to commit")
        committed = StockCommitted(order_id=order_id, allocations=_allocations(done))  # told again
        await _stage(session, committed, order_id, cause)
        return committed
    rows = await _lock_keys(session, ((r.warehouse, r.sku) for r in held))
    for r in held:
        row = rows[(r.warehouse, r.sku)]
        row.reserved -= r.quantity
        row.on_hand -= r.quantity
        r.status, r.updated_at = "committed", _now()
        _move(session, row, "commit", -r.quantity, order_id)
    await _set_hold(session, order_id, "committed")
    committed = StockCommitted(order_id=order_id, allocations=_allocations(held))
    await _stage(session, committed, order_id, cause)
    return committed


async def restock(session: AsyncSession, order_id: str, items: list[LineItem], cause: Cause) -> list[StockRestocked]:
    """Returned units go back on the shelf of the warehouse they left from; one event per line
    and warehouse. Never more than the order shipped and has not returned already."""
    shipped = await _reservations(session, order_id, "committed")
    try:
        placed = domain.place_returns(
            items, [domain.Shipped(r.warehouse, r.sku, r.quantity, r.returned) for r in shipped]
        )
    except domain.ReturnRefused as exc:
        raise Refused(f"order {order_id}: {exc}") from exc
    rows = await _lock_keys(session, ((p.warehouse, p.sku) for p in placed))
    by_key = {(r.warehouse, r.sku): r for r in shipped}
    events = []
    for p in placed:
        row, reservation = rows[(p.warehouse, p.sku)], by_key[(p.warehouse, p.sku)]
        row.on_hand += p.quantity
        reservation.returned += p.quantity
        reservation.updated_at = _now()
        _move(session, row, "restock", p.quantity, order_id, "returned")
        await check_low(session, row, cause)
        event = StockRestocked(order_id=order_id, warehouse=p.warehouse, sku=p.sku, quantity=p.quantity)
        await _stage(session, event, order_id, cause)
        events.append(event)
    return events


async def receive(session: AsyncSession, warehouse: str, sku: str, quantity: int, *, threshold: int,
                  reorder: int) -> Stock:
    """A delivery from a supplier: units onto the shelf (``stock.restocked`` without an order)."""
    row = await _lock_or_create(session, warehouse, sku, threshold=threshold, reorder=reorder)
    row.on_hand += quantity
    _move(session, row, "receipt", quantity)
    await check_low(session, row, None)
    await _stage(session, StockRestocked(warehouse=warehouse, sku=sku, quantity=quantity), None, None)
    return row


async def adjust(session: AsyncSession, warehouse: str, sku: str, on_hand: int, reason: str, *, threshold: int,
                 reorder: int) -> Stock:
    """A count: ``on_hand`` is what is on the shelf now. Never below what orders hold reserved."""
    row = await _lock_or_create(session, warehouse, sku, threshold=threshold, reorder=reorder)
    if on_hand < row.reserved:
        raise Conflict(f"{row.reserved} units of {sku} at {warehouse} are reserved: the count cannot be below that")
    _move(session, row, "adjustment", on_hand - row.on_hand, reason=reason)
    row.on_hand = on_hand
    await check_low(session, row, None)
    return row


async def set_threshold(session: AsyncSession, warehouse: str, sku: str, threshold: int,
                        reorder: int | None) -> Stock | None:
    row = (await _lock_keys(session, [(warehouse, sku)])).get((warehouse, sku))
    if row is None:
        return None
    row.low_stock_threshold = threshold
    if reorder:
        row.reorder_quantity = reorder
    await check_low(session, row, None)
    return row
