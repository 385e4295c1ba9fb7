"""Wiring only: settings, runtime (engine, broker, outbox relay), the saga's deadline scanner,
the retention of personal data, the dead-letter parking (and its purge), admission control, HTTP
routes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from chassis import deadletters
from chassis.runtime import ServiceRuntime
from chassis.web import install
from orders import api, console, handlers, ops, retention
from orders.admission import Admission
from orders.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings()
        routers = [handlers.router, deadletters.build_router()]
        async with (
            ServiceRuntime(s, routers=routers) as runtime,
            handlers.deadlines(runtime.sessions, s),
            deadletters.housekeeping(runtime.sessions, s),
            retention.housekeeping(runtime.sessions, timedelta(days=s.retention_days)),
        ):
            app.state.runtime = runtime
            app.state.admission = Admission(
                max_wait_seconds=s.admission_max_wait_seconds,
                min_in_flight=s.admission_min_in_flight,
                registry=runtime.registry,
                outage=lambda: not runtime.relay.connected,
                abandoned_seconds=s.idempotency_abandoned_seconds,
            )
            yield

    app = FastAPI(title="OMS orders", version="1", lifespan=lifespan)
    install(app, "orders")
    app.include_router(api.router)
    app.include_router(ops.router)
    app.include_router(deadletters.build_api())
    console.install(app)
    return app
