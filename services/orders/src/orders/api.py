"""HTTP API of CONTRACT §4: place, read, list, cancel, change the address, return. Thin: each
route validates, then calls service.place_order or service.apply."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import and_, or_, select

from events.orders import Address, PlaceOrder
from events.settings import Role
from events.types import Channel, LineItem, OrderStatus
from events.web import Problem, Runtime, require, validation_errors
from orders import service
from orders.admission import Overloaded
from orders.db import Order
from orders.domain import ReturnRefused, business_errors, return_value
from orders.saga import AddressChangeRequested, AttentionResolved, CancelRequested, Refused, ReturnRequested

router = APIRouter(prefix="/v1/orders", tags=["orders"])


def _money(value: Any) -> str:
    return format(value, "f")


def view(order: Order) -> dict[str, Any]:
    """The order as CONTRACT §4 shows it."""
    return {
        "id": order.id,
        "status": order.status,
        "status_reason": order.status_reason,
        "customer": order.customer,
        "shipping_address": order.shipping_address,
        "items": [{"sku": li.sku, "quantity": li.quantity, "unit_price": _money(li.unit_price)} for li in order.lines],
        "total": _money(order.total),
        "currency": order.currency,
        "channel": order.channel,
        "payment": {
            "status": order.payment_status,
            "method": order.payment_method,
            "amount": _money(order.payment_amount if order.payment_amount else order.total),
            "refunded_amount": _money(order.refunded_amount),
        },
        "shipment": shipment_summary(order.shipment),
        "shipments": shipments_view(order.shipment),
        "history": [{"status": h.status, "at": h.at.isoformat(), "reason": h.reason} for h in order.history],
        "attention": order.attention,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
    }


_ADVANCE = ("created", "exception", "picked_up", "in_transit", "out_for_delivery", "delivered", "returned", "lost")


def shipments_view(shipment: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One entry per parcel (CONTRACT §4: ``shipments``)."""
    if not shipment:
        return []
    if "parcels" not in shipment:  # recorded before orders had parcels: its one parcel
        return [{**shipment, "warehouse": None, "items": [], "events": []}]
    keys = ("shipment_id", "warehouse", "carrier", "tracking_number", "tracking_url", "status", "estimated_delivery",
            "items", "events")
    return [{k: p.get(k) for k in keys} for p in shipment["parcels"]]


def shipment_summary(shipment: dict[str, Any] | None) -> dict[str, Any] | None:
    """``shipment``: the least advanced parcel (the one the customer still waits for)."""
    parcels = shipments_view(shipment)
    if not parcels:
        return None
    least = min(parcels, key=lambda p: _ADVANCE.index(p["status"]) if p["status"] in _ADVANCE else 0)
    return {k: least.get(k) for k in ("carrier", "tracking_number", "status", "estimated_delivery", "tracking_url")}


def _invalid(errors: list[dict[str, str]]) -> Problem:
    fields = ", ".join(e["field"] for e in errors)
    return Problem(422, "validation-error", "Invalid request", f"invalid fields: {fields}", errors=errors)


async def _load(rt: Any, order_id: str) -> Order:
    async with rt.sessions() as session:
        order = await session.get(Order, order_id)
    if order is None:
        raise Problem(404, "not-found", "Not found", f"no order {order_id}")
    return order


@router.post("", status_code=202, dependencies=[require(Role.GATEWAY)])
async def place_order(
    rt: Runtime,
    http: Request,
    response: Response,
    body: Annotated[dict[str, Any], Body()],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    if not idempotency_key:
        raise _invalid([{"field": "Idempotency-Key", "message": "the Idempotency-Key header is required", "type": "missing"}])
    try:
        request = PlaceOrder.model_validate(body)
    except ValidationError as exc:
        raise _invalid(validation_errors(exc.errors())) from exc
    errors = business_errors(request, max_quantity_per_line=rt.settings.max_quantity_per_line)
    if errors:
        raise _invalid([e.model_dump() for e in errors])
    try:
        placed = await service.place_order(rt.sessions, request, key=f"http:{idempotency_key}", settings=rt.settings,
                                           admission=http.app.state.admission)
    except Overloaded as exc:  # nothing stored: the same key again later places the order
        raise Problem(503, "overloaded", "Too many orders in flight",
                      f"orders are arriving faster than they can be handled: retry after {exc.retry_after} s "
                      "with the same Idempotency-Key", headers={"Retry-After": str(exc.retry_after)}) from exc
    except service.KeyReused as exc:
        raise Problem(422, "idempotency-key-reused", "Idempotency-Key reused",
                      "this Idempotency-Key was used for a different request") from exc
    except service.KeyInProgress as exc:
        raise Problem(409, "idempotency-key-in-progress", "Request in progress",
                      "a request with this Idempotency-Key is still being handled: retry later") from exc
    response.headers["Location"] = f"/v1/orders/{placed.order_id}"
    return view(await _load(rt, placed.order_id))


@router.get("/{order_id}", dependencies=[require(Role.GATEWAY, Role.OPS)])
async def get_order(order_id: str, rt: Runtime) -> dict[str, Any]:
    return view(await _load(rt, order_id))


def _cursor(order: Order) -> str:
    return base64.urlsafe_b64encode(f"{order.created_at.isoformat()}|{order.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), order_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid([{"field": "cursor", "message": "not a cursor this API gave out", "type": "value_error"}]) from exc


@router.get("", dependencies=[require(Role.GATEWAY, Role.OPS)])
async def list_orders(
    rt: Runtime,
    status: OrderStatus | None = None,
    customer_id: str | None = None,
    channel: Channel | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Newest first; ``next_cursor`` continues after the last order of this page."""
    query = select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    if status:
        query = query.where(Order.status == status)
    if customer_id:
        query = query.where(Order.customer_id == customer_id)
    if channel:
        query = query.where(Order.channel == channel)
    if created_from:
        query = query.where(Order.created_at >= created_from)
    if created_to:
        query = query.where(Order.created_at < created_to)
    if cursor:
        at, last_id = _decode_cursor(cursor)
        query = query.where(or_(Order.created_at < at, and_(Order.created_at == at, Order.id < last_id)))
    async with rt.sessions() as session:
        orders = list(await session.scalars(query))
    page = orders[:limit]
    return {"items": [view(o) for o in page], "next_cursor": _cursor(page[-1]) if len(orders) > limit else None}


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=500)] = ""


async def _request(rt: Any, order_id: str, request: object, before: Any = None) -> dict[str, Any]:
    try:
        order = await service.apply(rt.sessions, order_id, request, settings=rt.settings, before=before)
    except Refused as exc:
        raise Problem(409, "not-allowed-now", "Not allowed in this status", str(exc)) from exc
    if order is None:
        raise Problem(404, "not-found", "Not found", f"no order {order_id}")
    return view(await _load(rt, order_id))


@router.post("/{order_id}/cancel", status_code=202, dependencies=[require(Role.GATEWAY)])
async def cancel_order(order_id: str, rt: Runtime, body: Annotated[CancelBody, Body()] = CancelBody()) -> dict[str, Any]:
    """Until the order is shipped: cancelled, stock released, payment refunded. From then on: 409."""
    return await _request(rt, order_id, CancelRequested())


@router.patch("/{order_id}/shipping-address", status_code=202, dependencies=[require(Role.GATEWAY)])
async def change_address(order_id: str, rt: Runtime, address: Annotated[Address, Body()]) -> dict[str, Any]:
    def set_address(order: Order) -> None:
        order.shipping_address = address.model_dump(mode="json")

    return await _request(rt, order_id, AddressChangeRequested(), before=set_address)


@router.post("/{order_id}/attention/resolve", dependencies=[require(Role.ADMIN)])
async def resolve_attention(order_id: str, rt: Runtime) -> dict[str, Any]:
    """Ops say they handled by hand what the saga marked for attention (a refund that got no
    answer, a parcel the carrier took after the order was cancelled): the mark is cleared and the
    order leaves the dashboard's "Needs attention". 409 when nothing about it waits for a person."""
    return await _request(rt, order_id, AttentionResolved())


class ReturnBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[LineItem], Field(min_length=1)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


@router.post("/{order_id}/returns", status_code=202, dependencies=[require(Role.GATEWAY)])
async def request_return(order_id: str, rt: Runtime, body: Annotated[ReturnBody, Body()]) -> dict[str, Any]:
    """After delivery: the parcel is expected back; when it arrives, the stock is put back and the
    returned items refunded."""
    order = await _load(rt, order_id)
    lines = [{"sku": li.sku, "quantity": li.quantity, "unit_price": li.unit_price} for li in order.lines]
    try:
        amount = return_value(lines, body.items)
    except ReturnRefused as exc:
        raise _invalid([{"field": "items", "message": str(exc), "type": "value_error"}]) from exc
    return await _request(rt, order_id, ReturnRequested(items=list(body.items), amount=amount))
