"""Personal data is kept as long as it serves: ``SHIPPING_RETENTION_DAYS`` (180) after a parcel
closed (delivered, returned, failed or cancelled, and not touched since), the name and street on
its label are blanked (the country stays, for the carriers' figures) and it is marked
``forgotten_at``. The same pattern as notifications' retention: at start and then every hour, a
batch a transaction."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.db import table
from chassis.logs import get_logger
from chassis.tasks import every
from shipping.db import Shipment

log = get_logger(__name__)

CLOSED = ("delivered", "returned", "failed")
_s = table(Shipment)
_DUE = (
    select(_s.c.shipment_id, _s.c.address)
    .where(
        or_(_s.c.status.in_(CLOSED), _s.c.cancelled),
        _s.c.updated_at < bindparam("before"),
        _s.c.forgotten_at.is_(None),
    )
    .limit(bindparam("batch"))
)
_FORGET = update(_s).where(_s.c.shipment_id == bindparam("key_id"))


async def purge(sessions: async_sessionmaker, *, older_than: timedelta, batch: int = 500) -> int:
    """Blank the labels of the parcels closed longer ago than ``older_than``; returns how many."""
    now = datetime.now(UTC)
    total = 0
    while True:
        async with sessions.begin() as session:
            due = (await session.execute(_DUE, {"before": now - older_than, "batch": batch})).all()
            for shipment_id, address in due:
                await session.execute(
                    _FORGET,
                    {
                        "key_id": shipment_id,
                        "forgotten_at": now,
                        "address": {"country": (address or {}).get("country")},
                    },
                )
        total += len(due)
        if len(due) < batch:
            break
    if total:
        log.info("retention.purged", shipments=total)
    return total


def housekeeping(
    sessions: async_sessionmaker, older_than: timedelta
) -> contextlib.AbstractAsyncContextManager:
    """The purge, at start and then every hour, while the block lasts."""
    return every(3600.0, lambda: purge(sessions, older_than=older_than), name="shipping-retention")
