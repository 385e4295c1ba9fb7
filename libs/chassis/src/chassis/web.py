"""HTTP pieces every service shares: problem+json errors (RFC 9457), API keys with roles,
``/healthz``, ``/readyz``, ``/metrics``, and a span plus log context per request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chassis import keys
from chassis.logs import get_logger
from chassis.runtime import ServiceRuntime
from chassis.settings import Role, ServiceSettings
from chassis.telemetry import context_from, tracer

log = get_logger("chassis.web")

PROBLEM = "application/problem+json"
PROBLEM_BASE = "https://oms.dev/problems/"


class Problem(Exception):
    """An error answered as ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        type_: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.type, self.title, self.detail, self.extra = status, type_, title, detail, extra
        self.headers = headers


def problem_response(
    status: int, type_: str, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": PROBLEM_BASE + type_, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def validation_errors(errors: Any) -> list[dict[str, str]]:
    """Pydantic errors as ``{"field": "items.0.quantity", "message": ..., "type": ...}``."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header")]
        out.append(
            {
                "field": ".".join(loc) or "body",
                "message": e.get("msg", "invalid"),
                "type": e.get("type", "value_error"),
            }
        )
    return out


async def runtime(request: Request) -> ServiceRuntime:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a hop on every request
    rt: ServiceRuntime = request.app.state.runtime
    return rt


Runtime = Annotated[ServiceRuntime, Depends(runtime)]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key's name (recorded as the actor of what it does) and its role."""

    name: str
    role: Role

    def may(self, *roles: Role) -> bool:
        return self.role is Role.ADMIN or self.role in roles


def authenticate(settings: ServiceSettings, key: str) -> Caller | None:
    """The caller an API key stands for (its configured name and role), or None for an unknown key.
    Only hashes are configured; every entry is compared in constant time (chassis.keys)."""
    entry = keys.find(settings.api_keys, key)
    if entry is None:
        return None
    return Caller(name=entry.name, role=entry.role)


def require(*roles: Role) -> Any:
    """A dependency that lets through only callers whose API key holds one of ``roles`` (admin: all),
    and gives the handler the ``Caller``."""

    async def check(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Problem(401, "unauthorized", "Unauthorized", "send Authorization: Bearer <api key>")
        caller = authenticate(request.app.state.runtime.settings, key)
        if caller is None:
            raise Problem(401, "unauthorized", "Unauthorized", "unknown API key")
        if not caller.may(*roles):
            raise Problem(403, "forbidden", "Forbidden", f"this key's role ({caller.role}) may not do this")
        return caller

    return Depends(check)


MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(StarletteHTTPException):
    """Raised while a request body is read past the limit. An HTTPException, so FastAPI passes it
    through its body parsing instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


class LimitBody:
    """Refuse a request body over the service's ``max_body_bytes`` (1 MiB by default) with 413:
    at once when ``Content-Length`` says so, else while it is read (a chunked body), before it is
    all held in memory."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
        limit = getattr(getattr(rt, "settings", None), "max_body_bytes", MAX_BODY_BYTES)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status = 413 if declared.isdigit() else 400
            await problem_response(
                status,
                "body-too-large" if status == 413 else "bad-request",
                "Request body too large" if status == 413 else "Bad request",
                f"the request body is larger than {limit} bytes"
                if status == 413
                else "Content-Length is not a number",
            )(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


API_DOCUMENT_ROUTES = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
"""Not served: the OpenAPI documents are committed under docs/openapi/ (make openapi), so the
services tell an unauthenticated caller nothing of their routes and models."""


PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message", "type"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
ERRORS = {
    "400": "Bad request",
    "401": "No API key, or an unknown one",
    "403": "The key's role may not do this",
    "404": "Not found (or not the caller's)",
    "409": "Not allowed in the current state",
    "413": "Body too large",
    "422": "Invalid input, each wrong field named in errors",
    "503": "Not now: retry after Retry-After",
}


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with what every operation may answer besides success: a problem+json
    body (instead of FastAPI's own 422 shape, which the API does not send), and the bearer key."""
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    document["components"]["schemas"].pop("HTTPValidationError", None)
    document["components"]["schemas"].pop("ValidationError", None)
    document["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    problem = {"content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERRORS.items():
                responses[status] = {"description": description, **problem}
            if path not in ("/healthz", "/readyz", "/metrics"):
                operation["security"] = [{"apiKey": []}]
    return document


_HTTP_METRICS: dict[str, Any] = {}


def _http_metrics() -> tuple[Counter, Histogram]:
    if not _HTTP_METRICS:  # once per process: the default registry refuses a second registration
        _HTTP_METRICS["requests"] = Counter(
            "oms_http_requests", "HTTP requests", ["method", "route", "status"]
        )
        _HTTP_METRICS["latency"] = Histogram(
            "oms_http_request_seconds", "HTTP request latency", ["method", "route"]
        )
    return _HTTP_METRICS["requests"], _HTTP_METRICS["latency"]


class ObserveRequests:
    """A span (joined to the caller's ``traceparent``), log context and metrics for each request.

    Plain ASGI: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) runs every request
    through an extra task and memory streams, which cost more than the request in a busy service.
    """

    def __init__(self, app: ASGIApp, *, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        status = 500
        started = False

        async def observed_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        ctx = context_from(Headers(scope=scope).get("traceparent"))
        with tracer().start_as_current_span(f"{method} {path}", context=ctx, kind=trace.SpanKind.SERVER):
            bound = structlog.contextvars.bind_contextvars(http_method=method, http_path=path)
            try:
                await self.app(scope, receive, observed_send)
            except Exception:
                log.exception("http.unhandled")
                if started:
                    raise
                response = problem_response(
                    500, "internal", "Internal error", "the request could not be handled"
                )
                await response(scope, receive, observed_send)
            finally:
                structlog.contextvars.reset_contextvars(**bound)
        route = getattr(scope.get("route"), "path", "unmatched")  # set by the router on this same scope
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(time.perf_counter() - start)


def install(app: FastAPI, service: str) -> None:
    """Error handlers, request middleware and the health/metrics routes."""
    requests, latency = _http_metrics()

    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.type, exc.title, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc.errors())
        fields = ", ".join(e["field"] for e in errors)
        return problem_response(
            422, "validation-error", "Invalid request", f"invalid fields: {fields}", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, "http-error", str(exc.detail), str(exc.detail))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return problem_response(413, "body-too-large", "Request body too large", str(exc.detail))

    app.router.routes[:] = [
        r for r in app.router.routes if getattr(r, "path", None) not in API_DOCUMENT_ROUTES
    ]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(LimitBody)
    app.add_middleware(
        ObserveRequests, requests=requests, latency=latency
    )  # the outer one: sees every answer

    app.include_router(health_router())


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        rt: ServiceRuntime | None = getattr(request.app.state, "runtime", None)
        waiting = rt.waiting_for() if rt is not None else []
        checks = {
            "database": bool(rt and await rt.database_ok()),
            "broker": bool(rt and rt.started and await rt.broker_ok()),
            "dependencies": rt is not None and not waiting,  # no handler waiting out an outage
        }
        ok = all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "checks": checks}
        if waiting:
            body["waiting_for"] = waiting
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        from prometheus_client import REGISTRY

        rt: ServiceRuntime | None = getattr(request.app.state, "runtime", None)
        body = generate_latest(REGISTRY)
        if rt is not None:
            await rt.refresh_backlog()
            body += generate_latest(rt.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
