"""What the console reads from the orders database: the order search, the dashboard's charts over
the last hour, and the messages an order's saga sent.

The search looks each kind of term up in its own index (order id, lower-cased e-mail, phone,
the tracking number of any of the order's parcels, SKU) and joins the union of what they found,
so a million orders cost a few index probes, on PostgreSQL as on SQLite; the expressions below
are those of the indexes in orders.db.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import ColumnClause, Integer, Select, cast, func, literal_column, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.db import outbox_message
from orders import service
from orders.db import Order, OrderHistory, OrderLine, OrderParcel

EMAIL: ColumnClause[Any] = literal_column("lower(customer ->> 'email')")
PHONE: ColumnClause[Any] = literal_column("(customer ->> 'phone')")


@dataclass(frozen=True)
class Search:
    q: str = ""
    status: str = ""
    channel: str = ""
    day_from: date | None = None
    day_to: date | None = None  # inclusive: the whole day


def search_query(s: Search, *, limit: int = 50) -> Select:
    """Newest first. A term is matched exactly (an e-mail without regard to case) against each
    kind of key at once: ids, e-mails, phones, tracking numbers and SKUs never look alike."""
    query = select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit)
    term = s.q.strip()
    if term:
        found = union(
            select(Order.id).where(Order.id == term),
            select(Order.id).where(EMAIL == term.lower()),
            select(Order.id).where(PHONE == term),
            select(OrderParcel.order_id).where(OrderParcel.tracking_number == term),
            select(OrderLine.order_id).where(OrderLine.sku == term),
        ).subquery()
        query = query.where(Order.id.in_(select(found.c[0])))
    if s.status:
        query = query.where(Order.status == s.status)
    if s.channel:
        query = query.where(Order.channel == s.channel)
    if s.day_from:
        query = query.where(Order.created_at >= datetime.combine(s.day_from, time(), UTC))
    if s.day_to:
        query = query.where(Order.created_at < datetime.combine(s.day_to + timedelta(days=1), time(), UTC))
    return query


async def search(session: AsyncSession, s: Search, *, limit: int = 50) -> list[SimpleNamespace]:
    return await service.read(session, search_query(s, limit=limit))


def _minute(column: Any, dialect: str) -> Any:
    """Minutes since the epoch, as an integer, in the database's own words."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer) // 60
    return func.floor(func.extract("epoch", column) / 60)


def _seconds_between(later: Any, earlier: Any, dialect: str) -> Any:
    if dialect == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


async def charts(session: AsyncSession, *, now: datetime | None = None) -> dict[str, Any]:
    """Orders by status now; per minute over the last hour: orders placed, orders paid, and the
    mean and worst time from placing to paid of the orders paid in that minute."""
    now = now or datetime.now(UTC)
    since = now - timedelta(hours=1)
    dialect = session.get_bind().dialect.name
    by_status = dict((await session.execute(select(Order.status, func.count()).group_by(Order.status))).all())
    placed_minute = _minute(Order.created_at, dialect).label("minute")
    placed: dict[int, int] = dict(
        (
            await session.execute(
                select(placed_minute, func.count()).where(Order.created_at >= since).group_by(placed_minute)
            )
        ).all()
    )
    paid_minute = _minute(OrderHistory.at, dialect).label("minute")
    latency = _seconds_between(OrderHistory.at, Order.created_at, dialect)
    paid = {
        int(m): (n, avg, worst)
        for m, n, avg, worst in (
            await session.execute(
                select(paid_minute, func.count(), func.avg(latency), func.max(latency))
                .join(Order, Order.id == OrderHistory.order_id)
                .where(OrderHistory.status == "paid", OrderHistory.at >= since)
                .group_by(paid_minute)
            )
        ).all()
    }
    placed = {int(m): n for m, n in placed.items()}
    first = int(since.timestamp()) // 60 + 1
    minutes = list(range(first, first + 60))
    return {
        "at": now.isoformat(),
        "orders_by_status": dict(sorted(by_status.items())),
        "minutes": [datetime.fromtimestamp(m * 60, UTC).strftime("%H:%M") for m in minutes],
        "placed": [placed.get(m, 0) for m in minutes],
        "paid": [paid[m][0] if m in paid else 0 for m in minutes],
        "latency_mean_s": [round(float(paid[m][1]), 3) if m in paid else None for m in minutes],
        "latency_max_s": [round(float(paid[m][2]), 3) if m in paid else None for m in minutes],
    }


async def saga_messages(session: AsyncSession, order_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The commands and events the order's saga sent that the outbox still keeps (published ones
    for an hour), oldest first."""
    o = outbox_message.c
    rows = (
        (
            await session.execute(
                select(o.routing_key, o.message_type, o.created_at, o.published_at, o.attempts, o.last_error)
                .where(o.correlation_id == order_id)
                .order_by(o.seq)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]
