"""Writes ``docs/asyncapi.json``: every queue the services consume and every event and command
published, from the same models and routers the services run (``python -m omstools.asyncapi``).

``tests/test_asyncapi.py`` fails when the committed document is out of date.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from faststream.specification import AsyncAPI

from chassis import deadletters
from events import inventory, notifications, orders, payments, shipping
from events.envelope import Command, Envelope, Event, Message
from events.names import COMMANDS_EXCHANGE, EVENTS_EXCHANGE

SERVICES = ("orders", "inventory", "payments", "shipping", "notifications")
DOCUMENT = Path(__file__).resolve().parents[3] / "docs" / "asyncapi.json"


def messages() -> list[type[Message]]:
    found: list[type[Message]] = []
    for module in (orders, inventory, payments, shipping, notifications):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, (Event, Command))
                and cls not in (Event, Command)
                and cls.__module__ == module.__name__
            ):
                found.append(cls)
    return sorted(found, key=lambda c: c.routing_key)


def build() -> dict:
    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:5672/")
    for service in SERVICES:
        broker.include_router(importlib.import_module(f"{service}.handlers").router)
    broker.include_router(deadletters.build_router())  # mounted by orders
    events_exchange = RabbitExchange(EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True)
    commands_exchange = RabbitExchange(COMMANDS_EXCHANGE, type=ExchangeType.DIRECT, durable=True)
    for cls in messages():
        publisher = broker.publisher(
            exchange=commands_exchange if cls.is_command else events_exchange,
            routing_key=cls.routing_key,
            title=f"{cls.ce_type()}:publish",
            description=(cls.__doc__ or "").strip() or None,
            schema=Envelope[cls],  # type: ignore[valid-type]  # each message model in turn
            persist=True,
        )
        assert publisher is not None
    spec = AsyncAPI(
        broker,
        title="OMS messages",
        version="1",
        description=(
            "CloudEvents 1.0, structured mode, JSON (content-type application/cloudevents+json). "
            "Events on the topic exchange oms.events (routing key = event name), commands on the "
            "direct exchange oms.commands (routing key = <service>.<command>)."
        ),
        schema_version="3.0.0",
    )
    return json.loads(spec.to_specification().to_json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omstools.asyncapi")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/asyncapi.json is out of date")
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=2, sort_keys=True) + "\n"
    if args.check:
        current = DOCUMENT.read_text() if DOCUMENT.exists() else ""
        if current != text:
            print(f"{DOCUMENT} is out of date: run `make asyncapi`", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.parent.mkdir(parents=True, exist_ok=True)
    DOCUMENT.write_text(text)
    print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
