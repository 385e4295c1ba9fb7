"""Subscribers: the gateways' ``orders.place_order`` command, and every reply the saga follows.

Each reply is decoded into its event model and handed to ``service.apply``, which loads the
order, calls ``saga.advance`` and saves the saga, its status and history, and the commands and
events it emits, with the inbox record, in one transaction. A reply for an order that is not ours
(events are broadcast) is acked and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Annotated, Any

from faststream.rabbit import RabbitRouter
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker

from events import inbox, outbox
from events.broker import Resource, queue
from events.envelope import Envelope, ErrorItem, Incoming
from events.inventory import StockReleased, StockReservationFailed, StockReserved
from events.logs import get_logger
from events.orders import OrderRejected, PlaceOrder
from events.payments import PaymentActionRequired, PaymentCaptured, PaymentFailed, PaymentRefunded
from events.shipping import (
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
    ShipmentReturned,
    ShipmentUpdated,
)
from events.tasks import background
from events.web import validation_errors
from orders import service
from orders.config import Settings
from orders.domain import business_errors

log = get_logger(__name__)
router = RabbitRouter()

Sessions = Annotated[async_sessionmaker, Resource("sessions")]
Config = Annotated[Settings, Resource("settings")]

PLACE = "orders.place_order"


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
        errors = [ErrorItem(field="id", message=f"a command id has at most {inbox.MAX_MESSAGE_ID} characters",
                            type="string_too_long"), *errors]
    if errors:
        async with sessions.begin() as session:
            if await inbox.claim(session, inbox_id, PLACE):
                await outbox.stage(
                    session, OrderRejected(command_id=msg.id, errors=errors), service="orders", subject=None, causation=msg
                )
        log.info("order.rejected", command_id=msg.id, fields=[e.field for e in errors])
        return
    try:
        await service.place_order(sessions, request, key=f"amqp:{msg.id}", actor=msg.source, settings=settings,
                                    cause=msg)
    except service.KeyReused:
        async with sessions.begin() as session:
            if await inbox.claim(session, msg.id, PLACE):
                rejected = OrderRejected(
                    command_id=msg.id,
                    errors=[ErrorItem(field="id", message="this command id was used for another order", type="idempotency")],
                )
                await outbox.stage(session, rejected, service="orders", subject=None, causation=msg)


async def _reply(msg: Envelope[Any], sessions: async_sessionmaker, settings: Settings, consumer: str) -> None:
    await service.apply(sessions, msg.data.order_id, msg.data, actor=msg.source, settings=settings, cause=msg,
                        consumer=consumer)


@router.subscriber(queue("orders.on.stock.reserved"))
async def on_stock_reserved(msg: Envelope[StockReserved], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.stock.reserved")


@router.subscriber(queue("orders.on.stock.reservation_failed"))
async def on_stock_reservation_failed(msg: Envelope[StockReservationFailed], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.stock.reservation_failed")


@router.subscriber(queue("orders.on.stock.released"))
async def on_stock_released(msg: Envelope[StockReleased], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.stock.released")


@router.subscriber(queue("orders.on.payment.captured"))
async def on_payment_captured(msg: Envelope[PaymentCaptured], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.payment.captured")


@router.subscriber(queue("orders.on.payment.failed"))
async def on_payment_failed(msg: Envelope[PaymentFailed], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.payment.failed")


@router.subscriber(queue("orders.on.payment.action_required"))
async def on_payment_action_required(msg: Envelope[PaymentActionRequired], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.payment.action_required")


@router.subscriber(queue("orders.on.payment.refunded"))
async def on_payment_refunded(msg: Envelope[PaymentRefunded], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.payment.refunded")


@router.subscriber(queue("orders.on.shipment.created"))
async def on_shipment_created(msg: Envelope[ShipmentCreated], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.shipment.created")


@router.subscriber(queue("orders.on.shipment.updated"))
async def on_shipment_updated(msg: Envelope[ShipmentUpdated], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.shipment.updated")


@router.subscriber(queue("orders.on.shipment.failed"))
async def on_shipment_failed(msg: Envelope[ShipmentFailed], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.shipment.failed")


@router.subscriber(queue("orders.on.shipment.cancelled"))
async def on_shipment_cancelled(msg: Envelope[ShipmentCancelled], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.shipment.cancelled")


@router.subscriber(queue("orders.on.shipment.returned"))
async def on_shipment_returned(msg: Envelope[ShipmentReturned], sessions: Sessions, settings: Config) -> None:
    await _reply(msg, sessions, settings, "orders.on.shipment.returned")


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
