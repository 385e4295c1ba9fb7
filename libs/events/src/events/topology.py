"""Every exchange and queue of the system, in one table, declared the same way by every service.

Each service declares the whole topology when it starts (declarations are idempotent), so a
command or event published before its consumer ever ran waits in the consumer's queue.

Queues are durable quorum queues with a delivery limit; a message that reaches the limit, or that
a consumer rejects as malformed, is dead-lettered (at least once) to ``oms.dead-letter``, itself a
bounded queue with no dead-letter exchange (``DEAD_LETTER_ARGUMENTS``).
Events are broadcast: one that no queue subscribes to is not an error, and it is not stored. They
are published without ``mandatory`` and go to the alternate exchange ``oms.events.unrouted``, which
drops them, unless the opt-in debugging tap (``unrouted_tap``, ``OMS_UNROUTED_TAP``) binds the
bounded queue ``oms.events.unrouted`` to it. Commands are published ``mandatory``: one that no
queue can take is returned and refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from events.names import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    UNROUTED_EXCHANGE,
    UNROUTED_QUEUE,
)

DELIVERY_LIMIT = 10
"""Redeliveries before a message is dead-lettered (RabbitMQ 3.10 sets no default)."""

DEAD_LETTER_MAX_LENGTH = 100_000
DEAD_LETTER_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-max-length": DEAD_LETTER_MAX_LENGTH,
    "x-overflow": "reject-publish",
}
"""The dead-letter queue: bounded, and with no dead-letter exchange of its own, so nothing loops.

When it is full it refuses more; with at-least-once dead-lettering the source queue then keeps
the message (and retries dead-lettering it), so nothing is lost: the queues back up instead, and
the alert on parked dead letters asks a person to look."""

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel

log = logging.getLogger("events.topology")


@dataclass(frozen=True)
class QueueSpec:
    name: str
    service: str
    exchange: str
    routing_key: str
    batched: bool = True
    """Its consumer's messages are handled in batches, one transaction each (chassis.batch). False
    for a consumer that must commit before it calls out: payments' write-ahead capture and refund,
    and notifications, which records a message as sent-pending before it hands it to the SMTP server
    (in a batch the record would commit only after the send, so a crash could send it twice)."""


def _command(routing_key: str, *, batched: bool = True) -> QueueSpec:
    service = routing_key.split(".", 1)[0]
    return QueueSpec(routing_key, service, COMMANDS_EXCHANGE, routing_key, batched)


def _event(service: str, routing_key: str, *, batched: bool = True) -> QueueSpec:
    return QueueSpec(f"{service}.on.{routing_key}", service, EVENTS_EXCHANGE, routing_key, batched)


QUEUES: tuple[QueueSpec, ...] = (
    # orders: the gateway's intake command, and every reply the saga follows
    _command("orders.place_order"),
    _event("orders", "stock.reserved"),
    _event("orders", "stock.reservation_failed"),
    _event("orders", "stock.released"),
    _event("orders", "payment.captured"),
    _event("orders", "payment.failed"),
    _event("orders", "payment.refunded"),
    _event("orders", "payment.action_required"),
    _event("orders", "shipment.created"),
    _event("orders", "shipment.updated"),
    _event("orders", "shipment.failed"),
    _event("orders", "shipment.cancelled"),
    _event("orders", "shipment.returned"),
    # inventory
    _command("inventory.reserve_stock"),
    _command("inventory.release_stock"),
    _command("inventory.commit_stock"),
    _command("inventory.restock"),
    # payments
    _command("payments.capture_payment", batched=False),
    _command("payments.refund_payment", batched=False),
    _command("payments.cancel_payment", batched=False),
    # shipping
    _command("shipping.create_shipment"),
    _command("shipping.change_address"),
    _command("shipping.cancel_shipment"),
    _command("shipping.expect_return"),
    # notifications
    _command("notifications.register_recipient"),
    _event("notifications", "order.status_changed"),
    _event("notifications", "payment.refunded"),
    _event("notifications", "payment.action_required"),
    _event("notifications", "shipment.updated"),
)

_BY_NAME = {q.name: q for q in QUEUES}


def queue_arguments(name: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


class UnknownQueue(KeyError):
    """A subscriber names a queue that is not in ``QUEUES``: nothing would declare or bind it."""


def spec(name: str) -> QueueSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownQueue(
            f"no queue {name!r} in events.topology.QUEUES: add it there (a saga step's"
            f" reply queue is _event('orders', '<routing key>'))"
        ) from None


def batched(name: str) -> bool:
    """Whether the consumer of the queue ``name`` takes its messages in batches (not one outside
    this table: a test's, a tool's)."""
    found = _BY_NAME.get(name)
    return found is not None and found.batched


def command_queue(routing_key: str) -> str:
    return spec(routing_key).name


def event_queue(service: str, routing_key: str) -> str:
    return spec(f"{service}.on.{routing_key}").name


def queues_of(service: str) -> list[QueueSpec]:
    return [q for q in QUEUES if q.service == service]


async def declare(channel: AbstractChannel, *, unrouted_tap: bool = False) -> None:
    """Declare every exchange, queue and binding. Safe to call from every service at every start.

    ``unrouted_tap`` also keeps the events nobody subscribes to in ``oms.events.unrouted`` (the
    last 10,000), to see what is published; each costs the broker a quorum-queue write.

    Needs aio-pika (``oms-events[amqp]``); reading the tables needs only this module.
    """
    import aio_pika

    unrouted = await channel.declare_exchange(UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": UNROUTED_EXCHANGE},
    )
    commands = await channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)

    try:
        dlq = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=DEAD_LETTER_ARGUMENTS)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        # Declared before with other arguments (an older release): queue arguments cannot be
        # changed in place, and a service that refused to start over it would help nobody.
        reason = str(exc.args[0])[:300] if exc.args else "PRECONDITION_FAILED"
        log.warning(
            "topology.dead_letter_queue_differs queue=%s wanted=%s error=%s",
            DEAD_LETTER_QUEUE,
            DEAD_LETTER_ARGUMENTS,
            reason,
        )
        await channel.reopen()  # the broker closed the channel over the refused declaration
        dlq = await channel.get_queue(DEAD_LETTER_QUEUE, ensure=True)
    await dlq.bind(dead)
    if unrouted_tap:
        tap = await channel.declare_queue(
            UNROUTED_QUEUE,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-max-length": 10_000, "x-overflow": "drop-head"},
        )
        await tap.bind(unrouted)

    exchanges = {EVENTS_EXCHANGE: events, COMMANDS_EXCHANGE: commands}
    for q in QUEUES:
        queue = await channel.declare_queue(q.name, durable=True, arguments=queue_arguments(q.name))
        await queue.bind(exchanges[q.exchange], routing_key=q.routing_key)
