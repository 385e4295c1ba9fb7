"""The subscribers of orders are made from the saga's table: one per reply it follows, on that
reply's queue, decoding the reply into its model (in memory: TestRabbitBroker, no broker)."""

from __future__ import annotations

import pytest
from faststream.rabbit import TestRabbitBroker
from test_saga import (
    CAPTURED,
    DECLINED,
    OUT_OF_STOCK,
    RELEASED,
    RESERVED,
    SHIP_CANCELLED,
    SHIP_CREATED,
    SHIP_FAILED,
    T0,
    carrier,
    refunded,
)

from chassis.broker import make_broker
from events import topology
from events.envelope import Event, build
from events.shipping import ShipmentReturned
from events.types import LineItem
from orders import handlers, service
from orders import saga as flow

EXAMPLES = [
    RESERVED,
    OUT_OF_STOCK,
    RELEASED,
    CAPTURED,
    DECLINED,
    refunded("ord_1:cancel", CAPTURED.amount),
    SHIP_CREATED,
    SHIP_FAILED,
    SHIP_CANCELLED,
    carrier("picked_up"),
    ShipmentReturned(
        order_id="ord_1",
        shipment_id="shp-1",
        tracking_number="SF1",
        items=[LineItem(sku="SKU-RED-MUG", quantity=1)],
        at=T0,
    ),
]


def test_every_reply_of_the_table_has_a_subscriber_on_its_queue():
    queues = {s.queue.name for s in handlers.router.subscribers}
    ours = {q.name for q in topology.QUEUES if q.service == "orders"}
    assert set(handlers.SUBSCRIBERS) == set(flow.REPLIES)
    assert queues == ours == {handlers.PLACE} | {f"orders.on.{r.routing_key}" for r in flow.REPLIES}


@pytest.mark.parametrize("reply", EXAMPLES, ids=lambda r: r.routing_key)
async def test_a_reply_on_its_queue_reaches_the_saga_as_its_model(reply, monkeypatch):
    applied: list[tuple[str, object, str]] = []

    async def apply(sessions, order_id, data, *, actor, settings, cause, consumer):
        applied.append((order_id, data, consumer))

    monkeypatch.setattr(service, "apply", apply)
    broker = make_broker("amqp://guest:guest@127.0.0.1:1/", service="orders")
    broker.include_router(handlers.router)
    broker.context.set_global("sessions", None)
    broker.context.set_global("settings", None)
    queue = f"orders.on.{reply.routing_key}"
    async with TestRabbitBroker(broker) as test_broker:
        await test_broker.publish(build(reply, service="test", subject=reply.order_id), queue)

    assert applied == [("ord_1", reply, queue)]


def test_a_reply_added_to_the_table_without_its_queue_is_refused_naming_the_topology():
    class StockCounted(Event):
        routing_key = "stock.counted"
        order_id: str

    with pytest.raises(topology.UnknownQueue, match=r"orders\.on\.stock\.counted.*events\.topology\.QUEUES"):
        handlers._subscribe(StockCounted)
