"""HTTP (CONTRACT §7): warehouses, receipts, adjustments, stock levels, low stock, reservations;
the stock turnover report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import case, func, select

from chassis.db import table
from chassis.settings import Role
from chassis.web import Caller, Problem, Runtime, require
from events.types import CountryCode, Sku
from inventory import domain, service
from inventory.config import Settings
from inventory.db import Reservation, Stock, StockMovement, Warehouse

_stock, _warehouse = table(Stock), table(Warehouse)

router = APIRouter(tags=["inventory"])


WarehouseCode = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,20}$")]


class WarehouseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]
    country: CountryCode
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None


class Receipt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warehouse: Annotated[str, Field(min_length=1, max_length=20)]
    sku: Sku
    quantity: Annotated[int, Field(gt=0, le=1_000_000)]


class Adjustment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warehouse: Annotated[str, Field(min_length=1, max_length=20)]
    sku: Sku
    on_hand: Annotated[int, Field(ge=0, le=1_000_000)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warehouse: Annotated[str, Field(min_length=1, max_length=20)]
    threshold: Annotated[int, Field(ge=0, le=1_000_000)]
    reorder_quantity: Annotated[int, Field(gt=0, le=1_000_000)] | None = None


def _settings(rt: Any) -> Settings:
    return cast(Settings, rt.settings)


def _level(row: service.Level) -> dict[str, Any]:
    return {
        "warehouse": row.warehouse,
        "on_hand": row.on_hand,
        "reserved": row.reserved,
        "available": row.on_hand - row.reserved,
    }


def _unknown_warehouse(code: str) -> Problem:
    return Problem(
        422,
        "validation-error",
        "Invalid request",
        "invalid fields: warehouse",
        errors=[{"field": "warehouse", "message": f"no warehouse {code}", "type": "value_error"}],
    )


@router.put("/v1/warehouses/{code}", dependencies=[require(Role.ADMIN)])
async def put_warehouse(
    code: WarehouseCode, rt: Runtime, body: Annotated[WarehouseBody, Body()]
) -> dict[str, Any]:
    async with rt.sessions.begin() as session:
        await service.put_warehouse(session, code, body.model_dump())
    return {"code": code, **body.model_dump()}


@router.get("/v1/warehouses", dependencies=[require(Role.OPS)])
async def list_warehouses(rt: Runtime) -> dict[str, Any]:
    async with rt.sessions() as session:
        rows = (await session.execute(select(_warehouse).order_by(_warehouse.c.code))).all()
        return {
            "items": [
                {
                    "code": w.code,
                    "name": w.name,
                    "country": w.country,
                    "latitude": w.latitude,
                    "longitude": w.longitude,
                }
                for w in rows
            ]
        }


@router.post("/v1/stock/receipts", status_code=201)
async def receive(
    caller: Annotated[Caller, require(Role.ADMIN)], rt: Runtime, body: Annotated[Receipt, Body()]
) -> dict[str, Any]:
    async with rt.sessions.begin() as session:
        if await session.scalar(select(_warehouse.c.code).where(_warehouse.c.code == body.warehouse)) is None:
            raise _unknown_warehouse(body.warehouse)
        row = await service.receive(
            session,
            body.warehouse,
            body.sku,
            body.quantity,
            actor=caller.name,
            threshold=_settings(rt).default_low_stock_threshold,
            reorder=_settings(rt).default_reorder_quantity,
        )
        return {"sku": body.sku, **_level(row)}


@router.post("/v1/stock/adjustments")
async def adjust(
    caller: Annotated[Caller, require(Role.ADMIN)], rt: Runtime, body: Annotated[Adjustment, Body()]
) -> dict[str, Any]:
    """A count: ``on_hand`` is what is on the shelf now (never below what is reserved: 409)."""
    async with rt.sessions.begin() as session:
        if await session.scalar(select(_warehouse.c.code).where(_warehouse.c.code == body.warehouse)) is None:
            raise _unknown_warehouse(body.warehouse)
        try:
            row = await service.adjust(
                session,
                body.warehouse,
                body.sku,
                body.on_hand,
                body.reason,
                actor=caller.name,
                threshold=_settings(rt).default_low_stock_threshold,
                reorder=_settings(rt).default_reorder_quantity,
            )
        except service.Conflict as exc:
            raise Problem(409, "below-reserved", "Below what is reserved", str(exc)) from exc
        return {"sku": body.sku, **_level(row)}


@router.get("/v1/stock/low", dependencies=[require(Role.OPS)])
async def low_stock(rt: Runtime) -> dict[str, Any]:
    async with rt.sessions() as session:
        rows = await service.levels(
            session,
            select(_stock)
            .where(_stock.c.on_hand - _stock.c.reserved <= _stock.c.low_stock_threshold)
            .order_by(_stock.c.sku, _stock.c.warehouse),
        )
        return {
            "items": [
                {
                    "sku": r.sku,
                    **_level(r),
                    "threshold": r.low_stock_threshold,
                    "reorder_quantity": domain.reorder_suggestion(
                        r.on_hand - r.reserved, r.low_stock_threshold, r.reorder_quantity
                    ),
                }
                for r in rows
            ]
        }


@router.put("/v1/stock/{sku}/threshold", dependencies=[require(Role.ADMIN)])
async def set_threshold(
    sku: Annotated[str, Path(max_length=64)], rt: Runtime, body: Annotated[Threshold, Body()]
) -> dict[str, Any]:
    async with rt.sessions.begin() as session:
        row = await service.set_threshold(session, body.warehouse, sku, body.threshold, body.reorder_quantity)
        if row is None:
            raise Problem(404, "not-found", "Not found", f"no {sku} at {body.warehouse}")
        return {
            "sku": sku,
            **_level(row),
            "threshold": row.low_stock_threshold,
            "reorder_quantity": row.reorder_quantity,
        }


@router.get("/v1/stock/{sku}", dependencies=[require(Role.OPS, Role.GATEWAY)])
async def get_stock(sku: Annotated[str, Path(max_length=64)], rt: Runtime) -> dict[str, Any]:
    async with rt.sessions() as session:
        rows = await service.levels(
            session, select(_stock).where(_stock.c.sku == sku).order_by(_stock.c.warehouse)
        )
    if not rows:
        raise Problem(404, "not-found", "Not found", f"unknown SKU {sku}")
    on_hand, reserved = sum(r.on_hand for r in rows), sum(r.reserved for r in rows)
    return {
        "sku": sku,
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
        "warehouses": [_level(r) for r in rows],
    }


@router.get("/v1/reservations", dependencies=[require(Role.OPS)])
async def list_reservations(
    rt: Runtime,
    status: Annotated[str | None, Query(pattern="^(reserved|released|committed)$")] = None,
    order_id: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """Reservations in id order; ``next`` is passed back as ``after`` (make verify reads this)."""
    reservations = table(Reservation)
    query = select(reservations).order_by(reservations.c.id).limit(limit)
    if status:
        query = query.where(reservations.c.status == status)
    if order_id:
        query = query.where(reservations.c.order_id == order_id)
    if after is not None:
        query = query.where(reservations.c.id > after)
    async with rt.sessions() as session:
        rows = list((await session.execute(query)).all())
        total = await session.scalar(select(func.count()).select_from(Reservation))
    return {
        "items": [
            {
                "order_id": r.order_id,
                "warehouse": r.warehouse,
                "sku": r.sku,
                "quantity": r.quantity,
                "status": r.status,
            }
            for r in rows
        ],
        "next": rows[-1].id if len(rows) == limit else None,
        "total": total,
    }


# The movements that change the units on the shelf (reservations and releases change what is held).
ON_SHELF = ("receipt", "adjustment", "commit", "restock")
_NOT_MOVED = SimpleNamespace(after=0, net=0, shipped=0, received=0, returned=0, counted=0)


@router.get("/v1/reports/stock", dependencies=[require(Role.OPS)])
async def stock_report(
    rt: Runtime,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
) -> dict[str, Any]:
    """Stock turnover per SKU over [from, to) (the last 30 days by default), from the movements:
    units on hand when the period opened and closed, shipped, received, returned and counted in
    it, the turnover (shipped ÷ average on hand) and the days of cover left at that pace. Fastest
    movers first."""
    to = to or datetime.now(UTC)
    from_ = from_ or to - timedelta(days=30)
    if from_.tzinfo is None or to.tzinfo is None or from_ >= to:
        raise Problem(
            422,
            "validation-error",
            "Invalid request",
            "invalid fields: from, to",
            errors=[
                {
                    "field": "from",
                    "message": "from and to need a time zone, and from must come before to",
                    "type": "value_error",
                }
            ],
        )
    m = StockMovement
    on_shelf, in_period = m.kind.in_(ON_SHELF), (m.at >= from_) & (m.at < to)

    def total(condition: Any, sign: int = 1) -> Any:
        return func.coalesce(func.sum(case((condition, sign * m.quantity), else_=0)), 0)

    async with rt.sessions() as session:
        moved = {
            row.sku: row
            for row in await session.execute(
                select(
                    m.sku,
                    total(on_shelf & (m.at >= to)).label("after"),
                    total(on_shelf & in_period).label("net"),
                    total((m.kind == "commit") & in_period, -1).label("shipped"),
                    total((m.kind == "receipt") & in_period).label("received"),
                    total((m.kind == "restock") & in_period).label("returned"),
                    total((m.kind == "adjustment") & in_period).label("counted"),
                )
                .where(m.at >= from_)
                .group_by(m.sku)
            )
        }
        levels = (
            await session.execute(
                select(Stock.sku, func.sum(Stock.on_hand), func.sum(Stock.on_hand - Stock.reserved)).group_by(
                    Stock.sku
                )
            )
        ).all()
    days = (to - from_).total_seconds() / 86400
    items = []
    for sku, on_hand, available in levels:
        row = moved.get(sku, _NOT_MOVED)
        t = domain.turnover(
            closing=on_hand - row.after,
            net_change=row.net,
            shipped=row.shipped,
            available=available,
            days=days,
        )
        items.append(
            {
                "sku": sku,
                "on_hand": on_hand,
                "available": available,
                "opening": t.opening,
                "closing": t.closing,
                "shipped": row.shipped,
                "received": row.received,
                "returned": row.returned,
                "counted": row.counted,
                "turnover": t.turnover,
                "days_of_cover": t.days_of_cover,
            }
        )
    items.sort(key=lambda i: (-(i["turnover"] or 0), i["sku"]))
    return {"from": from_.isoformat(), "to": to.isoformat(), "items": items}
