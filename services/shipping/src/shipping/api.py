"""HTTP: carriers report a parcel's progress (CONTRACT §7); ops and gateways read shipments."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from events.settings import Role
from events.types import ShipmentStatus
from events.web import Problem, Runtime, require
from shipping import parcels
from shipping.db import Shipment

router = APIRouter(tags=["shipping"])


class CarrierEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_number: Annotated[str, Field(min_length=1, max_length=40)]
    status: Literal["picked_up", "in_transit", "out_for_delivery", "delivered", "exception", "returned"]
    at: AwareDatetime
    location: Annotated[str, Field(max_length=200)] | None = None


def _view(s: Any) -> dict[str, Any]:
    """``s``: a Shipment, or a parcel as :func:`parcels.by_tracking` read it."""
    return {"order_id": s.order_id, "shipment_id": s.shipment_id, "carrier": s.carrier, "tracking_number": s.tracking_number,
            "status": s.status, "warehouse": s.warehouse, "estimated_delivery": s.estimated_delivery.isoformat(),
            "cancelled": s.cancelled, "return_expected": s.return_expected}


@router.post("/v1/carriers/{carrier}/events", status_code=202, dependencies=[require(Role.ADMIN)])
async def carrier_event(carrier: Annotated[str, Path(max_length=40)], rt: Runtime, event: Annotated[CarrierEvent, Body()]) -> dict[str, Any]:
    async with rt.sessions.begin() as session:
        shipment = await parcels.by_tracking(session, event.tracking_number)
        if shipment is None or shipment.carrier != carrier:
            raise Problem(404, "not-found", "Not found", f"{carrier} has no parcel {event.tracking_number}")
        try:
            moved = await parcels.report(session, shipment, ShipmentStatus(event.status), event.at, event.location)
        except parcels.Refused as exc:
            raise Problem(409, "cancelled", "Shipment cancelled", str(exc)) from exc
        return {**_view(shipment), "accepted": moved}


@router.get("/v1/shipments/{order_id}", dependencies=[require(Role.OPS)])
async def get_shipment(order_id: Annotated[str, Path(max_length=64)], rt: Runtime) -> dict[str, Any]:
    """Ops only: shipping does not know which gateway placed an order, so a gateway reads its
    parcels through its own order (``GET /v1/orders/{id}``), which is scoped to it."""
    async with rt.sessions() as session:
        shipment = await parcels.by_order(session, order_id)
    if shipment is None:
        raise Problem(404, "not-found", "Not found", f"no shipment for order {order_id}")
    return _view(shipment)


@router.get("/v1/shipments", dependencies=[require(Role.OPS)])
async def list_shipments(
    rt: Runtime,
    status: ShipmentStatus | None = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """By order id; ``next`` is passed back as ``after`` (make verify reads this)."""
    query = select(Shipment).order_by(Shipment.order_id).limit(limit)
    if status:
        query = query.where(Shipment.status == status)
    if after:
        query = query.where(Shipment.order_id > after)
    async with rt.sessions() as session:
        rows = list(await session.scalars(query))
    return {"items": [_view(s) for s in rows], "next": rows[-1].order_id if len(rows) == limit else None}


