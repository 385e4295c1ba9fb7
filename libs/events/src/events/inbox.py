"""Inbox de-duplication: a consumer records the CloudEvents ``id`` it handled in the same
transaction as its effect, so a redelivered or re-published message changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from events.db import processed_message


async def claim(session: AsyncSession, message_id: str, consumer: str) -> bool:
    """True the first time ``consumer`` sees ``message_id`` (and records it); False for a duplicate.

    Call inside the transaction that applies the message's effect. On PostgreSQL two concurrent
    duplicates both pass the look-up; the primary key then fails one commit, and that message is
    redelivered and found here.
    """
    seen = await session.scalar(
        select(processed_message.c.message_id).where(
            processed_message.c.message_id == message_id, processed_message.c.consumer == consumer
        )
    )
    if seen is not None:
        return False
    await session.execute(
        insert(processed_message).values(message_id=message_id, consumer=consumer, processed_at=datetime.now(UTC))
    )
    return True
