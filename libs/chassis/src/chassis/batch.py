"""Messages handled in batches: one database transaction for what has arrived, a savepoint each.

Every message a service consumes used to cost a transaction of its own, its commit, and a relay
transaction to mark its outbox rows published. A :class:`Batcher` takes the messages that have
arrived (up to ``size``, waiting at most ``linger_seconds`` for more), and runs their handlers one
after the other in ONE transaction:

- each handler runs in its message's own task (its log context, its FastStream context), and its
  ``sessions.begin()`` is a savepoint of the batch's transaction (:class:`chassis.db.ServiceSessions`),
  so the handlers' code is the same in a batch and alone. The inbox claim and the effects of a
  message commit together, as before;
- a handler that fails has its savepoint rolled back, and its message is handled as it always was
  (dead-lettered, retried, or waited out: chassis.broker) while the others go on;
- the transaction also marks the outbox rows confirmed since the last one (the relay's marks ride
  along), then commits; only then does each handler return, so its message is acked after the
  commit. If the commit fails, every message of the batch fails with the commit's error, and none
  is acked;
- the batch's task then publishes the outbox rows the commit wrote, with publisher confirms
  (:meth:`chassis.outbox.OutboxRelay.publish`); the relay's table poll stays for what a crash left.

A handler that must call out only once its record is committed (an e-mail handed to the SMTP
server) passes that step to :func:`after_commit`: it runs in the message's task after the batch's
commit and before the ack, and fails the message as the handler would. A consumer whose call out
must be committed before it is made, and whose answer decides what it writes (payments'
write-ahead capture), is not batched (``batched=False`` in events.topology) and runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chassis.db import BATCH, in_batch
from chassis.logs import get_logger

log = get_logger("chassis.batch")

T = TypeVar("T")
M = TypeVar("M")

Step = Callable[[], Awaitable[None]]
_after_commit: ContextVar[list[Step] | None] = ContextVar("oms_after_commit", default=None)


async def after_commit(step: Step) -> None:
    """Run ``step`` once what the running handler wrote is committed, before its message is acked:
    after its batch's commit when it runs in a batch, else at once (its transactions are committed
    when it calls this). A step that raises fails the message as the handler would; what the
    handler wrote stays committed, so a redelivery must find it and finish the step."""
    steps = _after_commit.get()
    if steps is None:
        await step()
    else:
        steps.append(step)


class _Member:
    """One message's place in a batch: its turn (the batch's session), its end, the commit."""

    __slots__ = ("committed", "done", "turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.turn: asyncio.Future[AsyncSession] = loop.create_future()
        self.done: asyncio.Future[bool] = loop.create_future()
        self.committed: asyncio.Future[None] = loop.create_future()

    def finish(self, ok: bool) -> None:
        if not self.done.done():
            self.done.set_result(ok)


class Rounds(Generic[M]):
    """Items handled together in rounds: up to ``size`` at a time, a round not yet full waiting at
    most ``linger_seconds`` for what is arriving to join. Its task runs rounds while items wait and
    ends when none does; the next :meth:`add` starts it again. ``handle`` deals with its own errors:
    one that escapes ends the rounds until the next item arrives."""

    def __init__(
        self, handle: Callable[[list[M]], Awaitable[None]], *, size: int, linger_seconds: float, name: str
    ) -> None:
        self._handle, self._size, self._linger, self._name = handle, size, linger_seconds, name
        self._waiting: deque[M] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, item: M) -> None:
        self._waiting.append(item)
        if len(self._waiting) >= self._size:
            self._arrived.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drive(), name=self._name)

    def discard(self, item: M) -> None:
        """Take back an item that has not joined a round yet."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(item)

    async def _drive(self) -> None:
        while self._waiting:
            if len(self._waiting) < self._size:  # let what is arriving join, a few ms at most
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), self._linger)
            items = [self._waiting.popleft() for _ in range(min(self._size, len(self._waiting)))]
            if items:
                await self._handle(items)


class Batcher:
    """Runs handlers in batches, one transaction a batch (see the module's docstring).

    ``publish`` receives the outbox rows a batch's commit wrote, ``mark_in``/``marked`` let the
    relay's marks ride in the batch's transaction (both from :class:`chassis.outbox.OutboxRelay`);
    ``handled`` counts the messages acked, and the batch sizes go to ``oms_batch_messages``, both
    once a batch.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        size: int = 32,
        linger_seconds: float = 0.002,
        publish: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
        mark_in: Callable[[AsyncSession], Awaitable[list[str]]] | None = None,
        marked: Callable[[list[str]], None] | None = None,
        handled: Counter | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._sessions = sessions
        self._rounds = Rounds(self._batch, size=size, linger_seconds=linger_seconds, name="batcher")
        self._publish = publish
        self._mark_in = mark_in
        self._marked = marked
        self.batches = 0
        self.messages = 0
        # Measured per batch, not per message (the handled counter is chassis.broker's).
        self._sizes = Histogram(
            "oms_batch_messages",
            "Messages handled in one batch transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self._handled = handled

    async def run(self, handler: Callable[[], Awaitable[T]]) -> T:
        """Run ``handler`` (one message's) in the next batch; returns once the batch committed."""
        loop = asyncio.get_running_loop()
        member = _Member(loop)
        self._rounds.add(member)
        try:
            session = await member.turn
        except BaseException:
            self._rounds.discard(member)
            member.finish(False)
            raise
        steps: list[Step] = []
        token = _after_commit.set(steps)
        try:
            with in_batch(session):
                result = await handler()
        except BaseException:
            member.finish(False)
            raise
        finally:
            _after_commit.reset(token)
        member.finish(True)
        await member.committed
        for step in steps:
            await step()
        return result

    async def _batch(self, members: list[_Member]) -> None:
        try:
            await self._run(members)
        except Exception as exc:  # the members were told; the next batch starts afresh
            log.warning("batch.failed", messages=len(members), error=repr(exc)[:300])

    async def _run(self, members: list[_Member]) -> None:
        ran: list[_Member] = []
        rows: list[dict[str, Any]] = []
        marks: list[str] = []
        try:
            async with self._sessions() as session:
                session.info[BATCH] = rows
                async with session.begin():
                    if self._mark_in is not None:
                        marks = await self._mark_in(session)
                    for member in members:
                        if member.turn.done():  # cancelled while it waited
                            continue
                        member.turn.set_result(session)
                        if await member.done:
                            ran.append(member)
        except BaseException as exc:
            for member in members:
                if not member.turn.done():  # never ran: fails like the others, never acked
                    member.turn.set_exception(exc)
            for member in ran:
                if not member.committed.done():  # else its task was cancelled meanwhile
                    member.committed.set_exception(exc)
            raise
        for member in ran:
            if not member.committed.done():
                member.committed.set_result(None)
        self.batches += 1
        self.messages += len(ran)
        self._sizes.observe(len(ran))
        if self._handled is not None:
            self._handled.inc(len(ran))
        if self._marked is not None:
            self._marked(marks)
        if rows and self._publish is not None:
            await self._publish(rows)
