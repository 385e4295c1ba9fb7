"""Admission control at the door: new orders are refused (``503`` with ``Retry-After``) while the
orders already accepted would take too long to be paid.

Without it, a burst past what the system can take is accepted whole (a ``POST`` costs little) and
the work queues behind it: accepted orders wait a minute to be paid, and those whose payment waits
past the saga's deadline are cancelled ``payment_timeout`` after the customer was told they were
placed. Refusing at the door instead keeps what was accepted moving at the pace the system can
sustain, and the gateway tries again later with the same ``Idempotency-Key`` (a refused request
stores nothing).

The signal is Little's law: orders in flight (``submitted`` or ``confirmed``: placed, not paid or
cancelled yet) ÷ the pace at which orders left that state over the last ``window_seconds`` is how
long a new order would wait. The door closes while that is over ``max_wait_seconds``, and never
while fewer than ``min_in_flight`` orders are in flight (a burst on an idle system, whose recent
pace says little of what it can take). It reacts within a second, because it counts the orders
let in, not how long they have waited (which shows a burst only ``max_wait_seconds`` late).

While the broker is out of reach (``outage``), the door stays open: the outbox holds what is
accepted until the broker is back. Otherwise, when nothing moves at all (the
start of a burst, or a service down), up to ``min_in_flight`` orders are let in.

It is read from the database, at most once per ``refresh_seconds``, so every replica of the
service counts the whole system: the orders in flight, and the requests any replica let in whose
order is not stored yet (their Idempotency-Key is claimed ``in_progress``, in the transaction that
passed the door). Between readings a replica adds the orders it let in since. Orders placed as
commands on RabbitMQ are not refused: their queue is already the buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.logs import get_logger
from events.types import OrderStatus
from orders.db import IdempotencyKey, Order, OrderHistory

log = get_logger(__name__)

NOT_PAID_YET = (OrderStatus.SUBMITTED, OrderStatus.CONFIRMED)
LEFT = (OrderStatus.PAID, OrderStatus.CANCELLED)

_IN_FLIGHT = select(func.count()).select_from(Order).where(Order.status.in_(NOT_PAID_YET))
_KEYS_IN_PROGRESS = (
    select(func.count())
    .select_from(IdempotencyKey)
    .where(IdempotencyKey.state == "in_progress", IdempotencyKey.created_at >= bindparam("since"))
)
_LEFT_SINCE = (
    select(func.count())
    .select_from(OrderHistory)
    .where(OrderHistory.status.in_(LEFT), OrderHistory.at >= bindparam("since"))
)


class Overloaded(Exception):
    """The door is closed for now: try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many orders waiting to be paid: retry after {retry_after} s")
        self.retry_after = retry_after


class Admission:
    def __init__(
        self,
        *,
        max_wait_seconds: float,
        min_in_flight: int,
        window_seconds: float = 5.0,
        refresh_seconds: float = 0.5,
        registry: CollectorRegistry | None = None,
        outage: Callable[[], bool] = lambda: False,
        abandoned_seconds: float = 30.0,
    ) -> None:
        self._max_wait = max_wait_seconds
        self._outage = outage
        self._min_in_flight = min_in_flight
        self._window = timedelta(seconds=window_seconds)
        self._refresh = timedelta(seconds=refresh_seconds)
        self._abandoned = timedelta(seconds=abandoned_seconds)  # a key in progress longer: its request died
        self._checked_at: datetime | None = None
        self._limit: int | None = None
        self._counted = 0  # orders in flight at the last reading, with those let in and not stored then
        self._let_in = 0  # let in since the last reading
        self._pending = 0  # let in by this process, its key not stored yet
        self.open = True
        self.refused = 0
        self.retry_after = max(1, math.ceil(max_wait_seconds / 2))
        self._refused = Counter(
            "oms_orders_refused",
            "New orders refused at the door while the saga lagged behind",
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return self._max_wait > 0

    def limit(self, left_per_s: float) -> int | None:
        """How many orders may be in flight at this pace before a new one would wait too long; None
        (no limit) while the broker is out of reach and nothing moves."""
        if left_per_s == 0 and self._outage():
            return None
        return max(self._min_in_flight, math.floor(left_per_s * self._max_wait))

    async def check(self, session: AsyncSession, now: datetime) -> None:
        """Raise :class:`Overloaded` while the door is closed, else count the order as in flight
        until :meth:`settled`. Reads the backlog inside ``session`` (the caller's: SQLite has one
        connection) when the last reading is older than the refresh.

        Between readings, and for orders let in whose key is not stored yet, the orders this
        process let in are counted on top of the reading; the reading counts stored keys in
        progress too, because under a burst many orders wait for the database with only their key
        stored."""
        if not self.enabled:
            return
        if self._checked_at is None or now - self._checked_at >= self._refresh:
            in_flight = (await session.scalar(_IN_FLIGHT) or 0) + (
                await session.scalar(_KEYS_IN_PROGRESS, {"since": now - self._abandoned}) or 0
            )
            pace = (
                await session.scalar(_LEFT_SINCE, {"since": now - self._window}) or 0
            ) / self._window.total_seconds()
            self._limit, self._checked_at = self.limit(pace), now
            self._counted, self._let_in = in_flight + self._pending, 0
        estimate = self._counted + self._let_in
        was_open = self.open
        self.open = self._limit is None or estimate < self._limit
        if was_open != self.open:
            log.info(
                "admission.closed" if was_open else "admission.open", in_flight=estimate, limit=self._limit
            )
        if not self.open:
            self.refused += 1
            self._refused.inc()
            raise Overloaded(self.retry_after)
        self._let_in += 1
        self._pending += 1

    def settled(self) -> None:
        """The key of an order :meth:`check` let in is stored (or the request failed): the
        readings count it from now on."""
        self._pending -= 1
