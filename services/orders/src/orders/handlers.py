"""Subscribers: the gateways' ``orders.place_order`` command, and every reply the saga follows.

The reply subscribers are made from the saga's table: one per reply it names (``saga.REPLIES``),
on its queue ``orders.on.<routing key>``. Each decodes the reply into its event model and hands it
to ``service.apply``, which loads the order, calls ``saga.advance`` and saves the saga, its status
and history, and the commands and events it emits, with the inbox record, in one transaction. A
reply for an order that is not ours (events are broadcast) is acked and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, cast

from faststream.rabbit import RabbitRouter
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis import inbox, outbox
from chassis.broker import Resource, queue
from chassis.logs import get_logger
from chassis.tasks import background
from chassis.web import validation_errors
from events import topology
from events.envelope import Envelope, ErrorItem, Event, Incoming
from events.orders import OrderRejected, PlaceOrder
from orders import saga, service
from orders.config import Settings
from orders.domain import business_errors

log = get_logger(__name__)
router = RabbitRouter()

Sessions = Annotated[async_sessionmaker, Resource("sessions")]
Config = Annotated[Settings, Resource("settings")]

SERVICE = "orders"
PLACE = topology.command_queue("orders.place_order")


@router.subscriber(queue(PLACE))
async def handle_place_order(msg: Incoming, sessions: Sessions, settings: Config) -> None:
    """A gateway's order over AMQP: the CloudEvent id is the idempotency key, and its ``source``
    names the gateway, which owns the order (a key of that name reads it over HTTP). A bad one is
    answered with order.rejected naming the fields, never dropped in silence."""
    inbox_id = msg.id
    try:
        request = PlaceOrder.model_validate(msg.data)
        errors = business_errors(request, max_quantity_per_line=settings.max_quantity_per_line)
    except ValidationError as exc:
        request, errors = None, [ErrorItem(**e) for e in validation_errors(exc.errors())]
    if len(msg.id) > inbox.MAX_MESSAGE_ID:  # it cannot be stored as a key: refused, told by its digest
        inbox_id = "sha256:" + hashlib.sha256(msg.id.encode()).hexdigest()[: inbox.MAX_MESSAGE_ID - 7]
        errors = [
            ErrorItem(
                field="id",
                message=f"a command id has at most {inbox.MAX_MESSAGE_ID} characters",
                type="string_too_long",
            ),
            *errors,
        ]
    if errors:
        async with sessions.begin() as session:
            if await inbox.claim(session, inbox_id, PLACE):
                await outbox.stage(
                    session,
                    OrderRejected(command_id=msg.id, errors=errors),
                    service="orders",
                    subject=None,
                    causation=msg,
                )
        log.info("order.rejected", command_id=msg.id, fields=[e.field for e in errors])
        return
    assert request is not None  # it validated: no errors
    try:
        await service.place_order(
            sessions, request, key=f"amqp:{msg.id}", actor=msg.source, settings=settings, cause=msg
        )
    except service.KeyReused:
        async with sessions.begin() as session:
            if await inbox.claim(session, msg.id, PLACE):
                rejected = OrderRejected(
                    command_id=msg.id,
                    errors=[
                        ErrorItem(
                            field="id",
                            message="this command id was used for another order",
                            type="idempotency",
                        )
                    ],
                )
                await outbox.stage(session, rejected, service="orders", subject=None, causation=msg)


def _subscribe(reply: type[Event]) -> Callable[..., Awaitable[None]]:
    """One subscriber for a reply the saga follows: its queue ``orders.on.<routing key>``, the
    reply decoded into its model, then ``service.apply`` (the queue name is the inbox consumer)."""
    consumer = topology.event_queue(SERVICE, reply.routing_key)

    async def on_reply(msg: Envelope[Any], sessions: Sessions, settings: Config) -> None:
        await service.apply(
            sessions,
            msg.data.order_id,
            msg.data,
            actor=msg.source,
            settings=settings,
            cause=msg,
            consumer=consumer,
        )

    # what FastStream decodes the message into (the reply's type is chosen at run time)
    on_reply.__annotations__["msg"] = Envelope[reply]  # type: ignore[valid-type]
    on_reply.__name__ = on_reply.__qualname__ = "on_" + reply.routing_key.replace(".", "_")
    return router.subscriber(queue(consumer))(on_reply)


_REPLIES = cast(frozenset[type[Event]], saga.REPLIES)  # every one an event model of the contract
SUBSCRIBERS: dict[type[Event], Callable[..., Awaitable[None]]] = {
    reply: _subscribe(reply) for reply in sorted(_REPLIES, key=lambda r: r.routing_key)
}
"""A subscriber per reply the saga's table names (``saga.REPLIES``), e.g. ``on_stock_reserved``."""


async def run_deadlines(sessions: async_sessionmaker, settings: Settings) -> None:
    """Fire saga deadlines that have passed, each order in its own transaction that claims it
    (``service.fire_deadline``), so every replica of the service may scan at once. They are stored
    with the saga, so they fire after a restart too. An order whose deadline fails is left for the
    next round, not claimed again in this one."""
    while True:
        failed: set[str] = set()
        while True:
            try:
                order_id = await service.fire_deadline(sessions, settings=settings, skip=frozenset(failed))
            except service.DeadlineFailed as exc:  # the next round tries again
                log.warning("saga.deadline_failed", order_id=exc.order_id, error=repr(exc.__cause__))
                failed.add(exc.order_id)
                continue
            except Exception as exc:
                log.warning("saga.deadline_scan_failed", error=repr(exc))
                break
            if order_id is None:
                break
        await asyncio.sleep(settings.deadline_poll_seconds)


def deadlines(sessions: async_sessionmaker, settings: Settings) -> contextlib.AbstractAsyncContextManager:
    return background(run_deadlines(sessions, settings), name="orders-deadlines")
