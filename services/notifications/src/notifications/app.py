"""Wiring only: settings, runtime (engine, broker, outbox relay), channel adapters (and, outside
production, the SMS and push providers' stand-ins), the retention of personal data, HTTP routes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from chassis.runtime import ServiceRuntime
from chassis.web import install
from notifications import api, handlers, providers, retention
from notifications.channels import build_channels
from notifications.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings()
        channels = {**build_channels(s), **providers.adapters(s)}
        try:
            async with (
                ServiceRuntime(s, routers=[handlers.router], context={"channels": channels}) as runtime,
                retention.housekeeping(runtime.sessions, timedelta(days=s.retention_days)),
            ):
                app.state.runtime = runtime
                yield
        finally:
            for adapter in channels.values():
                adapter.close()

    app = FastAPI(title="OMS notifications", version="1", lifespan=lifespan)
    install(app, "notifications")
    app.include_router(api.router)
    if (settings or Settings()).environment != "production":  # production talks to the real providers only
        app.state.standins = providers.standins(settings or Settings())
        app.include_router(providers.standins_router(app.state.standins))
    return app
