"""Subscribers: each command → stock change + events, with the inbox record, in ONE transaction."""

from __future__ import annotations

from typing import Annotated

from faststream import Context
from faststream.rabbit import RabbitRouter
from sqlalchemy.ext.asyncio import async_sessionmaker

from events import inbox
from events.broker import Permanent, queue
from events.envelope import Envelope
from events.inventory import CommitStock, ReleaseStock, ReserveStock, RestockItems
from events.logs import get_logger
from inventory import domain, stock

log = get_logger(__name__)
router = RabbitRouter()
Sessions = Annotated[async_sessionmaker, Context("sessions")]

RESERVE, RELEASE, COMMIT, RESTOCK = (
    "inventory.reserve_stock", "inventory.release_stock", "inventory.commit_stock", "inventory.restock",
)


@router.subscriber(queue(RESERVE))
async def handle_reserve_stock(msg: Envelope[ReserveStock], sessions: Sessions) -> None:
    cmd = msg.data
    to = domain.Destination(cmd.country, cmd.latitude, cmd.longitude)
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, RESERVE):
            await stock.reserve(session, cmd.order_id, list(cmd.items), to, msg)


@router.subscriber(queue(RELEASE))
async def handle_release_stock(msg: Envelope[ReleaseStock], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, RELEASE):
            await stock.release(session, msg.data.order_id, msg.data.reason, msg)


@router.subscriber(queue(COMMIT))
async def handle_commit_stock(msg: Envelope[CommitStock], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, COMMIT):
            await stock.commit(session, msg.data.order_id, msg)


@router.subscriber(queue(RESTOCK))
async def handle_restock(msg: Envelope[RestockItems], sessions: Sessions) -> None:
    async with sessions.begin() as session:
        if await inbox.claim(session, msg.id, RESTOCK):
            try:
                await stock.restock(session, msg.data.order_id, list(msg.data.items), msg)
            except ValueError as exc:
                raise Permanent(str(exc)) from exc
