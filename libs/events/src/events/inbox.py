"""Inbox de-duplication: a consumer records the CloudEvents ``id`` it handled in the same
transaction as its effect, so a redelivered or re-published message changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from events.db import processed_message

# One statement, built once per dialect: a statement built per call (``insert(...).values(...)``)
# costs SQLAlchemy more than SQLite takes to run it.
_CLAIM: dict[str, Any] = {
    "sqlite": sqlite.insert(processed_message).on_conflict_do_nothing(),
    "postgresql": postgresql.insert(processed_message).on_conflict_do_nothing(),
}


async def claim(session: AsyncSession, message_id: str, consumer: str) -> bool:
    """True the first time ``consumer`` sees ``message_id`` (and records it); False for a duplicate.

    Call inside the transaction that applies the message's effect. One ``INSERT … ON CONFLICT DO
    NOTHING``: on PostgreSQL a concurrent duplicate waits for the first transaction's outcome, and
    then inserts (the first rolled back) or finds the row (it committed).
    """
    statement = _CLAIM[session.get_bind().dialect.name]
    result = await session.execute(
        statement, {"message_id": message_id, "consumer": consumer, "processed_at": datetime.now(UTC)}
    )
    return result.rowcount == 1
