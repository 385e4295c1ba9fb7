"""Transactional outbox: messages are written in the same transaction as the state change that
emits them, and a relay publishes them afterwards with publisher confirms, persistent delivery and
(commands) mandatory routing. A row is marked published only after the broker confirmed it; one the broker
refused is retried with back-off. A transaction that staged messages hands its committed rows to
the relay as it commits, so they are published without being read back, and marked published in
batches; the relay also reads the table, so rows left by a crash (or by a publish that failed)
are sent later.

Several processes of a service (replicas) each run a relay on the one database, and a row is
published by one of them: a row handed over is its writer's for ``LEASE`` (it is written with
``next_attempt_at`` that far ahead, so no read takes it meanwhile), and a read claims the rows it
takes for as long (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, moving their ``next_attempt_at``
ahead in the same statement). A relay that dies leaves its rows to the others once the lease
is over."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from sqlalchemy import bindparam, event, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from chassis import inbox
from chassis.db import BATCH_SAVEPOINT, HANDED_OVER, OUTBOX_COMMITTED, OUTBOX_PENDING, outbox_message
from chassis.logs import get_logger
from chassis.telemetry import current_traceparent
from events.envelope import Cause, Message, build
from events.names import CLOUDEVENTS_CONTENT_TYPE, COMMANDS_EXCHANGE, EVENTS_EXCHANGE

log = get_logger("chassis.outbox")


_INSERT = insert(outbox_message)
LEASE = timedelta(seconds=10)
"""How long a row is one relay's to publish: written by its process and handed over, or claimed
by its read. Past it, another relay may take it (the first one no longer sends it)."""
_PENDING = OUTBOX_PENDING  # session.info: the rows staged in the session's current transaction


async def stage(
    session: AsyncSession,
    payload: Message,
    *,
    service: str,
    subject: str | None,
    causation: Cause = None,
    correlationid: str | None = None,
    message_id: str | None = None,
) -> str:
    """Add ``payload`` to the outbox inside the caller's transaction; returns the message id.

    The rows of one transaction are written together, in one statement, as it commits, in the
    order they were staged. Inside a savepoint a row is written at once, so that rolling the
    savepoint back takes it too; it then comes before the rows the transaction staged outside
    it. A batch's savepoint for one message (chassis.batch) counts as the top of the transaction.
    (The relay publishes a batch concurrently anyway: messages of one transaction are not ordered
    on the wire.)"""
    if not isinstance(session.sync_session, OutboxSession):
        raise TypeError("outbox.stage needs a session from chassis.db.make_sessionmaker (an OutboxSession)")
    envelope = build(
        payload,
        service=service,
        subject=subject,
        causation=causation,
        correlationid=correlationid,
        traceparent=current_traceparent(),
        message_id=message_id,
    )
    row = {
        "message_id": envelope["id"],
        "exchange": COMMANDS_EXCHANGE if payload.is_command else EVENTS_EXCHANGE,
        "routing_key": payload.routing_key,
        "message_type": envelope["type"],
        "correlation_id": envelope["correlationid"],
        "body": json.dumps(envelope, separators=(",", ":")),
        "created_at": datetime.now(UTC),
        "attempts": 0,
    }
    nested = session.sync_session.get_nested_transaction()
    if nested is not None and nested is not session.info.get(BATCH_SAVEPOINT):
        await session.execute(_INSERT, row)
    else:
        session.info.setdefault(_PENDING, []).append(row)
    session.info["outbox_staged"] = True
    return str(envelope["id"])


class OutboxSession(Session):
    """The sessions whose commit writes what was staged in them (``make_sessionmaker``'s are).
    :func:`stage` refuses any other, so no session can commit and leave its staged rows behind;
    the listeners hang on this class alone, not on SQLAlchemy's ``Session``."""


@event.listens_for(OutboxSession, "before_commit")
def _write_staged(session: Session) -> None:
    """A commit writes what was staged in its transaction. SQLAlchemy also calls this as a
    savepoint is released: that commits nothing, so the rows wait for the commit (a release that
    fails would otherwise leave rows of a rolled-back savepoint to be handed on)."""
    if session.in_nested_transaction():
        return
    rows = session.info.pop(_PENDING, None)
    if rows:
        if session.info.get(HANDED_OVER):  # the process's relay gets them: leased to it
            until = datetime.now(UTC) + LEASE
            rows = [{**row, "next_attempt_at": until} for row in rows]
        session.execute(_INSERT, rows)
        session.info[OUTBOX_COMMITTED] = rows  # handed to the relay after the commit


@event.listens_for(OutboxSession, "after_transaction_end")
def _drop_staged(session: Session, transaction: Any) -> None:
    """A transaction that ended without committing leaves nothing for the next one (a savepoint's
    end is not the transaction's: what it staged was written at once)."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
        session.info.pop(OUTBOX_COMMITTED, None)


_MARK_PUBLISHED = (
    update(outbox_message)
    .where(outbox_message.c.message_id.in_(bindparam("ids", expanding=True)))
    .values(published_at=bindparam("at"))
)


_RELEASE = (
    update(outbox_message)
    .where(
        outbox_message.c.message_id == bindparam("id"),
        outbox_message.c.next_attempt_at == bindparam("until"),
        outbox_message.c.published_at.is_(None),
    )
    .values(next_attempt_at=None)
)


def _retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(0.5 * 2 ** max(attempts - 1, 0), 30.0))


class OutboxRelay:
    """Publishes staged messages. One per service process; safe beside others on PostgreSQL.

    Rows come two ways. The commits of this process hand theirs over, and they are published at
    once, never read back. The table is read at start and every ``poll_seconds`` for the rest:
    rows a crash left, rows whose publish failed and waits for its retry, rows another process
    wrote. A confirmed row is marked published by the next marking transaction, which takes every
    row confirmed in the last ``mark_seconds`` (or ``batch`` rows, whichever comes first); until
    then the relay remembers it, so no read sends it again. A crash in between sends it again
    after the restart, and consumers de-duplicate on the message id.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        amqp_url: str,
        *,
        service: str,
        batch: int = 200,
        poll_seconds: float = 1.0,
        mark_seconds: float = 0.05,
        retention: timedelta = timedelta(hours=1),
        inbox_retention: timedelta = timedelta(days=7),
    ) -> None:
        self._sessions = sessions
        self._url = amqp_url
        self._service = service
        self._batch = batch
        self._poll = poll_seconds
        self._mark_delay = mark_seconds
        self._retention = retention
        self._inbox_retention = inbox_retention
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self.published = 0
        self.last_error: str | None = None
        # Rows handed over by commits, not yet published. Bounded: past the bound, rows wait for
        # the next read like any other (they are in the table all the same).
        self._handed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._limit = 10 * batch
        self._overflow: list[dict[str, Any]] = []  # handed over past the bound: to give back
        # Confirmed, not yet marked in the table; and every id published lately (a superset), so
        # that neither a read nor a late hand-over (several connections, on PostgreSQL) sends a
        # row again.
        self._unmarked: list[str] = []
        self._unmarked_since = 0.0
        self._recent: OrderedDict[str, None] = OrderedDict()
        # Built once: the relay runs it at every read. It claims the due rows it returns.
        due = (
            select(outbox_message.c.message_id)
            .where(outbox_message.c.published_at.is_(None))
            .where(
                outbox_message.c.next_attempt_at.is_(None)
                | (outbox_message.c.next_attempt_at <= bindparam("now"))
            )
            .order_by(outbox_message.c.seq)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        self._claim_query = (
            update(outbox_message)
            .where(outbox_message.c.message_id.in_(due.scalar_subquery()))
            .values(next_attempt_at=bindparam("until"))
            .returning(*outbox_message.c)
        )

    def wake(self, rows: list[dict[str, Any]] | None = None) -> None:
        """A commit staged messages: ``rows`` are the outbox rows it wrote, when it knows them."""
        for row in rows or ():
            if len(self._handed) >= self._limit:  # past the bound: its lease is given back
                self._overflow.append(row)
            else:
                self._handed[row["message_id"]] = row
        self._wake.set()

    @property
    def connected(self) -> bool:
        """Connected to the broker now. A robust connection that lost the broker is not closed (it
        keeps trying to reconnect): it has no transport until it is back."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.transport is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._service}-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # what was confirmed is not sent again after a restart
            await self._mark()
        with contextlib.suppress(Exception):
            await self._release([*self._handed.values(), *self._overflow])
            self._handed.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _connect(self) -> None:
        if self._connection is None:
            self._connection = await aio_pika.connect_robust(
                self._url, client_properties={"connection_name": f"{self._service}-outbox"}
            )
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchanges = {}

    async def _disconnect(self) -> None:
        connection, self._connection, self._channel, self._exchanges = self._connection, None, None, {}
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        if name not in self._exchanges:
            channel = self._channel
            if channel is None:
                raise RuntimeError("the relay has no channel: connect first")
            # "" is the default exchange: straight to the queue named by the routing key (replays).
            self._exchanges[name] = (
                channel.default_exchange if name == "" else await channel.get_exchange(name, ensure=False)
            )
        return self._exchanges[name]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_purge = datetime.now(UTC)
        next_read = loop.time()  # at once: what an earlier run left
        while True:
            try:
                await self._connect()
                if loop.time() >= next_read:
                    while await self._read_and_publish():
                        pass
                    next_read = loop.time() + self._poll
                if self._overflow:
                    overflow, self._overflow = self._overflow, []
                    await self._release(overflow)
                while self._handed:
                    await self._publish(self._take_handed())
                    if len(self._unmarked) >= self._batch:
                        await self._mark()
                if self._unmarked and loop.time() - self._unmarked_since >= self._mark_delay:
                    await self._mark()
                if datetime.now(UTC) - last_purge > timedelta(minutes=5):
                    await self.purge()
                    last_purge = datetime.now(UTC)
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database down: keep the rows, try again
                self.last_error = repr(exc)
                log.warning("outbox.relay_error", error=repr(exc))
                if not self.connected:  # connect afresh: a robust connection may never recover
                    await self._disconnect()
                await asyncio.sleep(1.0)
                next_read = loop.time()
            timeout = next_read - loop.time()
            if self._unmarked:
                timeout = min(timeout, self._unmarked_since + self._mark_delay - loop.time())
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()

    async def _read_and_publish(self) -> int:
        """Mark what is confirmed, read one batch of due rows in the same transaction, publish it;
        returns how many rows were read."""
        async with self._transaction() as session:
            rows = await self._due(session, datetime.now(UTC))
        if rows:
            await self._publish(rows)
        return len(rows)

    async def _publish(self, rows: list[Any]) -> None:
        """Publish ``rows`` concurrently, each confirmed by the broker; a refused one is retried
        with back-off, and a lost connection raises once the others are accounted for."""
        results = await asyncio.gather(*(self._send(row) for row in rows), return_exceptions=True)
        ok = [row["message_id"] for row, r in zip(rows, results, strict=True) if r is None]
        failed = [(row, r) for row, r in zip(rows, results, strict=True) if r is not None]
        if ok:
            if not self._unmarked:
                self._unmarked_since = asyncio.get_running_loop().time()
            self._unmarked.extend(ok)
            for message_id in ok:
                self._recent[message_id] = None
            while len(self._recent) > self._limit:
                self._recent.popitem(last=False)
            self.published += len(ok)
        if not failed:
            return
        now = datetime.now(UTC)
        async with self._transaction() as session:
            for row, error in failed:
                attempts = row["attempts"] + 1
                log.warning(
                    "outbox.publish_failed",
                    message_id=row["message_id"],
                    routing_key=row["routing_key"],
                    attempts=attempts,
                    error=repr(error),
                )
                await session.execute(
                    update(outbox_message)
                    .where(outbox_message.c.message_id == row["message_id"])
                    .values(
                        attempts=attempts,
                        next_attempt_at=now + _retry_delay(attempts),
                        last_error=repr(error)[:1000],
                    )
                )
        if isinstance(failed[0][1], (ConnectionError, aio_pika.exceptions.AMQPConnectionError)):
            raise failed[0][1]

    async def publish(self, rows: list[dict[str, Any]]) -> None:
        """Publish rows a commit wrote, in the caller's task (a batch's, chassis.batch), as the relay
        would have; rows it cannot send now are left to the relay."""
        if not rows:
            return
        if not self.connected or self._channel is None:
            self.wake(rows)
            return
        try:
            await self._publish([row for row in rows if row["message_id"] not in self._recent])
        except Exception as exc:  # the failed rows are recorded for their retry; the relay goes on
            log.warning("outbox.publish_error", error=repr(exc))
            self._wake.set()

    async def mark_in(self, session: AsyncSession) -> list[str]:
        """Mark the rows confirmed so far inside the caller's transaction (a batch's: the marks ride
        along instead of taking a transaction of their own); call :meth:`marked` once it commits."""
        ids = list(self._unmarked)
        if ids:
            await session.execute(_MARK_PUBLISHED, {"ids": ids, "at": datetime.now(UTC)})
        return ids

    def marked(self, ids: list[str]) -> None:
        """The rows ``ids`` are marked in the table (their transaction committed)."""
        if ids:
            done = set(ids)
            self._unmarked[:] = [i for i in self._unmarked if i not in done]
            self._unmarked_since = asyncio.get_running_loop().time()

    async def _mark(self) -> None:
        if self._unmarked:
            async with self._transaction():
                pass

    async def _release(self, rows: list[dict[str, Any]]) -> None:
        """Give back the leases of handed-over rows this relay will not publish from the hand-over
        (past its bound, or as it stops), while they hold: the next read, this process's or
        another's, takes the rows at once (else they wait for their lease to run out)."""
        leases = [
            {"id": row["message_id"], "until": row["next_attempt_at"]}
            for row in rows
            if row.get("next_attempt_at") is not None
        ]
        if leases:
            async with self._sessions.begin() as session:
                await session.execute(_RELEASE, leases)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        """A transaction that first marks the rows confirmed so far (the relay's reads, retries and
        marking all go through it); once it commits, they are off the list (rows confirmed
        meanwhile stay on it)."""
        async with self._sessions.begin() as session:
            ids = await self.mark_in(session)
            yield session
        self.marked(ids)

    async def _due(self, session: AsyncSession, now: datetime) -> list[Any]:
        """Claim the due rows, oldest first, for ``LEASE``."""
        rows = []
        claimed = (
            (await session.execute(self._claim_query, {"now": now, "until": now + LEASE})).mappings().all()
        )
        for row in sorted(claimed, key=lambda r: r["seq"]):
            self._handed.pop(row["message_id"], None)  # read back: published from this batch
            if row["message_id"] not in self._recent:
                rows.append(row)
        return rows

    def _take_handed(self) -> list[dict[str, Any]]:
        """The next handed-over rows whose lease holds (past it, a read, maybe another relay's,
        takes the row from the table)."""
        rows: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        while self._handed and len(rows) < self._batch:
            message_id, row = self._handed.popitem(last=False)
            if message_id not in self._recent and (row.get("next_attempt_at") or now) >= now:
                rows.append(row)
        return rows

    async def _send(self, row: Any) -> None:
        exchange = await self._exchange(row["exchange"])
        body = row["body"].encode()
        traceparent = json.loads(body).get("traceparent")
        message = aio_pika.Message(
            body,
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=row["message_id"],
            correlation_id=row["correlation_id"],
            type=row["message_type"],
            app_id=f"oms-{self._service}",
            timestamp=row["created_at"],
            headers={"traceparent": traceparent} if traceparent else {},
        )
        # An event nobody subscribes to is dropped by the broker (events.topology); anything else
        # (a command, a replay to a queue) must reach a queue, or it comes back and is retried.
        mandatory = row["exchange"] != EVENTS_EXCHANGE
        await exchange.publish(message, routing_key=row["routing_key"], mandatory=mandatory, timeout=10)

    async def purge(self) -> None:
        """Housekeeping, every five minutes: published rows past their retention (an hour), and the
        inbox's records past theirs (``inbox.purge``)."""
        cutoff = datetime.now(UTC) - self._retention
        async with self._sessions.begin() as session:
            await session.execute(
                outbox_message.delete().where(
                    outbox_message.c.published_at.is_not(None), outbox_message.c.published_at < cutoff
                )
            )
        await inbox.purge(self._sessions, older_than=self._inbox_retention)

    async def backlog(self) -> int:
        async with self._sessions() as session:
            return (
                await session.scalar(
                    select(func.count())
                    .select_from(outbox_message)
                    .where(outbox_message.c.published_at.is_(None))
                )
                or 0
            )


Stage = Callable[[AsyncSession, Message, str | None, Cause], Awaitable[str]]


def stager(service: str, *, correlate_by_subject: bool = False) -> Stage:
    """:func:`stage` as one service's operations call it: ``await _stage(session, payload, subject,
    cause)``. With ``correlate_by_subject`` the subject (the order id) is the ``correlationid``
    whatever the cause carried: the service that owns the order names it."""

    async def _stage(session: AsyncSession, payload: Message, subject: str | None, cause: Cause) -> str:
        return await stage(
            session,
            payload,
            service=service,
            subject=subject,
            causation=cause,
            correlationid=subject if correlate_by_subject else None,
        )

    return _stage
