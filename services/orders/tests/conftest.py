from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from chassis import deadletters
from chassis.db import make_engine, make_sessionmaker, messaging_metadata
from chassis.deadletters import deadletter_metadata
from chassis.web import install
from orders import api, console, ops
from orders.admission import Admission
from orders.config import Settings
from orders.db import Base


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/orders.db",
        step_timeout_seconds=30,
        max_quantity_per_line=100,
        inventory_url="http://127.0.0.1:9",
        amqp_url="amqp://guest:guest@127.0.0.1:9/",
    )


@pytest.fixture
async def sessions(settings):
    engine = make_engine(settings.database_url)
    async with engine.begin() as conn:
        for metadata in (Base.metadata, messaging_metadata, deadletter_metadata):
            await conn.run_sync(metadata.create_all)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def admission(settings) -> Admission:
    """The door as the service sets it up, reading the backlog at every request."""
    return Admission(
        max_wait_seconds=settings.admission_max_wait_seconds,
        min_in_flight=settings.admission_min_in_flight,
        refresh_seconds=0,
        registry=CollectorRegistry(),
    )


@pytest.fixture
async def client(sessions, settings, admission):
    app = FastAPI()
    install(app, "orders")
    app.include_router(api.router)
    app.include_router(ops.router)
    app.include_router(deadletters.build_api())
    console.install(app)
    app.state.admission = admission

    async def refresh_backlog() -> int:
        return 0

    app.state.runtime = SimpleNamespace(sessions=sessions, settings=settings, refresh_backlog=refresh_backlog)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders") as c:
        yield c
