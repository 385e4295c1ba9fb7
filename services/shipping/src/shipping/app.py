"""Wiring only: settings, runtime (engine, broker, outbox relay), the simulated carrier, the
retention of personal data, HTTP routes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from events.runtime import ServiceRuntime
from events.web import install
from shipping import api, carrier, handlers, retention
from shipping.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings()
        async with (
            ServiceRuntime(s, routers=[handlers.router]) as runtime,
            carrier.simulation(runtime.sessions, s.simulation_step_seconds, s.carrier_simulation),
            retention.housekeeping(runtime.sessions, timedelta(days=s.retention_days)),
        ):
            app.state.runtime = runtime
            yield

    app = FastAPI(title="OMS shipping", version="1", lifespan=lifespan)
    install(app, "shipping")
    app.include_router(api.router)
    return app
