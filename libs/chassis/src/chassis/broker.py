"""The FastStream broker, set up the same safe way in every service.

FastStream's defaults lose messages (RABBITMQ.md): here every channel confirms publishes and
raises on returned (unroutable) messages, prefetch is bounded, CloudEvents bodies are decoded as
JSON, and a failed message is never dropped:

- a malformed message (not JSON, not a CloudEvent, ``data`` that does not validate, or a handler
  raising :class:`Permanent`) is rejected at once and dead-lettered;
- a dependency that cannot be reached (the handler raised :class:`Unavailable`, or it failed
  while the service's database does not answer a probe) is an outage, not the message's fault:
  the handler is run again in place, with a back-off from 0.5 s doubling to 10 s, for as long as
  the outage lasts, without returning the message (its delivery count does not grow). The service
  reports not ready meanwhile. When the consumer stops, the message is left unacknowledged, so the
  broker hands it out again once the connection closes;
- any other error is the message's own: it is returned to its queue after a back-off that grows
  with its delivery count, and after ``DELIVERY_LIMIT`` deliveries the broker dead-letters it.

The ack comes after the handler returned, so after its transaction committed (in a batch: after
the batch's transaction committed, chassis.batch); a handler that ran in a failed transaction
rolled it back, and handlers are idempotent (the inbox), so running one again is safe. Errors are
logged by kind and place, never with the values of the message.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import structlog
from faststream import AckPolicy
from faststream._internal.context import Context as ContextField
from faststream._internal.middlewares import BaseMiddleware
from faststream.exceptions import HandlerException, NackMessage, RejectMessage
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from opentelemetry import context as otel_context
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from chassis.logs import get_logger
from chassis.telemetry import context_from
from events import topology

log = get_logger("chassis.broker")

RETRY_BASE_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
WAIT_BASE_SECONDS = 0.5
WAIT_MAX_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 5.0
_STOP_POLL_SECONDS = 0.25


class Permanent(Exception):
    """Raised by a handler for a message that can never succeed: it is dead-lettered at once."""


class Unavailable(Exception):
    """Raised by a handler when a dependency it needs (an SMTP server, a provider) cannot be reached:
    the message is not at fault, and is tried again in place for as long as the outage lasts.

    ``dependency`` names it in the readiness check, the metric and the log."""

    def __init__(self, dependency: str, reason: str = "") -> None:
        super().__init__(f"{dependency} unavailable" + (f": {reason}" if reason else ""))
        self.dependency, self.reason = dependency, reason


PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    Permanent,
    ValidationError,
    json.JSONDecodeError,
    UnicodeDecodeError,
)


def retry_delay(delivery_count: int) -> float:
    return float(min(RETRY_BASE_SECONDS * 2**delivery_count, RETRY_MAX_SECONDS))


def wait_delay(attempt: int) -> float:
    """The pause before the ``attempt``-th run again (from 0) of a handler waiting out an outage."""
    return float(min(WAIT_BASE_SECONDS * 2 ** min(attempt, 16), WAIT_MAX_SECONDS))


def describe(exc: BaseException) -> dict[str, Any]:
    """An error for the log: its kind and where it happened, never the input that caused it.

    ``str(ValidationError)`` quotes the offending values (an e-mail address, a token), so for those
    only the field locations and error types are kept."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return {
            "error": f"ValidationError ({len(errors)})",
            "fields": [".".join(str(p) for p in e["loc"]) or "body" for e in errors[:20]],
            "error_types": sorted({e["type"] for e in errors}),
        }
    if isinstance(exc, json.JSONDecodeError):
        return {"error": f"JSONDecodeError: {exc.msg} at line {exc.lineno} column {exc.colno}"}
    if isinstance(exc, UnicodeDecodeError):
        return {"error": f"UnicodeDecodeError: {exc.encoding} at byte {exc.start}"}
    if isinstance(exc, Unavailable):
        return {"error": f"Unavailable: {exc.dependency}", "reason": exc.reason[:200]}
    return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


async def decode_json(msg: Any) -> Any:
    """Decode every body as JSON whatever its content type (``application/cloudevents+json`` too).

    A coroutine, because FastStream runs a synchronous decoder in a worker thread."""
    return json.loads(msg.body)


class Resource(ContextField):
    """A handler parameter taken from the broker's context, like ``Context("sessions")``, but
    resolved in the event loop: fast_depends runs ``Context``'s synchronous ``use`` in a worker
    thread, one thread hop per parameter per message for a dictionary look-up."""

    async def use(self, /, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]  # awaited by fast_depends
        return super().use(**kwargs)


async def _peek(msg: Any) -> dict[str, Any]:
    """The decoded envelope, for the log context; FastStream caches it for the handler."""
    try:
        envelope = await msg.decode()
    except (ValueError, UnicodeDecodeError):  # not JSON: the handler's decoding dead-letters it
        return {}
    return envelope if isinstance(envelope, dict) else {}


class Outages:
    """The dependencies that handlers are waiting for right now: for ``/readyz`` and a gauge."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._waiting: collections.Counter[str] = collections.Counter()
        self._gauge = Gauge(
            "oms_messages_waiting",
            "Messages whose handler waits for an unreachable dependency",
            ["dependency"],
            registry=registry,
        )

    def waiting(self) -> list[str]:
        return sorted(d for d, n in self._waiting.items() if n > 0)

    def begin(self, dependency: str) -> None:
        self._waiting[dependency] += 1
        self._gauge.labels(dependency).inc()

    def end(self, dependency: str) -> None:
        self._waiting[dependency] -= 1
        self._gauge.labels(dependency).dec()


class ConsumePolicy(BaseMiddleware):
    """Log context, waiting out outages, retries with back-off, and dead-lettering of what can
    never succeed."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        raw = msg.raw_message
        envelope = await _peek(msg)
        queue = getattr(raw, "routing_key", None)
        bound = structlog.contextvars.bind_contextvars(
            order_id=envelope.get("correlationid") or envelope.get("subject"),
            message_id=envelope.get("id") or msg.message_id,
            message_type=envelope.get("type"),
        )
        headers = msg.headers or {}
        delivery_count = int(headers.get("x-delivery-count") or 0)
        traceparent = headers.get("traceparent") if self.context.get("oms_carry_trace") else None
        trace_token = otel_context.attach(context_from(traceparent)) if traceparent else None
        try:
            try:
                return await self._first(call_next, msg)
            except HandlerException:
                raise
            except PERMANENT_ERRORS as exc:
                raise self._dead_letter(exc, queue) from exc
            except Exception as exc:
                dependency = await self._outage(exc)
                if dependency is None:
                    raise await self._retry(exc, queue, delivery_count) from exc
                return await self._wait_out(call_next, msg, dependency, exc, queue, delivery_count)
        finally:
            if trace_token is not None:
                otel_context.detach(trace_token)
            structlog.contextvars.reset_contextvars(**bound)

    async def _first(self, call_next: Any, msg: Any) -> Any:
        """The handler's first run: in a batch (chassis.batch) when the service batches and the
        queue's consumer allows it, else alone. Runs again after a failure are alone."""
        batcher = self.context.get("oms_batcher")
        subscriber = self.context.get("handler_")
        queue_name = getattr(getattr(subscriber, "queue", None), "name", None)
        if batcher is None or queue_name is None or not topology.batched(queue_name):
            result = await call_next(msg)
            self.context.get("oms_messages_handled").inc()
            return result
        return await batcher.run(lambda: call_next(msg))

    async def _wait_out(
        self,
        call_next: Any,
        msg: Any,
        dependency: str,
        first: Exception,
        queue: str | None,
        delivery_count: int,
    ) -> Any:
        """Run the handler again, with back-off, until the outage is over; the message stays with
        this consumer meanwhile, and its delivery count does not grow."""
        outages: Outages = self.context.get("oms_outages")
        exc: Exception = first
        attempt = 0
        outages.begin(dependency)
        try:
            while True:
                delay = wait_delay(attempt)
                if attempt % 6 == 0:
                    log.warning(
                        "message.waiting_for_dependency",
                        dependency=dependency,
                        routing_key=queue,
                        attempt=attempt + 1,
                        delay_s=delay,
                        **describe(exc),
                    )
                _counter(self.context).labels("waited").inc()
                if not await self._pause(delay):
                    # Stopping: leave the message unacknowledged; the broker hands it out again
                    # when this connection closes.
                    log.info("message.left_for_redelivery", dependency=dependency, routing_key=queue)
                    msg.raw_message.lock()  # FastStream's nack below then leaves it alone
                    raise NackMessage(requeue=True) from exc
                attempt += 1
                try:
                    result = await call_next(msg)
                except HandlerException:
                    raise
                except PERMANENT_ERRORS as error:
                    raise self._dead_letter(error, queue) from error
                except Exception as error:
                    exc = error
                    now_down = await self._outage(error)
                    if now_down is None:
                        raise await self._retry(error, queue, delivery_count) from error
                    if now_down != dependency:  # another one went down meanwhile: wait for that
                        outages.end(dependency)
                        dependency, attempt = now_down, 0
                        outages.begin(dependency)
                    continue
                log.info(
                    "message.dependency_back", dependency=dependency, routing_key=queue, attempts=attempt + 1
                )
                return result
        finally:
            outages.end(dependency)

    async def _outage(self, exc: Exception) -> str | None:
        """The dependency whose outage made the handler fail, or None when the message is at fault.

        A database error does not say which: "no such column" is a bug however the database is,
        so the database counts as down only when it does not answer a probe of its own."""
        if isinstance(exc, Unavailable):
            return exc.dependency
        runtime = self.context.get("runtime")
        probe = getattr(runtime, "database_ok", None)
        if probe is None:
            return None
        try:
            up = await asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
        except Exception:  # the probe timed out: as good as down
            up = False
        return None if up else "database"

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when the consumer is stopping; answers whether to go on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._stopping():
            left = deadline - loop.time()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, _STOP_POLL_SECONDS))
        return False

    def _stopping(self) -> bool:
        subscriber = self.context.get("handler_")
        runtime = self.context.get("runtime")
        return (subscriber is not None and not getattr(subscriber, "running", True)) or bool(
            getattr(runtime, "stopping", False)
        )

    def _dead_letter(self, exc: BaseException, queue: str | None) -> RejectMessage:
        log.error("message.dead_lettered", reason="malformed", routing_key=queue, **describe(exc))
        _counter(self.context).labels("dead_lettered").inc()
        return RejectMessage()

    async def _retry(self, exc: BaseException, queue: str | None, delivery_count: int) -> NackMessage:
        delay = retry_delay(delivery_count)
        log.warning(
            "message.retry",
            routing_key=queue,
            delivery=delivery_count + 1,
            limit=topology.DELIVERY_LIMIT,
            delay_s=delay,
            **describe(exc),
        )
        _counter(self.context).labels("retried").inc()
        await asyncio.sleep(delay)
        return NackMessage(requeue=True)


def _counter(context: Any) -> Counter:
    outcomes: Counter = context.get("oms_message_outcomes")
    return outcomes


def make_broker(
    amqp_url: str,
    *,
    service: str,
    prefetch: int = 32,
    registry: CollectorRegistry | None = None,
    trace_messages: bool = True,
) -> RabbitBroker:
    """The service's broker. ``trace_messages``: a span per consumed message (FastStream's
    OpenTelemetry middleware); off where nothing records spans (``telemetry.spans_recorded``), the
    message's ``traceparent`` is only made current for its handler, so trace ids still reach logs
    and the messages it emits. Messages are counted with one counter (``oms_messages_handled``,
    and per batch in chassis.batch), not timed one by one."""
    registry = registry or CollectorRegistry()
    middlewares: list[Any] = [RabbitTelemetryMiddleware()] if trace_messages else []
    middlewares.append(ConsumePolicy)
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
    broker.context.set_global("oms_outages", Outages(registry))
    broker.context.set_global("oms_carry_trace", not trace_messages)
    broker.context.set_global(
        "oms_messages_handled",
        Counter("oms_messages_handled", "Messages handled and acked", registry=registry),
    )
    return broker


def queue(name: str) -> RabbitQueue:
    """The subscriber side of a queue from :mod:`events.topology` (declared there, not here)."""
    spec = topology.spec(name)
    made: RabbitQueue = RabbitQueue(  # type: ignore[call-overload]  # arguments typed per queue type; ours: the topology's
        spec.name, durable=True, declare=False, arguments=topology.queue_arguments(spec.name)
    )
    return made
