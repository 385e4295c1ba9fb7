"""HTTP: carriers report a parcel's progress, signed (CONTRACT §7); ops and gateways read shipments."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError
from sqlalchemy import select

from chassis.db import held, table
from chassis.logs import get_logger
from chassis.settings import Role
from chassis.web import Problem, Runtime, require, validation_errors
from events.types import ShipmentStatus
from shipping import carriers, service
from shipping.db import Shipment

router = APIRouter(tags=["shipping"])
log = get_logger(__name__)


def _view(s: Any) -> dict[str, Any]:
    """``s``: a Shipment, or a parcel as :func:`service.by_tracking` read it."""
    return {
        "order_id": s.order_id,
        "shipment_id": s.shipment_id,
        "parcel": s.parcel,
        "carrier": s.carrier,
        "tracking_number": s.tracking_number,
        "status": s.status,
        "warehouse": s.warehouse,
        "estimated_delivery": s.estimated_delivery.isoformat(),
        "cancelled": s.cancelled,
        "return_expected": s.return_expected,
    }


@router.post("/v1/carriers/{carrier}/events", status_code=202)
async def carrier_event(
    carrier: Annotated[str, Path(max_length=40)], request: Request, rt: Runtime
) -> dict[str, Any]:
    """A carrier's scan. Its signature is checked on the raw body before anything in it is read:
    unsigned, wrongly signed or stale, it is 401 and nothing is recorded."""
    adapter: carriers.CarrierAdapter | None = request.app.state.carriers.get(carrier)
    if adapter is None:
        raise Problem(404, "not-found", "Not found", f"no carrier {carrier}")
    body = await request.body()
    try:
        scan = adapter.callback(dict(request.headers), body)
    except carriers.BadSignature as exc:
        log.warning("carrier_event.refused", carrier=carrier, why=str(exc))
        raise Problem(
            401, "bad-signature", "Unauthorized", f"the {carriers.SIGNATURE_HEADER} signature does not verify"
        ) from exc
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        fields = ", ".join(e["field"] for e in errors)
        raise Problem(
            422, "validation-error", "Invalid request", f"invalid fields: {fields}", errors=errors
        ) from exc
    async with rt.sessions.begin() as session:
        shipment = await service.by_tracking(session, scan.tracking_number)
        if shipment is None or shipment.carrier != carrier:
            raise Problem(404, "not-found", "Not found", f"{carrier} has no parcel {scan.tracking_number}")
        try:
            moved = await service.report(
                session,
                shipment,
                scan.status,
                scan.at,
                scan.location,
                estimated_delivery=scan.estimated_delivery,
            )
        except service.Refused as exc:
            raise Problem(409, "cancelled", "Shipment cancelled", str(exc)) from exc
        return {**_view(shipment), "accepted": moved}


@router.get("/v1/shipments/{shipment_id}", dependencies=[require(Role.OPS)])
async def get_shipment(shipment_id: Annotated[str, Path(max_length=64)], rt: Runtime) -> dict[str, Any]:
    """One parcel with its tracking trail, by its id (``shp_…``); an order id still names the
    order's first parcel, as before parcels had ids of their own. Ops only: shipping does not know
    which gateway placed an order, so a gateway reads its parcels through its own order
    (``GET /v1/orders/{id}``, ``shipments[].events``), which is scoped to it."""
    async with rt.sessions() as session:
        shipment = await service.by_id(session, shipment_id) or await service.by_order(session, shipment_id)
        if shipment is None:
            raise Problem(404, "not-found", "Not found", f"no shipment {shipment_id}")
        trail = await service.trail(session, shipment.shipment_id)
    return {**_view(shipment), "items": shipment.items or [], "events": trail}


@router.get("/v1/shipments", dependencies=[require(Role.OPS)])
async def list_shipments(
    rt: Runtime,
    status: ShipmentStatus | None = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """By order id; ``next`` is passed back as ``after`` (make verify reads this)."""
    shipments = table(Shipment)
    query = select(shipments).order_by(shipments.c.order_id).limit(limit)
    if status:
        query = query.where(shipments.c.status == status)
    if after:
        query = query.where(shipments.c.order_id > after)
    async with rt.sessions() as session:
        rows = held(await session.execute(query))
    return {"items": [_view(s) for s in rows], "next": rows[-1].order_id if len(rows) == limit else None}
