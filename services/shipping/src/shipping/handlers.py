"""Subscribers: each command → shipment change + events, with the inbox record, in ONE transaction."""

from __future__ import annotations

from typing import Annotated

from faststream.rabbit import RabbitRouter
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis import inbox
from chassis.broker import Permanent, Resource, queue
from events import topology
from events.envelope import Envelope
from events.shipping import CancelShipment, ChangeShipmentAddress, CreateShipment, ExpectReturn
from shipping import carriers, service
from shipping.config import Settings

router = RabbitRouter()
Sessions = Annotated[async_sessionmaker, Resource("sessions")]
Config = Annotated[Settings, Resource("settings")]
Carriers = Annotated[dict[str, carriers.CarrierAdapter], Resource("carriers")]

CREATE, ADDRESS, CANCEL, RETURN = (
    topology.command_queue(k)
    for k in (
        "shipping.create_shipment",
        "shipping.change_address",
        "shipping.cancel_shipment",
        "shipping.expect_return",
    )
)


@router.subscriber(queue(CREATE))
async def handle_create_shipment(
    msg: Envelope[CreateShipment], sessions: Sessions, settings: Config, adapters: Carriers
) -> None:
    step = settings.simulation_step_seconds if settings.carrier_simulation else None
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, CREATE):
            await service.create(session, msg.data, msg, adapters=adapters, step_seconds=step)


@router.subscriber(queue(ADDRESS))
async def handle_change_address(msg: Envelope[ChangeShipmentAddress], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, ADDRESS):
            await service.change_address(session, msg.data.order_id, msg.data.address.model_dump(mode="json"))


@router.subscriber(queue(CANCEL))
async def handle_cancel_shipment(
    msg: Envelope[CancelShipment], sessions: Sessions, adapters: Carriers
) -> None:
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, CANCEL):
            await service.cancel(session, msg.data.order_id, msg, adapters)


@router.subscriber(queue(RETURN))
async def handle_expect_return(msg: Envelope[ExpectReturn], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, RETURN):
            try:
                await service.expect_return(
                    session, msg.data.order_id, list(msg.data.items), msg.data.shipment_id
                )
            except LookupError as exc:
                raise Permanent(str(exc)) from exc
