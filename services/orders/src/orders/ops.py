"""What ops watch: orders by status, where orders get stuck, throughput, dead letters, low stock
(``GET /ops``, an HTML page that refreshes itself, and ``GET /v1/ops/summary``, the same as
JSON), and the sales report (``GET /v1/reports/sales``).

Browsers cannot send an Authorization header from a link, so the page also takes the key as
``?key=``; it must be an ops or admin key like any other.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aio_pika
import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from events.deadletters import parked_count
from events.names import DEAD_LETTER_QUEUE, UNROUTED_QUEUE
from events.settings import Role
from events.web import Problem, Runtime, require
from orders.db import Order, OrderHistory, OrderLine

router = APIRouter(tags=["ops"])

FINAL = ("delivered", "cancelled", "returned")
CARRIER_STEPS = ("picking", "shipped", "in_transit", "return_requested")


async def _queue_depths(amqp_url: str) -> dict[str, int | None]:
    depths: dict[str, int | None] = {DEAD_LETTER_QUEUE: None, UNROUTED_QUEUE: None}
    try:
        connection = await aio_pika.connect(amqp_url, timeout=2)
    except Exception:
        return depths
    try:
        channel = await connection.channel()
        for name in depths:
            try:
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = queue.declaration_result.message_count
            except Exception:
                channel = await connection.channel()
    finally:
        await connection.close()
    return depths


async def _low_stock(url: str, key: str) -> list[dict[str, Any]] | None:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            r = await client.get(f"{url}/v1/stock/low", headers={"Authorization": f"Bearer {key}"})
            r.raise_for_status()
            return r.json()["items"]
    except Exception:
        return None


async def summary(rt: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    recent = now - timedelta(minutes=5)
    stuck_before = now - timedelta(seconds=rt.settings.stuck_after_seconds)
    async with rt.sessions() as session:
        by_status = dict((await session.execute(select(Order.status, func.count()).group_by(Order.status))).all())
        stuck = (
            await session.execute(
                select(Order.id, Order.status, Order.updated_at, Order.attention)
                .where(Order.status.not_in(FINAL + CARRIER_STEPS), Order.updated_at < stuck_before)
                .order_by(Order.updated_at)
                .limit(50)
            )
        ).all()
        attention = (
            await session.execute(select(Order.id, Order.status, Order.attention).where(Order.attention.is_not(None)).limit(50))
        ).all()
        placed = await session.scalar(select(func.count()).select_from(Order).where(Order.created_at >= recent))
        reached = dict(
            (
                await session.execute(
                    select(OrderHistory.status, func.count())
                    .where(OrderHistory.at >= recent, OrderHistory.status.in_(("paid", "delivered", "cancelled")))
                    .group_by(OrderHistory.status)
                )
            ).all()
        )
    parked = await parked_count(rt.sessions)  # its own session: never two at once (SQLite's write lock)
    depths = await _queue_depths(rt.settings.amqp_url)
    return {
        "at": now.isoformat(),
        "orders_by_status": by_status,
        "stuck": [{"id": i, "status": s, "since": u.isoformat(), "attention": a} for i, s, u, a in stuck],
        "needs_attention": [{"id": i, "status": s, "attention": a} for i, s, a in attention],
        "throughput_last_5_min": {
            "placed": placed or 0, "paid": reached.get("paid", 0), "delivered": reached.get("delivered", 0),
            "cancelled": reached.get("cancelled", 0),
        },
        "dead_letters": {"parked": parked, "waiting_in_queue": depths[DEAD_LETTER_QUEUE]},
        "unrouted_events": depths[UNROUTED_QUEUE],
        "outbox_backlog": await rt.refresh_backlog(),
        "low_stock": await _low_stock(rt.settings.inventory_url, rt.settings.ops_api_key),
    }


@router.get("/v1/ops/summary", dependencies=[require(Role.OPS)])
async def ops_summary(rt: Runtime) -> dict[str, Any]:
    return await summary(rt)


@router.get("/ops", response_class=HTMLResponse)
async def dashboard(request: Request, rt: Runtime, key: str | None = None) -> HTMLResponse:
    if key and "authorization" not in request.headers:
        role = rt.settings.api_keys.get(key)
        if role not in (Role.OPS, Role.ADMIN):
            raise Problem(401 if role is None else 403, "unauthorized", "Unauthorized", "an ops key is needed")
    else:
        await require(Role.OPS).dependency(request)
    return HTMLResponse(_render(await summary(rt)))


def _table(title: str, rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    if not rows:
        return f"<h2>{html.escape(title)}</h2><p class=ok>none</p>"
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr>{th}</tr>{body}</table>"


def _render(s: dict[str, Any]) -> str:
    t = s["throughput_last_5_min"]
    low = s["low_stock"]
    parts = [
        _table("Orders by status", sorted(s["orders_by_status"].items()), ("status", "orders")),
        _table("Throughput, last 5 minutes", [(k, v) for k, v in t.items()], ("reached", "orders")),
        _table("Stuck (no move for a while, not with the carrier)", [(o["id"], o["status"], o["since"]) for o in s["stuck"]],
               ("order", "status", "since")),
        _table("Needs attention", [(o["id"], o["status"], o["attention"]) for o in s["needs_attention"]],
               ("order", "status", "why")),
        _table("Messages", [("dead letters parked", s["dead_letters"]["parked"]),
                            ("dead letters waiting", s["dead_letters"]["waiting_in_queue"]),
                            ("events nobody subscribes to", s["unrouted_events"]),
                            ("outbox backlog", s["outbox_backlog"])], ("what", "count")),
        "<h2>Low stock</h2><p>inventory unavailable</p>" if low is None else
        _table("Low stock", [(i["sku"], i["warehouse"], i["available"], i.get("reorder_quantity")) for i in low],
               ("sku", "warehouse", "available", "reorder")),
    ]
    return (
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>"
        "<title>OMS ops</title><style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.ok{color:#080}</style></head><body>"
        f"<h1>OMS operations</h1><p>{html.escape(s['at'])} (refreshes every 5 s)</p>" + "".join(parts) + "</body></html>"
    )


@router.get("/v1/reports/sales", dependencies=[require(Role.OPS)])
async def sales_report(
    rt: Runtime,
    from_: datetime | None = Query(default=None, alias="from"),
    to: datetime | None = None,
    top: int = Query(default=5, ge=1, le=50),
) -> dict[str, Any]:
    """Orders, revenue by currency, best and worst sellers, refunds, and the average time orders
    spent in each status, for orders created in [from, to)."""
    query = select(Order)
    if from_:
        query = query.where(Order.created_at >= from_)
    if to:
        query = query.where(Order.created_at < to)
    async with rt.sessions() as session:
        orders = list(await session.scalars(query))
        sold = (
            await session.execute(
                select(OrderLine.sku, func.sum(OrderLine.quantity))
                .join(Order, Order.id == OrderLine.order_id)
                .where(Order.id.in_([o.id for o in orders]), Order.status.not_in(("cancelled",)))
                .group_by(OrderLine.sku)
            )
        ).all()
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    refunds: dict[str, Decimal] = defaultdict(Decimal)
    spent: dict[str, list[float]] = defaultdict(list)
    for o in orders:
        revenue[o.currency] += o.payment_amount
        refunds[o.currency] += o.refunded_amount
        for here, nxt in zip(o.history, o.history[1:], strict=False):
            spent[here.status].append((nxt.at - here.at).total_seconds())
    ranked = sorted(sold, key=lambda r: (-r[1], r[0]))
    return {
        "from": from_.isoformat() if from_ else None,
        "to": to.isoformat() if to else None,
        "orders": len(orders),
        "orders_by_status": dict(sorted(Counter(o.status for o in orders).items())),
        "revenue": {c: format(v - refunds[c], "f") for c, v in revenue.items()},
        "captured": {c: format(v, "f") for c, v in revenue.items()},
        "refunded": {c: format(v, "f") for c, v in refunds.items()},
        "best_sellers": [{"sku": s, "quantity": int(q)} for s, q in ranked[:top]],
        "worst_sellers": [{"sku": s, "quantity": int(q)} for s, q in list(reversed(ranked))[:top]],
        "average_seconds_in_status": {s: round(sum(v) / len(v), 3) for s, v in sorted(spent.items())},
    }
