"""Inbox de-duplication: a consumer records the CloudEvents ``id`` it handled in the same
transaction as its effect, so a redelivered or re-published message changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from events.db import InsertIfAbsent, processed_message

_claim = InsertIfAbsent(processed_message)


async def claim(session: AsyncSession, message_id: str, consumer: str) -> bool:
    """True the first time ``consumer`` sees ``message_id`` (and records it); False for a duplicate.

    Call inside the transaction that applies the message's effect. One ``INSERT … ON CONFLICT DO
    NOTHING``: on PostgreSQL a concurrent duplicate waits for the first transaction's outcome, and
    then inserts (the first rolled back) or finds the row (it committed).
    """
    return await _claim(session, {"message_id": message_id, "consumer": consumer, "processed_at": datetime.now(UTC)})
