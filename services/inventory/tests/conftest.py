from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from events.db import make_engine, make_sessionmaker, messaging_metadata
from events.web import install
from inventory import api
from inventory.config import Settings
from inventory.db import Base
from inventory.seed import load_demo_data


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db")


@pytest.fixture
async def sessions(settings):
    engine = make_engine(settings.database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(messaging_metadata.create_all)
    await load_demo_data(settings)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
async def any_sessions(request, tmp_path):
    """Sessions on SQLite, then on PostgreSQL (a fresh database of the test's own)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/inventory.db"
    else:
        url = request.getfixturevalue("postgres_database")
    settings = Settings(database_url=url)
    engine = make_engine(settings.database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(messaging_metadata.create_all)
    await load_demo_data(settings)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def client(sessions, settings):
    app = FastAPI()
    install(app, "inventory")
    app.include_router(api.router)
    app.state.runtime = SimpleNamespace(sessions=sessions, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inventory") as c:
        yield c
