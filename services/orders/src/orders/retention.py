"""Personal data is kept as long as it serves: ``ORDERS_RETENTION_DAYS`` (180) after an order
closed (delivered, cancelled or returned, and not touched since), its customer's name, e-mail
address and phone number, its shipping address (but the country, which the reports read), its
payment token and the notes people wrote in its history are blanked, and it is marked
``forgotten_at``. Dead letters parked that long ago are deleted too: a message that waited half
a year for a person is not going to be replayed, and it may carry an address.

The same pattern as notifications' retention: at start and then every hour, a batch a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from events.deadletters import dead_letter
from events.logs import get_logger
from events.tasks import background
from orders.db import Order, OrderHistory

log = get_logger(__name__)

CLOSED = ("delivered", "cancelled", "returned")
_o, _h = Order.__table__, OrderHistory.__table__
_DUE = (
    select(_o.c.id, _o.c.customer, _o.c.shipping_address)
    .where(_o.c.status.in_(CLOSED), _o.c.updated_at < bindparam("before"), _o.c.forgotten_at.is_(None))
    .limit(bindparam("batch"))
)
_FORGET = update(_o).where(_o.c.id == bindparam("key_id"))
_NOTES = update(_h).where(_h.c.order_id.in_(bindparam("ids", expanding=True))).values(note=None)
_OLD_DEAD_LETTERS = delete(dead_letter).where(dead_letter.c.id.in_(
    select(dead_letter.c.id).where(dead_letter.c.dead_at < bindparam("before")).limit(bindparam("batch"))
    .scalar_subquery()
))


def forgotten(customer: dict[str, Any], address: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The customer and address with nothing left that names or reaches a person."""
    return (
        {**customer, "name": "", "email": "", "phone": None},
        {**dict.fromkeys(address, None), "name": "", "line1": "", "city": "", "postal_code": "",
         "country": address.get("country")},
    )


async def purge(sessions: async_sessionmaker, *, older_than: timedelta, batch: int = 500) -> tuple[int, int]:
    """Blank the closed orders and delete the dead letters older than ``older_than``; returns how
    many of each."""
    now = datetime.now(UTC)
    params = {"before": now - older_than, "batch": batch}
    orders = 0
    while True:
        async with sessions.begin() as session:
            due = (await session.execute(_DUE, params)).all()
            for order_id, customer, address in due:
                customer, address = forgotten(customer, address)
                await session.execute(_FORGET, {"key_id": order_id, "customer": customer, "shipping_address": address,
                                                "payment_token": None, "forgotten_at": now})
            if due:
                await session.execute(_NOTES, {"ids": [row.id for row in due]})
        orders += len(due)
        if len(due) < batch:
            break
    letters = 0
    while True:
        async with sessions.begin() as session:
            done = (await session.execute(_OLD_DEAD_LETTERS, params)).rowcount
        letters += done
        if done < batch:
            break
    if orders or letters:
        log.info("retention.purged", orders=orders, dead_letters=letters)
    return orders, letters


async def run(sessions: async_sessionmaker, older_than: timedelta, every_seconds: float = 3600.0) -> None:
    while True:
        try:
            await purge(sessions, older_than=older_than)
        except Exception as exc:  # the next round tries again
            log.warning("retention.purge_failed", error=repr(exc))
        await asyncio.sleep(every_seconds)


def housekeeping(sessions: async_sessionmaker, older_than: timedelta) -> contextlib.AbstractAsyncContextManager:
    return background(run(sessions, older_than), name="orders-retention")
