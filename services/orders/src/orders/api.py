"""HTTP API of CONTRACT §4: place, read, list, cancel, change the address, return. Thin: each
route validates, then calls the service function of that change with the caller's name as the
actor. A gateway key sees only the orders it placed (CONTRACT §3): another's is 404, as if it did
not exist, and is left out of lists; ops and admin see every order."""

from __future__ import annotations

import base64
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select

from chassis.settings import Role
from chassis.web import Caller, Problem, Runtime, require
from events.orders import Address, PlaceOrder
from events.types import Channel, LineItem, OrderStatus, money_places
from orders import service
from orders.admission import Overloaded
from orders.config import Settings
from orders.db import Order
from orders.domain import ReturnRefused, business_errors
from orders.saga import Refused

router = APIRouter(prefix="/v1/orders", tags=["orders"])

OrderId = Annotated[str, Path(min_length=1, max_length=64)]


def _money(value: Any, currency: str) -> str:
    """An amount as a decimal string in the currency's minor units ("100" yen, "39.90" yuan)."""
    exponent = money_places(currency)
    return format(Decimal(value).quantize(Decimal(1).scaleb(-(2 if exponent is None else exponent))), "f")


def _payment_action(order: Order) -> dict[str, Any]:
    """What the customer is to do to pay (a QR code or a redirect), while the order waits for it."""
    action = (order.saga or {}).get("action")
    return (
        {"action": action}
        if action and order.payment_status == "pending" and order.status == "confirmed"
        else {}
    )


def view(order: Any) -> dict[str, Any]:
    """The order as CONTRACT §4 shows it."""
    cur = order.currency
    return {
        "id": order.id,
        "status": order.status,
        "status_reason": order.status_reason,
        "customer": order.customer,
        "shipping_address": order.shipping_address,
        "items": [
            {"sku": li.sku, "quantity": li.quantity, "unit_price": _money(li.unit_price, cur)}
            for li in order.lines
        ],
        "total": _money(order.total, cur),
        "currency": order.currency,
        "channel": order.channel,
        "payment": {
            "status": order.payment_status,
            "method": order.payment_method,
            "amount": _money(order.payment_amount if order.payment_amount else order.total, cur),
            "refunded_amount": _money(order.refunded_amount, cur),
            **_payment_action(order),
        },
        "shipment": shipment_summary(order.shipment),
        "shipments": shipments_view(order.shipment),
        "history": [
            {"status": h.status, "at": h.at.isoformat(), "reason": h.reason, "actor": h.actor, "note": h.note}
            for h in order.history
        ],
        "attention": order.attention,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
    }


_ADVANCE = (
    "created",
    "exception",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
    "returned",
    "lost",
)


def shipments_view(shipment: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One entry per parcel (CONTRACT §4: ``shipments``)."""
    if not shipment:
        return []
    if "parcels" not in shipment:  # recorded before orders had parcels: its one parcel
        return [{**shipment, "warehouse": None, "items": [], "events": []}]
    keys = (
        "shipment_id",
        "warehouse",
        "carrier",
        "tracking_number",
        "tracking_url",
        "status",
        "estimated_delivery",
        "items",
        "events",
    )
    return [{k: p.get(k) for k in keys} for p in shipment["parcels"]]


def shipment_summary(shipment: dict[str, Any] | None) -> dict[str, Any] | None:
    """``shipment``: the least advanced parcel (the one the customer still waits for)."""
    parcels = shipments_view(shipment)
    if not parcels:
        return None
    least = min(parcels, key=lambda p: _ADVANCE.index(p["status"]) if p["status"] in _ADVANCE else 0)
    return {
        k: least.get(k)
        for k in ("carrier", "tracking_number", "status", "estimated_delivery", "tracking_url")
    }


def _invalid(errors: list[dict[str, str]]) -> Problem:
    fields = ", ".join(e["field"] for e in errors)
    return Problem(422, "validation-error", "Invalid request", f"invalid fields: {fields}", errors=errors)


def _settings(rt: Any) -> Settings:
    return cast(Settings, rt.settings)


def _gateway(caller: Caller) -> str | None:
    """The gateway whose orders alone this caller sees; None: every order (ops, admin)."""
    return caller.name if caller.role is Role.GATEWAY else None


def _not_found(order_id: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"no order {order_id}")


async def _load(rt: Any, order_id: str, gateway: str | None = None) -> Any:
    async with rt.sessions() as session:
        order = await service.read_one(session, order_id)
    if order is None or (gateway is not None and order.gateway != gateway):
        raise _not_found(order_id)
    return order


@router.post("", status_code=202)
async def place_order(
    caller: Annotated[Caller, require(Role.GATEWAY)],
    rt: Runtime,
    http: Request,
    response: Response,
    request: Annotated[PlaceOrder, Body()],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    """Place an order (CONTRACT §4): 202 with the order; the same Idempotency-Key and body again
    is the same order, another body 422, one still being handled 409."""
    if not idempotency_key:
        raise _invalid(
            [
                {
                    "field": "Idempotency-Key",
                    "message": "the Idempotency-Key header is required",
                    "type": "missing",
                }
            ]
        )
    errors = business_errors(request, max_quantity_per_line=_settings(rt).max_quantity_per_line)
    if errors:
        raise _invalid([e.model_dump() for e in errors])
    try:
        placed = await service.place_order(
            rt.sessions,
            request,
            key=f"http:{idempotency_key}",
            actor=caller.name,
            settings=_settings(rt),
            admission=http.app.state.admission,
        )
    except Overloaded as exc:  # nothing stored: the same key again later places the order
        raise Problem(
            503,
            "overloaded",
            "Too many orders in flight",
            f"orders are arriving faster than they can be handled: retry after {exc.retry_after} s "
            "with the same Idempotency-Key",
            headers={"Retry-After": str(exc.retry_after)},
        ) from exc
    except service.KeyReused as exc:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was used for a different request",
        ) from exc
    except service.KeyInProgress as exc:
        raise Problem(
            409,
            "idempotency-key-in-progress",
            "Request in progress",
            "a request with this Idempotency-Key is still being handled: retry later",
        ) from exc
    response.headers["Location"] = f"/v1/orders/{placed.order_id}"
    return view(await _load(rt, placed.order_id))


@router.get("/{order_id}")
async def get_order(
    order_id: OrderId, caller: Annotated[Caller, require(Role.GATEWAY, Role.OPS)], rt: Runtime
) -> dict[str, Any]:
    return view(await _load(rt, order_id, _gateway(caller)))


def _cursor(order: Any) -> str:
    return base64.urlsafe_b64encode(f"{order.created_at.isoformat()}|{order.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), order_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(
            [{"field": "cursor", "message": "not a cursor this API gave out", "type": "value_error"}]
        ) from exc


@router.get("")
async def list_orders(
    caller: Annotated[Caller, require(Role.GATEWAY, Role.OPS)],
    rt: Runtime,
    status: OrderStatus | None = None,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    channel: Channel | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Newest first; ``next_cursor`` continues after the last order of this page."""
    query = select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    if (gateway := _gateway(caller)) is not None:
        query = query.where(Order.gateway == gateway)
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
        orders = await service.read(session, query)
    page = orders[:limit]
    return {
        "items": [view(o) for o in page],
        "next_cursor": _cursor(page[-1]) if len(orders) > limit else None,
    }


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=500)] = ""


async def _answer(rt: Any, order_id: str, change: Any, gateway: str | None) -> dict[str, Any]:
    """Run a person's change; its outcome as the API answers it."""
    try:
        order = await change
    except Refused as exc:
        raise Problem(409, "not-allowed-now", "Not allowed in this status", str(exc)) from exc
    if order is None:
        raise _not_found(order_id)
    return view(await _load(rt, order_id, gateway))


@router.post("/{order_id}/cancel", status_code=202)
async def cancel_order(
    order_id: OrderId,
    caller: Annotated[Caller, require(Role.GATEWAY)],
    rt: Runtime,
    body: Annotated[CancelBody, Body()] = CancelBody(),
) -> dict[str, Any]:
    """Until the order is shipped: cancelled, stock released, payment refunded. From then on: 409."""
    gateway = _gateway(caller)
    return await _answer(
        rt,
        order_id,
        service.cancel(
            rt.sessions,
            order_id,
            actor=caller.name,
            gateway=gateway,
            note=body.reason or None,
            settings=_settings(rt),
        ),
        gateway,
    )


@router.patch("/{order_id}/shipping-address", status_code=202)
async def change_address(
    order_id: OrderId,
    caller: Annotated[Caller, require(Role.GATEWAY)],
    rt: Runtime,
    address: Annotated[Address, Body()],
) -> dict[str, Any]:
    gateway = _gateway(caller)
    change = service.change_address(
        rt.sessions, order_id, address, actor=caller.name, gateway=gateway, settings=_settings(rt)
    )
    return await _answer(rt, order_id, change, gateway)


@router.post("/{order_id}/attention/resolve")
async def resolve_attention(
    order_id: OrderId,
    caller: Annotated[Caller, require(Role.ADMIN)],
    rt: Runtime,
    body: Annotated[CancelBody, Body()] = CancelBody(),
) -> dict[str, Any]:
    """Ops say they handled by hand what the saga marked for attention (a refund that got no
    answer, a parcel the carrier took after the order was cancelled): the mark is cleared and the
    order leaves the dashboard's "Needs attention". 409 when nothing about it waits for a person."""
    change = service.resolve_attention(
        rt.sessions, order_id, actor=caller.name, note=body.reason or None, settings=_settings(rt)
    )
    return await _answer(rt, order_id, change, None)


class ReturnBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[LineItem], Field(min_length=1, max_length=100)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


@router.post("/{order_id}/returns", status_code=202)
async def request_return(
    order_id: OrderId,
    caller: Annotated[Caller, require(Role.GATEWAY)],
    rt: Runtime,
    body: Annotated[ReturnBody, Body()],
) -> dict[str, Any]:
    """After delivery: the parcel is expected back; when it arrives, the stock is put back and the
    returned items refunded."""
    gateway = _gateway(caller)
    try:
        order = await service.request_return(
            rt.sessions,
            order_id,
            list(body.items),
            actor=caller.name,
            gateway=gateway,
            note=body.reason,
            settings=_settings(rt),
        )
    except ReturnRefused as exc:
        raise _invalid([{"field": "items", "message": str(exc), "type": "value_error"}]) from exc
    except Refused as exc:
        raise Problem(409, "not-allowed-now", "Not allowed in this status", str(exc)) from exc
    if order is None:
        raise _not_found(order_id)
    return view(await _load(rt, order_id, gateway))
