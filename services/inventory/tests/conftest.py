from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.db import make_engine, make_sessionmaker, messaging_metadata
from chassis.web import install
from inventory import api
from inventory.config import Settings
from inventory.db import Base
from inventory.seed import load_demo_data


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db")


@asynccontextmanager
async def stocked_sessions(settings: Settings) -> AsyncIterator[async_sessionmaker]:
    """Sessions on a fresh schema at ``settings.database_url``, with the demo stock loaded."""
    engine = make_engine(settings.database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(messaging_metadata.create_all)
    await load_demo_data(settings)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def sessions(settings):
    async with stocked_sessions(settings) as made:
        yield made


@pytest.fixture
async def any_sessions(any_database_url):
    """Sessions on SQLite, then on PostgreSQL (a fresh database of the test's own)."""
    async with stocked_sessions(Settings(database_url=any_database_url)) as made:
        yield made


@pytest.fixture
async def client(sessions, settings):
    app = FastAPI()
    install(app, "inventory")
    app.include_router(api.router)
    app.state.runtime = SimpleNamespace(sessions=sessions, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inventory") as c:
        yield c
