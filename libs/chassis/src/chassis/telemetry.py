"""OpenTelemetry set-up and the W3C ``traceparent`` that carries one order's trace across services."""

from __future__ import annotations

import os

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


def setup_tracing(service: str) -> TracerProvider:
    """A tracer provider named for the service, unless one is set already (``opentelemetry-instrument``,
    from ``opentelemetry-distro``, which is not a dependency here, sets one with its exporters).

    Ours exports to the console with ``OTEL_TRACES_EXPORTER=console`` and nowhere otherwise. Where
    nothing exports, spans are not recorded (recording one cost more than twice as much CPU as not,
    on every message), unless ``OTEL_TRACES_SAMPLER`` or a sampled parent asks for it: trace ids
    and ``traceparent`` flow into logs and messages either way.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    console = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() == "console"
    sampler = None if console or os.environ.get("OTEL_TRACES_SAMPLER") else _NOTHING_SAMPLED
    provider = TracerProvider(resource=Resource.create({"service.name": f"oms-{service}"}), sampler=sampler)
    if console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


_NOTHING_SAMPLED = ParentBased(ALWAYS_OFF)


def spans_recorded() -> bool:
    """Whether this process records spans of its own: False when :func:`setup_tracing` found nothing
    to export them to. Then a consumer builds no span per message, and only carries the message's
    ``traceparent`` on (chassis.broker): trace ids reach logs and messages all the same."""
    provider = trace.get_tracer_provider()
    return not (isinstance(provider, TracerProvider) and provider.sampler is _NOTHING_SAMPLED)


def tracer(name: str = "oms") -> trace.Tracer:
    return trace.get_tracer(name)


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> otel_context.Context:
    if not traceparent:
        return otel_context.get_current()
    return _propagator.extract({"traceparent": traceparent})


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
