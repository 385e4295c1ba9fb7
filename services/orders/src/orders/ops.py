"""What ops watch: orders by status, where orders get stuck, throughput, dead letters, low stock
(``GET /v1/ops/summary``, JSON; the console's dashboard at ``/ops`` shows the same, see
orders.console), and the sales report (``GET /v1/reports/sales``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aio_pika
import httpx
from fastapi import APIRouter, Query, Request
from sqlalchemy import func, select

from chassis.deadletters import parked_count
from chassis.settings import Role
from chassis.web import Runtime, require
from events.names import DEAD_LETTER_QUEUE, UNROUTED_QUEUE
from orders import service
from orders.admission import Admission
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


async def _payment_mismatches(url: str, key: str) -> list[dict[str, Any]] | None:
    """What payments' last reconciliation found: payments a provider's books disagree with."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            r = await client.get(
                f"{url}/v1/providers/reconciliation", headers={"Authorization": f"Bearer {key}"}
            )
            r.raise_for_status()
            return r.json()["mismatches"]
    except Exception:
        return None


async def summary(rt: Any, admission: Admission) -> dict[str, Any]:
    now = datetime.now(UTC)
    recent = now - timedelta(minutes=5)
    stuck_before = now - timedelta(seconds=rt.settings.stuck_after_seconds)
    async with rt.sessions() as session:
        by_status = dict(
            (await session.execute(select(Order.status, func.count()).group_by(Order.status))).all()
        )
        stuck = (
            await session.execute(
                select(Order.id, Order.status, Order.updated_at, Order.attention)
                .where(Order.status.not_in(FINAL + CARRIER_STEPS), Order.updated_at < stuck_before)
                .order_by(Order.updated_at)
                .limit(50)
            )
        ).all()
        attention = (
            await session.execute(
                select(Order.id, Order.status, Order.attention).where(Order.attention.is_not(None)).limit(50)
            )
        ).all()
        placed = await session.scalar(
            select(func.count()).select_from(Order).where(Order.created_at >= recent)
        )
        reached = dict(
            (
                await session.execute(
                    select(OrderHistory.status, func.count())
                    .where(
                        OrderHistory.at >= recent, OrderHistory.status.in_(("paid", "delivered", "cancelled"))
                    )
                    .group_by(OrderHistory.status)
                )
            ).all()
        )
    waiting = await service.waiting_long(rt.sessions, settings=rt.settings)
    parked = await parked_count(rt.sessions)  # its own session: never two at once (SQLite's write lock)
    depths = await _queue_depths(rt.settings.amqp_url)
    return {
        "at": now.isoformat(),
        "orders_by_status": by_status,
        "stuck": [{"id": i, "status": s, "since": u.isoformat(), "attention": a} for i, s, u, a in stuck]
        + await service.stuck_parcels(
            rt.sessions, settings=rt.settings
        ),  # a parcel in one carrier status too long
        "needs_attention": [{"id": i, "status": s, "attention": a} for i, s, a in attention],
        "delivery_exceptions": await service.delivery_exceptions(
            rt.sessions
        ),  # failed attempts, awaiting the next
        "saga_deadline_near": [
            {
                "id": i,
                "status": s,
                "waiting_since": w.isoformat(),
                "gives_up_at": (w + timedelta(seconds=rt.settings.saga_timeout_seconds)).isoformat(),
            }
            for i, s, w in waiting
        ],
        "throughput_last_5_min": {
            "placed": placed or 0,
            "paid": reached.get("paid", 0),
            "delivered": reached.get("delivered", 0),
            "cancelled": reached.get("cancelled", 0),
        },
        "dead_letters": {"parked": parked, "waiting_in_queue": depths[DEAD_LETTER_QUEUE]},
        "unrouted_events": depths[UNROUTED_QUEUE],
        "outbox_backlog": await rt.refresh_backlog(),
        "admission": {"open": admission.open, "refused": admission.refused},  # this replica's door
        "low_stock": await _low_stock(rt.settings.inventory_url, rt.settings.ops_api_key),
        "payment_mismatches": await _payment_mismatches(rt.settings.payments_url, rt.settings.ops_api_key),
    }


@router.get("/v1/ops/summary", dependencies=[require(Role.OPS)])
async def ops_summary(request: Request, rt: Runtime) -> dict[str, Any]:
    return await summary(rt, request.app.state.admission)


@router.get("/v1/reports/sales", dependencies=[require(Role.OPS)])
async def sales_report(
    rt: Runtime,
    from_: datetime | None = Query(default=None, alias="from"),
    to: datetime | None = None,
    top: int = Query(default=5, ge=1, le=50),
) -> dict[str, Any]:
    """Orders, revenue by currency, best and worst sellers, refunds, and the average time orders
    spent in each status, for orders created in [from, to). Aggregated by the database: no order
    is loaded, however many the period holds."""
    period = []
    if from_:
        period.append(Order.created_at >= from_)
    if to:
        period.append(Order.created_at < to)
    # How long each history row lasted: until the order's next one (none after its last status).
    left_at = func.lead(OrderHistory.at, type_=OrderHistory.at.type).over(
        partition_by=OrderHistory.order_id, order_by=OrderHistory.id
    )
    steps = (
        select(OrderHistory.status, OrderHistory.at, left_at.label("left_at"))
        .join(Order, Order.id == OrderHistory.order_id)
        .where(*period)
        .subquery()
    )
    async with rt.sessions() as session:
        by_status = dict(
            (
                await session.execute(
                    select(Order.status, func.count())
                    .where(*period)
                    .group_by(Order.status)
                    .order_by(Order.status)
                )
            ).all()
        )
        money = (
            await session.execute(
                select(Order.currency, func.sum(Order.payment_amount), func.sum(Order.refunded_amount))
                .where(*period)
                .group_by(Order.currency)
                .order_by(Order.currency)
            )
        ).all()
        sold = (
            await session.execute(
                select(OrderLine.sku, func.sum(OrderLine.quantity))
                .join(Order, Order.id == OrderLine.order_id)
                .where(*period, Order.status != "cancelled")
                .group_by(OrderLine.sku)
            )
        ).all()
        spans = (
            await session.execute(
                select(steps.c.status, steps.c.at, steps.c.left_at).where(steps.c.left_at.is_not(None))
            )
        ).all()
    spent: dict[str, list[float]] = defaultdict(list)
    for status, at, left in spans:  # the difference is taken here: SQLite and PostgreSQL differ on it
        spent[status].append((left - at).total_seconds())
    ranked = sorted(((sku, int(q)) for sku, q in sold), key=lambda r: (-r[1], r[0]))
    return {
        "from": from_.isoformat() if from_ else None,
        "to": to.isoformat() if to else None,
        "orders": sum(by_status.values()),
        "orders_by_status": by_status,
        "revenue": {c: format(Decimal(cap) - Decimal(ref), "f") for c, cap, ref in money},
        "captured": {c: format(Decimal(cap), "f") for c, cap, _ in money},
        "refunded": {c: format(Decimal(ref), "f") for c, _, ref in money},
        "best_sellers": [{"sku": s, "quantity": q} for s, q in ranked[:top]],
        "worst_sellers": [{"sku": s, "quantity": q} for s, q in list(reversed(ranked))[:top]],
        "average_seconds_in_status": {s: round(sum(v) / len(v), 3) for s, v in sorted(spent.items())},
    }
