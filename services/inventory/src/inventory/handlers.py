"""Subscribers: each command → stock change + events, with the inbox record, in ONE transaction.

A duplicate message (same CloudEvents id) changes nothing. A command that can never succeed
(a commit for an order that holds nothing, a return of units never shipped) is dead-lettered at
once; any other error rolls the transaction back and the message is retried.
"""

from __future__ import annotations

from typing import Annotated

from faststream.rabbit import RabbitRouter
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis import inbox
from chassis.broker import Permanent, Resource, queue
from chassis.logs import get_logger
from events import topology
from events.envelope import Envelope
from events.inventory import CommitStock, ReleaseStock, ReserveStock, RestockItems, StockReserved
from inventory import domain, service

log = get_logger(__name__)
router = RabbitRouter()
Sessions = Annotated[async_sessionmaker, Resource("sessions")]

RESERVE = topology.command_queue("inventory.reserve_stock")
RELEASE = topology.command_queue("inventory.release_stock")
COMMIT = topology.command_queue("inventory.commit_stock")
RESTOCK = topology.command_queue("inventory.restock")


def _units(allocations) -> list[str]:
    return [f"{a.quantity}x{a.sku}@{a.warehouse}" for a in allocations]


@router.subscriber(queue(RESERVE))
async def handle_reserve_stock(msg: Envelope[ReserveStock], sessions: Sessions) -> None:
    cmd = msg.data
    to = domain.Destination(cmd.country, cmd.latitude, cmd.longitude)
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, RESERVE):
            return
        outcome = await service.reserve(session, cmd.order_id, list(cmd.items), to, msg, cmd.parcel)
    if isinstance(outcome, StockReserved):
        log.info("stock.reserved", allocations=_units(outcome.allocations))
    else:
        log.info(
            "stock.reservation_failed",
            reason=outcome.reason,
            shortages=[f"{s.sku}: {s.available} of {s.quantity}" for s in outcome.shortages],
        )


@router.subscriber(queue(RELEASE))
async def handle_release_stock(msg: Envelope[ReleaseStock], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, RELEASE):
            return
        released = await service.release(
            session, msg.data.order_id, msg.data.reason, msg, msg.data.warehouses, msg.data.parcel
        )
    log.info("stock.released", allocations=_units(released.allocations))


@router.subscriber(queue(COMMIT))
async def handle_commit_stock(msg: Envelope[CommitStock], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, COMMIT):
            return
        try:
            committed = await service.commit(
                session, msg.data.order_id, msg, msg.data.warehouse, parcel=msg.data.parcel
            )
        except service.Refused as exc:
            raise Permanent(str(exc)) from exc
    log.info("stock.committed", allocations=_units(committed.allocations))


@router.subscriber(queue(RESTOCK))
async def handle_restock(msg: Envelope[RestockItems], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, RESTOCK):
            return
        try:
            restocked = await service.restock(session, msg.data.order_id, list(msg.data.items), msg)
        except service.Refused as exc:
            raise Permanent(str(exc)) from exc
    log.info("stock.restocked", allocations=_units(restocked))
