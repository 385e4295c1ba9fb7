"""Stock operations, each inside the caller's transaction, with the events they emit staged in
the same transaction. Used by the subscribers (reserve, release, commit, restock) and by the
admin API (receipts, adjustments)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from events import outbox
from events.envelope import Envelope, Incoming
from events.inventory import (
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


class Conflict(Exception):
    """A change the current stock does not allow (answered 409)."""


def _now() -> datetime:
    return datetime.now(UTC)


async def _stage(session: AsyncSession, payload: Any, subject: str | None, cause: Cause) -> None:
    await outbox.stage(session, payload, service=SERVICE, subject=subject, causation=cause)


def _move(session: AsyncSession, row: Stock, kind: str, quantity: int, order_id: str | None = None, reason: str | None = None) -> None:
    session.add(StockMovement(warehouse=row.warehouse, sku=row.sku, kind=kind, quantity=quantity, order_id=order_id,
                              reason=reason, at=_now()))


async def check_low(session: AsyncSession, row: Stock, cause: Cause) -> None:
    """stock.low once when available falls to the threshold; armed again when it rises above."""
    available = row.on_hand - row.reserved
    if domain.is_low(available, row.low_stock_threshold):
        if not row.low_alerted:
            row.low_alerted = True
            suggestion = domain.reorder_suggestion(available, row.low_stock_threshold, row.reorder_quantity)
            await _stage(
                session,
                StockLow(warehouse=row.warehouse, sku=row.sku, available=available, threshold=row.low_stock_threshold,
                         reorder_quantity=suggestion),
                None,
                cause,
            )
    else:
        row.low_alerted = False


async def _hold(session: AsyncSession, order_id: str) -> OrderHold | None:
    return await session.get(OrderHold, order_id)


async def _set_hold(session: AsyncSession, order_id: str, state: str) -> None:
    hold = await _hold(session, order_id)
    if hold is None:
        session.add(OrderHold(order_id=order_id, state=state, updated_at=_now()))
    else:
        hold.state, hold.updated_at = state, _now()


async def _held(session: AsyncSession, order_id: str, status: str = "reserved") -> list[Reservation]:
    return list(await session.scalars(
        select(Reservation).where(Reservation.order_id == order_id, Reservation.status == status).order_by(Reservation.id)
    ))


def _allocations(rows: list[Reservation]) -> list[Allocation]:
    return [Allocation(warehouse=r.warehouse, sku=r.sku, quantity=r.quantity) for r in rows]


async def _row(session: AsyncSession, warehouse: str, sku: str) -> Stock | None:
    return await session.scalar(select(Stock).where(Stock.warehouse == warehouse, Stock.sku == sku))


async def reserve(session: AsyncSession, order_id: str, items: list[LineItem], to: domain.Destination, cause: Cause) -> None:
    hold = await _hold(session, order_id)
    if hold is not None and hold.state == "released":
        await _stage(session, StockReservationFailed(order_id=order_id, reason="released"), order_id, cause)
        return
    if hold is not None and hold.state in ("reserved", "committed"):
        held = await _held(session, order_id, "reserved" if hold.state == "reserved" else "committed")
        await _stage(session, StockReserved(order_id=order_id, allocations=_allocations(held)), order_id, cause)
        return

    skus = sorted({i.sku for i in items})
    warehouses = [domain.Warehouse(w.code, w.country, w.latitude, w.longitude) for w in await session.scalars(select(Warehouse))]
    rows = {(r.warehouse, r.sku): r for r in await session.scalars(select(Stock).where(Stock.sku.in_(skus)))}
    available = {key: r.on_hand - r.reserved for key, r in rows.items()}
    try:
        allocations = domain.allocate(items, warehouses, available, to)
    except domain.OutOfStock as exc:
        await _set_hold(session, order_id, "failed")
        await _stage(session, StockReservationFailed(order_id=order_id, shortages=exc.shortages), order_id, cause)
        return

    now = _now()
    for a in allocations:
        taken = await session.execute(
            update(Stock)
            .where(Stock.warehouse == a.warehouse, Stock.sku == a.sku, Stock.on_hand - Stock.reserved >= a.quantity)
            .values(reserved=Stock.reserved + a.quantity)
        )
        if taken.rowcount != 1:  # someone took it since we looked: let the message be retried
            raise RuntimeError(f"stock of {a.sku} at {a.warehouse} changed while reserving")
        session.add(Reservation(order_id=order_id, warehouse=a.warehouse, sku=a.sku, quantity=a.quantity,
                                status="reserved", created_at=now, updated_at=now))
        row = rows[(a.warehouse, a.sku)]
        await session.refresh(row)
        _move(session, row, "reservation", a.quantity, order_id)
        await check_low(session, row, cause)
    await _set_hold(session, order_id, "reserved")
    await _stage(session, StockReserved(order_id=order_id, allocations=allocations), order_id, cause)


async def release(session: AsyncSession, order_id: str, reason: str, cause: Cause) -> None:
    held = await _held(session, order_id)
    for r in held:
        row = await _row(session, r.warehouse, r.sku)
        row.reserved -= r.quantity
        r.status, r.updated_at = "released", _now()
        _move(session, row, "release", r.quantity, order_id, reason)
        await check_low(session, row, cause)
    hold = await _hold(session, order_id)
    if hold is None or hold.state != "committed":
        await _set_hold(session, order_id, "released")
    await _stage(session, StockReleased(order_id=order_id, allocations=_allocations(held)), order_id, cause)


async def commit(session: AsyncSession, order_id: str, cause: Cause) -> None:
    held = await _held(session, order_id)
    for r in held:
        row = await _row(session, r.warehouse, r.sku)
        row.reserved -= r.quantity
        row.on_hand -= r.quantity
        r.status, r.updated_at = "committed", _now()
        _move(session, row, "commit", -r.quantity, order_id)
    if held:
        await _set_hold(session, order_id, "committed")
        await _stage(session, StockCommitted(order_id=order_id, allocations=_allocations(held)), order_id, cause)


async def restock(session: AsyncSession, order_id: str, items: list[LineItem], cause: Cause) -> None:
    """Returned units go back on the shelf of the warehouse they left from."""
    shipped = await _held(session, order_id, "committed")
    for item in items:
        source = next((r.warehouse for r in shipped if r.sku == item.sku), None)
        if source is None:
            raise ValueError(f"order {order_id} shipped no {item.sku}")
        row = await _row(session, source, item.sku)
        row.on_hand += item.quantity
        _move(session, row, "restock", item.quantity, order_id)
        await check_low(session, row, cause)
        await _stage(session, StockRestocked(order_id=order_id, warehouse=source, sku=item.sku, quantity=item.quantity),
                     order_id, cause)


async def receive(session: AsyncSession, warehouse: str, sku: str, quantity: int, *, threshold: int, reorder: int) -> Stock:
    row = await _row(session, warehouse, sku)
    if row is None:
        row = Stock(warehouse=warehouse, sku=sku, on_hand=0, reserved=0, low_stock_threshold=threshold,
                    reorder_quantity=reorder, low_alerted=False)
        session.add(row)
    row.on_hand += quantity
    await session.flush()
    _move(session, row, "receipt", quantity)
    await check_low(session, row, None)
    await _stage(session, StockRestocked(warehouse=warehouse, sku=sku, quantity=quantity), None, None)
    return row


async def adjust(session: AsyncSession, warehouse: str, sku: str, on_hand: int, reason: str) -> Stock:
    row = await _row(session, warehouse, sku)
    if row is None:
        raise LookupError(f"no {sku} at {warehouse}")
    if on_hand < row.reserved:
        raise Conflict(f"{row.reserved} units are reserved: the count cannot be below that")
    _move(session, row, "adjustment", on_hand - row.on_hand, reason=reason)
    row.on_hand = on_hand
    await check_low(session, row, None)
    return row
