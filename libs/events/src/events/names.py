"""Exchange names, routing keys and CloudEvents types (CONTRACT §6)."""

from __future__ import annotations

EVENTS_EXCHANGE = "oms.events"  # topic: routing key = event name, e.g. "order.placed"
COMMANDS_EXCHANGE = "oms.commands"  # direct: routing key = "<service>.<command>"
DEAD_LETTER_EXCHANGE = "oms.dead-letter"  # direct: routing key = the queue the message died in
UNROUTED_EXCHANGE = "oms.events.unrouted"  # fanout: alternate exchange for events nobody subscribes to

DEAD_LETTER_QUEUE = "oms.dead-letter"
UNROUTED_QUEUE = "oms.events.unrouted"

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"

SERVICES = ("orders", "inventory", "payments", "shipping", "notifications")


def event_type(routing_key: str) -> str:
    """``order.placed`` -> ``oms.order.placed.v1``."""
    return f"oms.{routing_key}.v1"


def command_type(routing_key: str) -> str:
    """``inventory.reserve_stock`` -> ``oms.command.inventory.reserve_stock.v1``."""
    return f"oms.command.{routing_key}.v1"


def source(service: str) -> str:
    """``orders`` -> ``oms/orders``: the CloudEvent ``source`` of what a service sends."""
    return f"oms/{service}"
