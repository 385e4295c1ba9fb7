"""Personal data is kept as long as it serves: ``ORDERS_RETENTION_DAYS`` (180) after an order
closed (delivered, cancelled or returned, and not touched since), its customer's name, e-mail
address and phone number, its shipping address (but the country, which the reports read), its
payment token and the notes people wrote in its history are blanked, and it is marked
``forgotten_at``. (Dead letters have a retention of their own: ``chassis.deadletters``.)

The same pattern as notifications' retention: at start and then every hour, a batch a transaction.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.db import table
from chassis.logs import get_logger
from chassis.tasks import every
from orders.db import Order, OrderHistory

log = get_logger(__name__)

CLOSED = ("delivered", "cancelled", "returned")
_o, _h = table(Order), table(OrderHistory)
_DUE = (
    select(_o.c.id, _o.c.customer, _o.c.shipping_address)
    .where(_o.c.status.in_(CLOSED), _o.c.updated_at < bindparam("before"), _o.c.forgotten_at.is_(None))
    .limit(bindparam("batch"))
)
_FORGET = update(_o).where(_o.c.id == bindparam("key_id"))
_NOTES = update(_h).where(_h.c.order_id.in_(bindparam("ids", expanding=True))).values(note=None)


def forgotten(customer: dict[str, Any], address: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The customer and address with nothing left that names or reaches a person."""
    return (
        {**customer, "name": "", "email": "", "phone": None},
        {
            **dict.fromkeys(address, None),
            "name": "",
            "line1": "",
            "city": "",
            "postal_code": "",
            "country": address.get("country"),
        },
    )


async def purge(sessions: async_sessionmaker, *, older_than: timedelta, batch: int = 500) -> int:
    """Blank the closed orders older than ``older_than``; returns how many."""
    now = datetime.now(UTC)
    params = {"before": now - older_than, "batch": batch}
    orders = 0
    while True:
        async with sessions.begin() as session:
            due = (await session.execute(_DUE, params)).all()
            for order_id, customer, address in due:
                customer, address = forgotten(customer, address)
                await session.execute(
                    _FORGET,
                    {
                        "key_id": order_id,
                        "customer": customer,
                        "shipping_address": address,
                        "payment_token": None,
                        "forgotten_at": now,
                    },
                )
            if due:
                await session.execute(_NOTES, {"ids": [row.id for row in due]})
        orders += len(due)
        if len(due) < batch:
            break
    if orders:
        log.info("retention.purged", orders=orders)
    return orders


def housekeeping(
    sessions: async_sessionmaker, older_than: timedelta
) -> contextlib.AbstractAsyncContextManager:
    """The purge, at start and then every hour, while the block lasts."""
    return every(3600.0, lambda: purge(sessions, older_than=older_than), name="orders-retention")
