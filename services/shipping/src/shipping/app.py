"""Wiring only: settings, runtime (engine, broker, outbox relay), carrier adapters, the simulated
carrier, the retention of personal data, HTTP routes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from chassis.runtime import ServiceRuntime
from chassis.web import install
from shipping import api, carriers, handlers, retention, service
from shipping.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings()
        adapters = carriers.adapters(
            s.carrier_secrets, default_secret=s.carrier_secret, window=s.signature_window_seconds
        )
        async with (
            ServiceRuntime(s, routers=[handlers.router], context={"carriers": adapters}) as runtime,
            service.simulation(runtime.sessions, s.simulation_step_seconds, s.carrier_simulation),
            retention.housekeeping(runtime.sessions, timedelta(days=s.retention_days)),
        ):
            for adapter in adapters.values():
                adapter.attach(runtime.sessions)
            app.state.runtime, app.state.carriers = runtime, adapters
            yield

    app = FastAPI(title="OMS shipping", version="1", lifespan=lifespan)
    install(app, "shipping")
    app.include_router(api.router)
    return app
