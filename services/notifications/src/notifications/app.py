"""Wiring only: settings, runtime (engine, broker, outbox relay), channel adapters, HTTP routes."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from events.runtime import ServiceRuntime
from events.web import install
from notifications import api, handlers
from notifications.channels import build_channels
from notifications.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings()
        channels = build_channels(s)
        try:
            async with ServiceRuntime(s, routers=[handlers.router], context={"channels": channels}) as runtime:
                app.state.runtime = runtime
                yield
        finally:
            for adapter in channels.values():
                adapter.close()

    app = FastAPI(title="OMS notifications", version="1", lifespan=lifespan)
    install(app, "notifications")
    app.include_router(api.router)
    return app
