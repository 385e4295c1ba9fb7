"""The topology on a real broker: the dead-letter queue is bounded and has no dead-letter exchange
of its own, and a broker whose dead-letter queue was declared otherwise does not stop a service."""

from __future__ import annotations

import logging

import aio_pika
import pytest

from events import topology
from events.names import DEAD_LETTER_QUEUE

pytestmark = pytest.mark.integration


async def test_the_dead_letter_queue_is_bounded_and_refuses_when_full(amqp_url):
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await topology.declare(channel)
        # Declared with exactly these arguments: any other set is refused by the broker.
        await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=topology.DEAD_LETTER_ARGUMENTS)
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    finally:
        await connection.close()
    assert topology.DEAD_LETTER_ARGUMENTS["x-overflow"] == "reject-publish"
    assert topology.DEAD_LETTER_ARGUMENTS["x-max-length"] == 100_000
    assert "x-dead-letter-exchange" not in topology.DEAD_LETTER_ARGUMENTS


async def test_a_dead_letter_queue_declared_otherwise_is_used_as_it_is(amqp_url, caplog):
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        with caplog.at_level(logging.WARNING, logger="events.topology"):
            await topology.declare(channel)  # does not raise
        warnings = [r.getMessage().split()[0] for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["topology.dead_letter_queue_differs"]
        for spec in topology.QUEUES:  # everything after the dead-letter queue was declared too
            await channel.get_queue(spec.name, ensure=True)
    finally:
        await connection.close()


def test_consumers_that_call_out_before_committing_are_not_batched():
    """A batch commits after all its handlers ran: a handler whose call out must be committed before
    it is made, and whose answer decides what it writes (a charge, a refund), runs alone.
    Notifications call out after their batch's commit (chassis.batch.after_commit), so they batch."""
    calls_out = {"payments.capture_payment", "payments.refund_payment"}
    assert not any(topology.batched(name) for name in calls_out)
    assert topology.batched("inventory.reserve_stock") and topology.batched("orders.on.stock.reserved")
    assert topology.batched("notifications.on.order.status_changed")
