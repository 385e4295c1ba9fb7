from __future__ import annotations

import pytest

from chassis.db import make_engine, make_sessionmaker, messaging_metadata
from payments.db import Base


async def _sessions(url: str):
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(messaging_metadata.create_all)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def sessions(tmp_path):
    async for made in _sessions(f"sqlite+aiosqlite:///{tmp_path}/payments.db"):
        yield made


@pytest.fixture
async def any_sessions(any_database_url):
    """Sessions on SQLite, then on PostgreSQL (a fresh database of the test's own)."""
    async for made in _sessions(any_database_url):
        yield made
