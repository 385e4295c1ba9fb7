"""Wiring only: settings, runtime (engine, broker, outbox relay), HTTP routes."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from events.runtime import ServiceRuntime
from events.web import install
from payments import api, handlers
from payments.config import Settings
from payments.provider import Ledger, SandboxProvider


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings()
        ledger = Ledger(s.sandbox_ledger)
        provider = SandboxProvider(ledger=ledger, late_seconds=s.late_capture_seconds)
        try:
            async with ServiceRuntime(s, routers=[handlers.router], context={"provider": provider}) as runtime:
                app.state.runtime = runtime
                app.state.provider = provider
                yield
        finally:
            ledger.close()

    app = FastAPI(title="OMS payments", version="1", lifespan=lifespan)
    install(app, "payments")
    app.include_router(api.router)
    app.include_router(api.providers)
    return app
