"""Inbox de-duplication: a consumer records the CloudEvents ``id`` it handled in the same
transaction as its effect, so a redelivered or re-published message changes nothing.

The records are kept for ``INBOX_RETENTION_DAYS`` (7 by default) and then purged by the outbox
relay's housekeeping, so the table does not grow with every message ever handled. The retention
must outlast any way a message can come again: a redelivery, a relay re-publishing after a crash,
a gateway resending a command, a dead letter replayed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import String, bindparam, select, tuple_
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chassis.db import InsertIfAbsent, processed_message

MAX_MESSAGE_ID: int = cast(int, cast(String, processed_message.c.message_id.type).length)
"""The longest message id the inbox can store (a longer one must be refused, not retried)."""

_claim = InsertIfAbsent(processed_message)


async def claim(session: AsyncSession, message_id: str, consumer: str) -> bool:
    """True the first time ``consumer`` sees ``message_id`` (and records it); False for a duplicate.

    Call inside the transaction that applies the message's effect. One ``INSERT … ON CONFLICT DO
    NOTHING``: on PostgreSQL a concurrent duplicate waits for the first transaction's outcome, and
    then inserts (the first rolled back) or finds the row (it committed).
    """
    return await _claim(
        session, {"message_id": message_id, "consumer": consumer, "processed_at": datetime.now(UTC)}
    )


# Oldest first, a batch a transaction: a first purge of a large table never holds the (SQLite:
# only) write lock for long.
_OLDEST = (
    select(processed_message.c.message_id, processed_message.c.consumer)
    .where(processed_message.c.processed_at < bindparam("before"))
    .order_by(processed_message.c.processed_at)
    .limit(bindparam("batch"))
)
_FORGET = processed_message.delete().where(
    tuple_(processed_message.c.message_id, processed_message.c.consumer).in_(_OLDEST)
)


async def purge(
    sessions: async_sessionmaker[AsyncSession], *, older_than: timedelta, batch: int = 5000
) -> int:
    """Forget the ids handled longer ago than ``older_than``; returns how many were forgotten."""
    before, forgotten = datetime.now(UTC) - older_than, 0
    while True:
        async with sessions.begin() as session:
            result = await session.execute(_FORGET, {"before": before, "batch": batch})
            deleted = int(cast(CursorResult[Any], result).rowcount)
        forgotten += deleted
        if deleted < batch:
            return forgotten
