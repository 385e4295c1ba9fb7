"""What a transaction stages in the outbox and claims in the inbox, on SQLite and on PostgreSQL
(no broker): staged rows are written as the transaction commits, in the order they were staged,
and never when it rolls back; the inbox's records are purged past their retention."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis import inbox, outbox
from chassis.db import make_engine, make_sessionmaker, messaging_metadata, outbox_message, processed_message
from chassis.outbox import OutboxRelay
from events.envelope import Event


class Pinged(Event):
    routing_key = "test.pinged"
    n: int


@pytest.fixture
async def engine(any_database_url):
    engine = make_engine(any_database_url)
    async with engine.begin() as conn:
        await conn.run_sync(messaging_metadata.create_all)
    yield engine
    await engine.dispose()


async def _staged(sessions) -> list[int]:
    async with sessions() as session:
        bodies = await session.scalars(select(outbox_message.c.body).order_by(outbox_message.c.seq))
        return [json.loads(body)["data"]["n"] for body in bodies]


async def test_a_transaction_writes_what_it_staged_as_it_commits_in_order(engine):
    sessions = make_sessionmaker(engine)
    async with sessions.begin() as session:
        ids = [await outbox.stage(session, Pinged(n=n), service="test", subject="ord-1") for n in (1, 2, 3)]
        assert await _staged(sessions) == []  # nothing visible before the commit
    assert await _staged(sessions) == [1, 2, 3]
    async with sessions() as session:
        assert (
            list(await session.scalars(select(outbox_message.c.message_id).order_by(outbox_message.c.seq)))
            == ids
        )


async def test_a_rolled_back_transaction_stages_nothing_not_even_for_the_next_one(engine):
    sessions = make_sessionmaker(engine)
    async with sessions() as session:
        with pytest.raises(RuntimeError):
            async with session.begin():
                await outbox.stage(session, Pinged(n=1), service="test", subject="ord-1")
                raise RuntimeError("the state change failed")
        async with session.begin():  # the same session, its next transaction
            await outbox.stage(session, Pinged(n=2), service="test", subject="ord-2")
    assert await _staged(sessions) == [2]


async def test_messages_staged_in_a_savepoint_go_with_it(engine):
    """(A savepoint's rows are written at once, before those its transaction staged outside it.)"""
    sessions = make_sessionmaker(engine)
    async with sessions.begin() as session:
        await outbox.stage(session, Pinged(n=1), service="test", subject="ord-1")
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                await outbox.stage(session, Pinged(n=2), service="test", subject="ord-1")
                raise RuntimeError("the savepoint's change failed")
        async with session.begin_nested():
            await outbox.stage(session, Pinged(n=3), service="test", subject="ord-1")
    assert sorted(await _staged(sessions)) == [1, 3]


async def test_a_session_that_would_drop_staged_rows_is_refused(engine):
    """Only OutboxSessions write what they staged: any other session is refused at once, so no
    commit can leave its staged messages behind."""
    plain = async_sessionmaker(engine)
    async with plain.begin() as session:
        with pytest.raises(TypeError, match="make_sessionmaker"):
            await outbox.stage(session, Pinged(n=7), service="test", subject="ord-7")
    assert await _staged(plain) == []
    own = async_sessionmaker(engine, sync_session_class=outbox.OutboxSession)
    async with own.begin() as session:
        await outbox.stage(session, Pinged(n=8), service="test", subject="ord-8")
    assert await _staged(own) == [8]


async def test_the_inbox_claims_once_per_consumer_and_a_rollback_claims_nothing(engine):
    sessions = make_sessionmaker(engine)
    message_id = str(uuid.uuid4())
    async with sessions.begin() as session:
        assert await inbox.claim(session, message_id, "a") is True
        assert await inbox.claim(session, message_id, "a") is False  # within the same transaction too
    async with sessions.begin() as session:
        assert await inbox.claim(session, message_id, "a") is False
        assert await inbox.claim(session, message_id, "b") is True
    with pytest.raises(RuntimeError):
        async with sessions.begin() as session:
            assert await inbox.claim(session, "rolled-back", "a") is True
            raise RuntimeError("effect failed")
    async with sessions.begin() as session:
        assert await inbox.claim(session, "rolled-back", "a") is True


async def test_a_commit_that_staged_wakes_the_relay_even_after_a_savepoint_rolled_back(engine):
    woken = []
    sessions = make_sessionmaker(engine, on_outbox_commit=lambda rows: woken.append(True))
    async with sessions.begin() as session:
        await outbox.stage(session, Pinged(n=1), service="test", subject="ord-1")
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                raise RuntimeError("the savepoint's change failed")
    async with sessions.begin() as session:
        await inbox.claim(session, str(uuid.uuid4()), "a")  # staged nothing: no wake-up
    assert woken == [True]


async def test_the_inbox_forgets_ids_past_their_retention_oldest_first_in_batches(engine):
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    ages = {f"old-{i}": timedelta(days=8, minutes=i) for i in range(5)} | {"recent": timedelta(days=6)}
    async with sessions.begin() as session:
        await session.execute(
            insert(processed_message),
            [{"message_id": mid, "consumer": "c", "processed_at": now - age} for mid, age in ages.items()],
        )
    assert await inbox.purge(sessions, older_than=timedelta(days=7), batch=2) == 5  # three batches
    async with sessions() as session:
        assert list(await session.scalars(select(processed_message.c.message_id))) == ["recent"]
        assert not await inbox.claim(session, "recent", "c")  # still a duplicate
        assert await inbox.claim(session, "old-0", "c")  # forgotten


async def test_the_relays_housekeeping_purges_published_rows_and_old_inbox_records(engine):
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        for n in (1, 2, 3):
            await outbox.stage(session, Pinged(n=n), service="test", subject="ord-1", message_id=f"m{n}")
    async with sessions.begin() as session:
        for n, published in ((1, now - timedelta(hours=2)), (2, now - timedelta(minutes=5))):
            await session.execute(
                update(outbox_message)
                .where(outbox_message.c.message_id == f"m{n}")
                .values(published_at=published)
            )
        await session.execute(
            insert(processed_message),
            [
                {"message_id": "old", "consumer": "c", "processed_at": now - timedelta(days=3)},
                {"message_id": "new", "consumer": "c", "processed_at": now - timedelta(hours=1)},
            ],
        )
    relay = OutboxRelay(sessions, "amqp://nowhere", service="test", inbox_retention=timedelta(days=2))
    await relay.purge()  # no broker needed
    assert await _staged(sessions) == [2, 3]  # published an hour ago or more: gone; not published: kept
    async with sessions() as session:
        assert list(await session.scalars(select(processed_message.c.message_id))) == ["new"]
