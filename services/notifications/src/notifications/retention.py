"""Personal data is kept as long as it serves: after ``NOTIFICATIONS_RETENTION_DAYS`` (180) the
notifications written for an order (address, subject and body) are deleted, and its recipient's
contact details are blanked.

The recipient's row stays, marked ``forgotten_at``, so that an event for that order arriving even
later is acknowledged and tells nobody, where a missing recipient would be retried until it is
dead-lettered (a recipient not registered yet looks the same). The purge runs at start and then
every hour, a batch a transaction. Every replica of the service runs it, which is safe: each
batch deletes or blanks only what is still there, so a second replica's batch finds nothing.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.db import table
from chassis.logs import get_logger
from chassis.tasks import every
from notifications.db import Notification, Recipient

log = get_logger(__name__)

_n, _r = table(Notification), table(Recipient)
_OLD_NOTIFICATIONS = delete(_n).where(
    _n.c.id.in_(
        select(_n.c.id)
        .where(_n.c.created_at < bindparam("before"))
        .limit(bindparam("batch"))
        .scalar_subquery()
    )
)
_FORGET_RECIPIENTS = (
    update(_r)
    .where(
        _r.c.order_id.in_(
            select(_r.c.order_id)
            .where(_r.c.updated_at < bindparam("before"), _r.c.forgotten_at.is_(None))
            .limit(bindparam("batch"))
            .scalar_subquery()
        )
    )
    .values(name="", email="", phone=None, forgotten_at=bindparam("now"))
)


async def purge(sessions: async_sessionmaker, *, older_than: timedelta, batch: int = 1000) -> tuple[int, int]:
    """Delete the notifications and blank the recipients older than ``older_than``; returns how many
    of each."""
    now = datetime.now(UTC)
    params = {"before": now - older_than, "batch": batch, "now": now}
    counts = []
    for statement in (_OLD_NOTIFICATIONS, _FORGET_RECIPIENTS):
        total = 0
        while True:
            async with sessions.begin() as session:
                done = (await session.execute(statement, params)).rowcount
            total += done
            if done < batch:
                break
        counts.append(total)
    if any(counts):
        log.info("retention.purged", notifications=counts[0], recipients=counts[1])
    return counts[0], counts[1]


def housekeeping(
    sessions: async_sessionmaker, older_than: timedelta
) -> contextlib.AbstractAsyncContextManager:
    """The purge, at start and then every hour, while the block lasts."""
    return every(3600.0, lambda: purge(sessions, older_than=older_than), name="notifications-retention")
