from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from chassis.db import make_engine, make_sessionmaker, messaging_metadata
from chassis.web import install
from shipping import api, carriers
from shipping.config import Settings
from shipping.db import Base


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/shipping.db", carrier_simulation=False)


async def _sessions(url: str):
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(messaging_metadata.create_all)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def sessions(settings):
    async for made in _sessions(settings.database_url):
        yield made


@pytest.fixture
async def any_sessions(any_database_url):
    """Sessions on SQLite, then on PostgreSQL (a fresh database of the test's own)."""
    async for made in _sessions(any_database_url):
        yield made


@pytest.fixture
def adapters(settings, sessions):
    made = carriers.adapters(
        settings.carrier_secrets,
        default_secret=settings.carrier_secret,
        window=settings.signature_window_seconds,
    )
    for adapter in made.values():
        adapter.attach(sessions)
    return made


@pytest.fixture
async def client(sessions, settings, adapters):
    app = FastAPI()
    install(app, "shipping")
    app.include_router(api.router)
    app.state.runtime = SimpleNamespace(sessions=sessions, settings=settings)
    app.state.carriers = adapters
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shipping") as c:
        yield c
