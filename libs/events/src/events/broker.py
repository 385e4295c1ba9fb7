"""The FastStream broker, set up the same safe way in every service.

FastStream's defaults lose messages (RABBITMQ.md): here every channel confirms publishes and
raises on returned (unroutable) messages, prefetch is bounded, CloudEvents bodies are decoded as
JSON, and a failed message is never dropped:

- a malformed message (not JSON, not a CloudEvent, ``data`` that does not validate, or a handler
  raising :class:`Permanent`) is rejected at once and dead-lettered;
- any other error is retried: the message is returned to its queue after a back-off that grows
  with its delivery count, and after ``DELIVERY_LIMIT`` deliveries the broker dead-letters it.

The ack comes after the handler returned, so after its transaction committed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from faststream import AckPolicy
from faststream._internal.context import Context as ContextField
from faststream._internal.middlewares import BaseMiddleware
from faststream.exceptions import HandlerException, NackMessage, RejectMessage
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from events import topology
from events.logs import get_logger

log = get_logger("events.broker")

RETRY_BASE_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0


class Permanent(Exception):
    """Raised by a handler for a message that can never succeed: it is dead-lettered at once."""


PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    Permanent,
    ValidationError,
    json.JSONDecodeError,
    UnicodeDecodeError,
)


def retry_delay(delivery_count: int) -> float:
    return min(RETRY_BASE_SECONDS * 2**delivery_count, RETRY_MAX_SECONDS)


async def decode_json(msg: Any) -> Any:
    """Decode every body as JSON whatever its content type (``application/cloudevents+json`` too).

    A coroutine, because FastStream runs a synchronous decoder in a worker thread."""
    return json.loads(msg.body)


class Resource(ContextField):
    """A handler parameter taken from the broker's context, like ``Context("sessions")``, but
    resolved in the event loop: fast_depends runs ``Context``'s synchronous ``use`` in a worker
    thread, one thread hop per parameter per message for a dictionary look-up."""

    async def use(self, /, **kwargs: Any) -> dict[str, Any]:
        return super().use(**kwargs)


async def _peek(msg: Any) -> dict[str, Any]:
    """The decoded envelope, for the log context; FastStream caches it for the handler."""
    try:
        envelope = await msg.decode()
    except (ValueError, UnicodeDecodeError):  # not JSON: the handler's decoding dead-letters it
        return {}
    return envelope if isinstance(envelope, dict) else {}


class ConsumePolicy(BaseMiddleware):
    """Log context, retries with back-off, and dead-lettering of what can never succeed."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        raw = msg.raw_message
        envelope = await _peek(msg)
        queue = getattr(raw, "routing_key", None)
        bound = structlog.contextvars.bind_contextvars(
            order_id=envelope.get("correlationid") or envelope.get("subject"),
            message_id=envelope.get("id") or msg.message_id,
            message_type=envelope.get("type"),
        )
        delivery_count = int((msg.headers or {}).get("x-delivery-count") or 0)
        try:
            return await call_next(msg)
        except HandlerException:
            raise
        except PERMANENT_ERRORS as exc:
            log.error("message.dead_lettered", reason="malformed", routing_key=queue, error=str(exc)[:500])
            _counter(self.context).labels("dead_lettered").inc()
            raise RejectMessage() from exc
        except Exception as exc:
            delay = retry_delay(delivery_count)
            log.warning(
                "message.retry",
                routing_key=queue,
                delivery=delivery_count + 1,
                limit=topology.DELIVERY_LIMIT,
                delay_s=delay,
                error=repr(exc)[:500],
            )
            _counter(self.context).labels("retried").inc()
            await asyncio.sleep(delay)
            raise NackMessage(requeue=True) from exc
        finally:
            structlog.contextvars.reset_contextvars(**bound)


def _counter(context: Any) -> Counter:
    return context.get("oms_message_outcomes")


def make_broker(
    amqp_url: str,
    *,
    service: str,
    prefetch: int = 32,
    registry: CollectorRegistry | None = None,
) -> RabbitBroker:
    registry = registry or CollectorRegistry()
    middlewares: list[Any] = [
        RabbitTelemetryMiddleware(),
        RabbitPrometheusMiddleware(registry=registry, app_name=f"oms-{service}", metrics_prefix="oms"),
        ConsumePolicy,
    ]
    broker = RabbitBroker(
        amqp_url,
        default_channel=Channel(prefetch_count=prefetch, publisher_confirms=True, on_return_raises=True),
        decoder=decode_json,
        middlewares=middlewares,
        ack_policy=AckPolicy.REJECT_ON_ERROR,
        app_id=f"oms-{service}",
        graceful_timeout=10.0,
        fail_fast=True,
        reconnect_interval=1.0,
        logger=None,
    )
    broker.context.set_global(
        "oms_message_outcomes",
        Counter("oms_messages_failed", "Messages that failed, by outcome", ["outcome"], registry=registry),
    )
    return broker


def queue(name: str) -> RabbitQueue:
    """The subscriber side of a queue from :mod:`events.topology` (declared there, not here)."""
    spec = topology.spec(name)
    return RabbitQueue(spec.name, durable=True, declare=False, arguments=topology.queue_arguments(spec.name))
