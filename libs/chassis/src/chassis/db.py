"""Engine and session factory, with the two tables every service keeps for messaging.

SQLite (the default) runs in WAL mode, through one pooled connection per process, and takes the
write lock when a transaction begins (``BEGIN IMMEDIATE``): concurrent handlers queue for the
connection instead of failing to upgrade a lock or sleeping in SQLite's busy handler. Its calls run
in the event loop's thread (:class:`InlineSqlite`).
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiosqlite
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    make_url,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Dialect, Result
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from chassis.tls import postgres_connect


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back time-zone aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


messaging_metadata = MetaData()

OUTBOX_COMMITTED = "outbox_committed"
"""``session.info`` key: the outbox rows the transaction's commit wrote (see chassis.outbox)."""
HANDED_OVER = "outbox_handed_over"
"""``session.info`` key: the session's commits hand their outbox rows to a relay (see chassis.outbox)."""
OUTBOX_PENDING = "outbox_rows"
"""``session.info`` key: the outbox rows staged in the session's transaction, written as it commits."""
BATCH = "batch_rows"
"""``session.info`` key of a batch's session (chassis.batch): a list that its commit fills with the
outbox rows it wrote, for the batch to publish (instead of handing them to the relay)."""
BATCH_SAVEPOINT = "batch_savepoint"
"""``session.info`` key: the savepoint of the message running in the batch now. The outbox stages
inside it as at the top of a transaction (written with the batch's commit, dropped with the
savepoint)."""

_batch_session: ContextVar[AsyncSession | None] = ContextVar("oms_batch_session", default=None)


@contextlib.contextmanager
def in_batch(session: AsyncSession) -> Iterator[None]:
    """Within this block (one message's handler in a batch), ``sessions.begin()`` is a savepoint
    of ``session``'s transaction."""
    token = _batch_session.set(session)
    try:
        yield
    finally:
        _batch_session.reset(token)


@contextlib.asynccontextmanager
async def _savepoint(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """One message's share of a batch transaction: what it wrote and staged goes if it fails."""
    pending = session.info.setdefault(OUTBOX_PENDING, [])
    staged, outer = len(pending), session.info.get(BATCH_SAVEPOINT)
    try:
        async with session.begin_nested() as nested:
            session.info[BATCH_SAVEPOINT] = nested.sync_transaction
            yield session
    except BaseException:
        still: list[Any] = session.info.get(OUTBOX_PENDING) or pending
        del still[staged:]
        raise
    finally:
        session.info[BATCH_SAVEPOINT] = outer


class ServiceSessions(async_sessionmaker[AsyncSession]):
    """The service's session factory. ``begin()`` opens a transaction, as usual, except inside a
    batch (chassis.batch), where it is a savepoint of the batch's transaction: the handlers' code
    is the same either way."""

    def begin(self) -> Any:
        session = _batch_session.get()
        if session is not None:
            return _savepoint(session)
        return super().begin()


outbox_message = Table(
    "outbox_message",
    messaging_metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("exchange", String(64), nullable=False),
    Column("routing_key", String(128), nullable=False),
    Column("message_type", String(128), nullable=False),
    Column("correlation_id", String(64), nullable=True),
    Column("body", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("published_at", UtcDateTime(), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
)
Index(
    "ix_outbox_message_pending",
    outbox_message.c.seq,
    sqlite_where=outbox_message.c.published_at.is_(None),
    postgresql_where=outbox_message.c.published_at.is_(None),
)

processed_message = Table(
    "processed_message",
    messaging_metadata,
    Column("message_id", String(64), primary_key=True),
    Column("consumer", String(128), primary_key=True),
    Column("processed_at", UtcDateTime(), nullable=False),
)
Index("ix_processed_message_processed_at", processed_message.c.processed_at)  # the inbox's purge


def held(result: Result[Any]) -> list[SimpleNamespace]:
    """The rows of ``result`` as the services hold a row: its columns as attributes, to read and
    change before one UPDATE writes the changed ones back (docs/operations.md)."""
    return [SimpleNamespace(**row) for row in result.mappings()]


def held_first(result: Result[Any]) -> SimpleNamespace | None:
    """The first row of ``result`` as :func:`held` gives it; None when there is none."""
    row = result.mappings().first()
    return SimpleNamespace(**row) if row is not None else None


def rowcount(result: Any) -> int:
    """The rows an INSERT, UPDATE or DELETE changed (``execute`` is typed as answering any
    ``Result``; these answer a ``CursorResult``)."""
    return int(cast(CursorResult[Any], result).rowcount)


def table(model: type[Any]) -> Table:
    """A declarative model's table, typed as the ``Table`` it is (SQLAlchemy types ``__table__``
    as any ``FromClause``), for the Core statements built from it."""
    found = model.__table__
    assert isinstance(found, Table)
    return found


class InsertIfAbsent:
    """``INSERT … ON CONFLICT DO NOTHING`` into ``table``, built once per dialect; calling it
    answers whether the row was new. On PostgreSQL a concurrent insert of the same key waits for
    the other transaction's outcome instead of failing."""

    def __init__(self, table: Table) -> None:
        self._statements = {
            "sqlite": sqlite.insert(table).on_conflict_do_nothing(),
            "postgresql": postgresql.insert(table).on_conflict_do_nothing(),
        }

    async def __call__(self, session: AsyncSession, values: dict[str, Any]) -> bool:
        result = await session.execute(self._statements[session.get_bind().dialect.name], values)
        return rowcount(result) == 1


class InlineSqlite(aiosqlite.Connection):
    """aiosqlite's connection, with every call made at once in the event loop's thread.

    aiosqlite hands each call (cursor, execute, fetch, close, commit) to a thread of its own and
    back: about four hand-overs per statement, each a futex wake-up and a GIL switch, which on a
    busy two-core machine cost far more than the statement itself (microseconds on a local WAL
    file; a commit does not wait for the disk with ``synchronous=NORMAL``). The one thing that
    could block the loop for long, another process holding the write lock, does not happen here:
    each service has its database file to itself, and its one connection is shared in the pool.
    """

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The sqlite3 connection underneath, for what needs no result (``BEGIN IMMEDIATE``)."""
        return self._conn

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


async def _connect_inline(database: str) -> InlineSqlite:
    # Opened by aiosqlite's thread (which also runs SQLAlchemy's isolation-level changes), used
    # from the loop's: the module is built thread-safe, the same-thread check only has to go.
    connection = InlineSqlite(
        partial(sqlite3.connect, database, timeout=30, check_same_thread=False), iter_chunk_size=64
    )
    connection._thread.daemon = True
    await connection
    return connection


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    if not is_sqlite(url):
        url, connect_args = postgres_connect(url)  # sslmode, sslrootcert, … (chassis.tls)
        return create_async_engine(
            url,
            echo=echo,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args=connect_args,
        )

    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # hide_parameters: errors never carry row values (contact details) into logs
    # One connection: SQLite has one writer anyway, and a transaction waiting for the pool waits in
    # the event loop and starts the moment the other ends, where one waiting for SQLite's file lock
    # sleeps in its busy handler (up to 100 ms a try) long after the lock is free.
    engine = create_async_engine(
        url,
        echo=echo,
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
        pool_timeout=120,
        async_creator=partial(_connect_inline, database or ":memory:"),
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:  # pragma: no cover - driver hook
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below decide
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:  # pragma: no cover - driver hook
        # Straight on the sqlite3 connection: through SQLAlchemy's execution path (exec_driver_sql)
        # this one statement cost about a twentieth of every transaction's CPU.
        conn.connection.driver_connection.sqlite.execute("BEGIN IMMEDIATE")

    return engine


class InjectedCommitFailure(RuntimeError):
    """Raised on purpose by the fault injection below; never in a normal run."""


def make_sessionmaker(
    engine: AsyncEngine,
    *,
    on_outbox_commit: Callable[[list[dict[str, Any]] | None], None] | None = None,
    fail_commit_rate: float = 0.0,
) -> async_sessionmaker[AsyncSession]:
    """Sessions that call ``on_outbox_commit(rows)`` after a commit that staged outbox messages,
    with the outbox rows the commit wrote (None when they were all written inside savepoints).

    ``fail_commit_rate`` (fault injection for the resilience tests, ``OMS_FAULT_FAIL_COMMIT_RATE``;
    0 in every real run) makes that share of commits that handled a message fail, to show that the
    message is then redelivered and applied once.
    """

    from chassis.outbox import OutboxSession  # outbox builds on this module's tables

    class ServiceSession(OutboxSession):
        pass

    if fail_commit_rate > 0:

        @event.listens_for(ServiceSession, "before_commit")
        def _fail_some(session: Session) -> None:
            if session.in_nested_transaction():  # a savepoint's release: not a commit
                return
            if session.info.get("outbox_staged") and random.random() < fail_commit_rate:
                raise InjectedCommitFailure("injected commit failure")

    @event.listens_for(ServiceSession, "after_commit")
    def _after_commit(session: Session) -> None:
        # SQLAlchemy also calls this as a savepoint is released: nothing is committed yet then.
        if session.in_nested_transaction() or not session.info.pop("outbox_staged", False):
            return
        rows, batch = session.info.pop(OUTBOX_COMMITTED, None), session.info.get(BATCH)
        if batch is not None and rows is not None:
            batch.extend(rows)  # the batch publishes them itself
        elif on_outbox_commit is not None:
            on_outbox_commit(rows)

    @event.listens_for(ServiceSession, "after_transaction_end")
    def _after_end(session: Session, transaction: Any) -> None:
        if transaction.parent is None:  # the whole transaction, not a savepoint inside it
            session.info.pop("outbox_staged", None)

    return ServiceSessions(
        engine,
        expire_on_commit=False,
        sync_session_class=ServiceSession,
        info={HANDED_OVER: on_outbox_commit is not None},
    )
