"""Wiring only: settings, runtime (engine, broker, outbox relay), HTTP routes."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from chassis.runtime import ServiceRuntime
from chassis.web import install
from inventory import api, handlers
from inventory.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with ServiceRuntime(settings or Settings(), routers=[handlers.router]) as runtime:
            app.state.runtime = runtime
            yield

    app = FastAPI(title="OMS inventory", version="1", lifespan=lifespan)
    install(app, "inventory")
    app.include_router(api.router)
    return app
