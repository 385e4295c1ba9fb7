"""Handlers run in batches: one transaction for what arrived, a savepoint each (chassis.batch)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, func, select

from chassis import inbox, outbox
from chassis.batch import Batcher, after_commit
from chassis.db import make_engine, make_sessionmaker, messaging_metadata, outbox_message, processed_message
from events.inventory import StockReleased


class Counted:
    """An engine, and the transactions committed on it."""

    def __init__(self, engine) -> None:
        self.engine, self.commits = engine, []
        event.listen(engine.sync_engine, "commit", lambda conn: self.commits.append(1))


@pytest.fixture
async def engine(tmp_path):
    made = make_engine(f"sqlite+aiosqlite:///{tmp_path}/batch.db")
    async with made.begin() as conn:
        await conn.run_sync(messaging_metadata.create_all)
    yield Counted(made)
    await made.dispose()


def _handler(sessions, n: int, *, fail: bool = False):
    async def handle() -> str:
        async with sessions.begin() as session:
            assert await inbox.claim(session, f"msg-{n}", "test")
            await outbox.stage(
                session, StockReleased(order_id=f"o-{n}", allocations=[]), service="test", subject=f"o-{n}"
            )
            if fail:
                raise RuntimeError("this message's own fault")
        return f"done-{n}"

    return handle


async def _count(sessions, table) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(table))


async def test_messages_that_arrive_together_commit_in_one_transaction_and_publish_together(engine):
    published: list[list[dict]] = []

    async def publish(rows):
        published.append(rows)

    sessions = make_sessionmaker(
        engine.engine, on_outbox_commit=lambda rows: pytest.fail("a batch publishes its own rows")
    )
    batcher = Batcher(sessions, size=32, linger_seconds=0.01, publish=publish)
    before = len(engine.commits)
    results = await asyncio.gather(*(batcher.run(_handler(sessions, n)) for n in range(10)))
    assert results == [f"done-{n}" for n in range(10)]
    assert len(engine.commits) - before == 1 and batcher.batches == 1
    assert [sorted(r["message_id"] for r in rows) for rows in published] == [
        sorted(r["message_id"] for r in published[0])
    ] and len(published[0]) == 10
    assert await _count(sessions, outbox_message) == 10 and await _count(sessions, processed_message) == 10


async def test_a_failing_message_takes_only_its_own_effects_back(engine):
    published: list[dict] = []

    async def publish(rows):
        published.extend(rows)

    sessions = make_sessionmaker(engine.engine)
    batcher = Batcher(sessions, size=32, linger_seconds=0.01, publish=publish)
    results = await asyncio.gather(
        *(batcher.run(_handler(sessions, n, fail=n == 3)) for n in range(6)), return_exceptions=True
    )
    assert isinstance(results[3], RuntimeError)
    assert [r for i, r in enumerate(results) if i != 3] == [f"done-{n}" for n in range(6) if n != 3]
    assert batcher.batches == 1
    async with sessions() as session:
        claimed = set(await session.scalars(select(processed_message.c.message_id)))
        staged = set(await session.scalars(select(outbox_message.c.correlation_id)))
    assert claimed == {f"msg-{n}" for n in range(6) if n != 3}
    assert {r["correlation_id"] for r in published} == staged == {f"o-{n}" for n in range(6) if n != 3}


async def test_a_failed_commit_fails_every_message_of_the_batch_and_keeps_nothing(engine):
    sessions = make_sessionmaker(engine.engine, fail_commit_rate=0.999999)
    published: list[dict] = []

    async def publish(rows):
        published.extend(rows)

    batcher = Batcher(sessions, size=32, linger_seconds=0.01, publish=publish)
    results = await asyncio.gather(
        *(batcher.run(_handler(sessions, n)) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) and "injected" in str(r) for r in results)
    assert published == []
    assert await _count(sessions, outbox_message) == 0 and await _count(sessions, processed_message) == 0


async def test_the_relays_marks_ride_in_the_batch_transaction(engine):
    sessions = make_sessionmaker(engine.engine)
    seen: list[bool] = []
    marked: list[list[str]] = []

    async def mark_in(session):
        seen.append(session.in_transaction())
        return ["m-1", "m-2"]

    batcher = Batcher(sessions, size=4, linger_seconds=0.01, mark_in=mark_in, marked=marked.append)
    before = len(engine.commits)
    await asyncio.gather(*(batcher.run(_handler(sessions, n)) for n in range(4)))
    assert seen == [True] and marked == [["m-1", "m-2"]] and len(engine.commits) - before == 1


async def test_more_messages_than_a_batch_holds_go_in_several(engine):
    sessions = make_sessionmaker(engine.engine)
    batcher = Batcher(sessions, size=4, linger_seconds=0.01)
    await asyncio.gather(*(batcher.run(_handler(sessions, n)) for n in range(10)))
    assert batcher.batches == 3 and batcher.messages == 10
    assert await _count(sessions, processed_message) == 10


async def test_outside_a_batch_begin_is_a_transaction_of_its_own(engine):
    sessions = make_sessionmaker(engine.engine)
    before = len(engine.commits)
    for n in range(3):
        await _handler(sessions, n)()
    assert len(engine.commits) - before == 3


async def test_a_message_whose_savepoint_fails_to_release_leaves_nothing_to_publish(engine):
    """SQLAlchemy runs the commit hooks as a savepoint is released too: a release that fails (a
    flush refused there) must not leave that message's rows to be handed on after the commit."""
    published: list[dict] = []

    async def publish(rows):
        published.extend(rows)

    sessions = make_sessionmaker(engine.engine)

    @event.listens_for(sessions.kw["sync_session_class"], "before_commit")
    def _refuse_release(session) -> None:
        if session.in_nested_transaction() and session.info.pop("refuse_release", False):
            raise RuntimeError("the savepoint's release was refused")

    def handler(n: int):
        async def handle() -> None:
            async with sessions.begin() as session:
                assert await inbox.claim(session, f"msg-{n}", "test")
                await outbox.stage(
                    session,
                    StockReleased(order_id=f"o-{n}", allocations=[]),
                    service="test",
                    subject=f"o-{n}",
                )
                if n == 4:  # the last: nothing staged after it
                    session.info["refuse_release"] = True

        return handle

    batcher = Batcher(sessions, size=32, linger_seconds=0.01, publish=publish)
    results = await asyncio.gather(*(batcher.run(handler(n)) for n in range(5)), return_exceptions=True)
    assert isinstance(results[4], RuntimeError) and [r for i, r in enumerate(results) if i != 4] == [None] * 4
    async with sessions() as session:
        claimed = set(await session.scalars(select(processed_message.c.message_id)))
        staged = set(await session.scalars(select(outbox_message.c.correlation_id)))
    expected = {f"o-{n}" for n in range(5) if n != 4}
    assert claimed == {f"msg-{n}" for n in range(5) if n != 4}
    assert staged == expected and {r["correlation_id"] for r in published} == expected


async def test_a_step_after_commit_sees_its_message_committed_and_comes_before_the_ack(engine):
    """What a handler must do only once its record is committed (hand an e-mail to its server)."""
    sessions = make_sessionmaker(engine.engine)
    batcher = Batcher(sessions, size=32, linger_seconds=0.01)
    seen: list[tuple[int, int]] = []

    def handler(n: int):
        async def handle() -> str:
            await _handler(sessions, n)()

            async def call_out() -> None:  # what a fresh connection sees: committed or not
                seen.append((n, await _count(sessions, processed_message)))

            await after_commit(call_out)
            assert not seen, "no step runs before the batch's commit"
            return f"done-{n}"

        return handle

    assert await asyncio.gather(*(batcher.run(handler(n)) for n in range(5))) == [
        f"done-{n}" for n in range(5)
    ]
    assert batcher.batches == 1
    assert sorted(seen) == [(n, 5) for n in range(5)], "every step saw the whole batch committed"


async def test_a_failing_step_after_commit_fails_its_message_only(engine):
    sessions = make_sessionmaker(engine.engine)
    batcher = Batcher(sessions, size=32, linger_seconds=0.01)

    def handler(n: int):
        async def handle() -> str:
            await _handler(sessions, n)()

            async def call_out() -> None:
                if n == 1:
                    raise ConnectionRefusedError("the server is down")

            await after_commit(call_out)
            return f"done-{n}"

        return handle

    results = await asyncio.gather(*(batcher.run(handler(n)) for n in range(3)), return_exceptions=True)
    assert results[0] == "done-0" and results[2] == "done-2"
    assert isinstance(results[1], ConnectionRefusedError)
    assert await _count(sessions, processed_message) == 3, "its record stays: a redelivery finishes it"


async def test_outside_a_batch_a_step_after_commit_runs_at_once():
    ran: list[str] = []

    async def step() -> None:
        ran.append("now")

    await after_commit(step)
    assert ran == ["now"]
