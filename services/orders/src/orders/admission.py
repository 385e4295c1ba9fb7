"""Admission control at the door: new orders are refused (``503`` with ``Retry-After``) while the
saga lags too far behind the orders already accepted.

Without it, a burst past what the system can take is accepted whole (a ``POST`` costs little) and
the work queues behind it: the saga's payment deadline then passes for orders that only waited in
a queue, and they are cancelled ``payment_timeout`` after the customer was told they were placed.
Refusing at the door instead keeps what was accepted moving at the pace the system can sustain,
and the gateway tries again later with the same ``Idempotency-Key`` (a refused request stores
nothing).

The signal is how long accepted orders wait to be paid: the door closes while at least
``late_orders`` orders placed more than ``max_wait_seconds`` ago are still ``submitted`` or
``confirmed`` (no stock answer, or no payment answer, yet), and opens again as soon as fewer are.
Both count, because the queue builds wherever the system is slowest: under a CPU-bound burst it
was mostly after the stock step. A handful of orders stuck on their own
(a message in a dead-letter queue) does not close it. It is read from the orders table, once per
``refresh_seconds`` at most, so every replica of the service sees the same backlog. Orders placed
as commands on RabbitMQ are not refused: their queue is already the buffer.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from events.logs import get_logger
from events.types import OrderStatus
from orders.db import Order

log = get_logger(__name__)

NOT_PAID_YET = (OrderStatus.SUBMITTED, OrderStatus.CONFIRMED)

_LATE = select(func.count()).select_from(
    select(Order.id)
    .where(Order.status.in_(NOT_PAID_YET), Order.created_at < bindparam("cutoff"))
    .limit(bindparam("enough"))
    .subquery()
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
        late_orders: int,
        refresh_seconds: float = 0.5,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._max_wait = timedelta(seconds=max_wait_seconds)
        self._late_orders = late_orders
        self._refresh = timedelta(seconds=refresh_seconds)
        self._checked_at: datetime | None = None
        self.open = True
        self.refused = 0
        self.retry_after = max(1, math.ceil(max_wait_seconds / 2))
        self._refused = Counter(
            "oms_orders_refused", "New orders refused at the door while the saga lagged behind", registry=registry
        )

    @property
    def enabled(self) -> bool:
        return self._late_orders > 0 and self._max_wait > timedelta(0)

    async def check(self, session: AsyncSession, now: datetime) -> None:
        """Raise :class:`Overloaded` while the door is closed; reads the backlog inside ``session``
        (the caller's: SQLite has one connection) when the last reading is older than the refresh."""
        if not self.enabled:
            return
        if self._checked_at is None or now - self._checked_at >= self._refresh:
            late = await session.scalar(_LATE, {"cutoff": now - self._max_wait, "enough": self._late_orders})
            was_open, self.open, self._checked_at = self.open, late < self._late_orders, now
            if was_open != self.open:
                log.warning("admission.closed" if was_open else "admission.open", late_orders=late,
                            max_wait_s=self._max_wait.total_seconds())
        if not self.open:
            self.refused += 1
            self._refused.inc()
            raise Overloaded(self.retry_after)
