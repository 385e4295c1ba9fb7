from __future__ import annotations

from datetime import timedelta

import pytest

from chassis.db import make_engine, make_sessionmaker, messaging_metadata
from payments import reconcile
from payments.db import Base, Payment


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


@pytest.fixture
def refunds_agree(sessions, providers):
    """``await refunds_agree(provider, order_id, refunds)``: a reconciliation round finds the
    provider's books as ours (``refunds`` refunds checked, no mismatch), and the provider knows of no
    refund it never made (``never``: a provider id to look up, for those that look refunds up by id)."""

    async def check(provider: str, order_id: str, refunds: int, never: str | None = None) -> None:
        found = await reconcile.reconcile(sessions, providers, settled_for=timedelta(0))
        assert (found.refunds_checked, found.unreachable, found.mismatches) == (refunds, 0, [])
        async with sessions() as session:
            paid = await session.get(Payment, order_id)
        unknown = await providers.get(provider).refund_status(
            payment_ref=paid.provider_ref, idempotency_key=f"{order_id}:never", reference=never
        )
        assert unknown is None, "a refund the provider never made is not found"

    return check
