"""Dead letters, parked where ops can see them: never lost, never looping.

A message that a consumer rejects as malformed, or that reaches its queue's delivery limit, is
dead-lettered by the broker to ``oms.dead-letter``. One service (orders) consumes that queue and
parks each message in its database, with the queue it died in and why; admins list them, replay
one (re-published through the outbox to the queue it died in, with its original CloudEvents id) or
discard it. The ack comes after the row is committed, so a dead letter is never dropped.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from faststream.rabbit import RabbitMessage, RabbitQueue, RabbitRouter
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, func, insert, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from events import topology
from events.broker import Resource
from events.db import UtcDateTime, outbox_message
from events.logs import get_logger
from events.names import DEAD_LETTER_QUEUE
from events.settings import Role
from events.web import Problem, Runtime, require

log = get_logger("events.deadletters")

deadletter_metadata = MetaData()

dead_letter = Table(
    "dead_letter",
    deadletter_metadata,
    Column("id", String(40), primary_key=True),
    Column("message_id", String(128), nullable=True, index=True),
    Column("message_type", String(128), nullable=True),
    Column("queue", String(128), nullable=False, index=True),
    Column("reason", String(40), nullable=False),  # rejected (malformed) | delivery_limit | expired
    Column("deliveries", Integer, nullable=False),
    Column("body", Text, nullable=False),  # base64 when the body was not UTF-8
    Column("body_encoding", String(10), nullable=False),
    Column("content_type", String(100), nullable=True),
    Column("status", String(20), nullable=False, index=True),  # parked | replayed | discarded
    Column("dead_at", UtcDateTime(), nullable=False),
    Column("resolved_at", UtcDateTime(), nullable=True),
)

QUEUE = RabbitQueue(DEAD_LETTER_QUEUE, durable=True, declare=False, arguments=topology.DEAD_LETTER_ARGUMENTS)


def _death(headers: dict[str, Any]) -> tuple[str, str, int]:
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths else {}
    queue = str(headers.get("x-first-death-queue") or first.get("queue") or "unknown")
    reason = str(headers.get("x-first-death-reason") or first.get("reason") or "unknown")
    reason = {"rejected": "rejected", "delivery_limit": "delivery_limit", "expired": "expired"}.get(reason, reason)
    return queue, reason, int(headers.get("x-delivery-count") or first.get("count") or 1)


def _raw(message: Any) -> bytes:
    return message.body


def build_router() -> RabbitRouter:
    router = RabbitRouter()

    # Raw bytes, never decoded: a dead letter is often not JSON, and this queue is the end of the
    # line (a message rejected here would be gone). A database error is retried, like any other.
    @router.subscriber(QUEUE, title="oms.dead-letter:park", decoder=_raw)
    async def on_dead_letter(message: RabbitMessage, sessions: Annotated[async_sessionmaker, Resource("sessions")]) -> None:
        raw = message.raw_message
        headers = dict(raw.headers or {})
        queue, reason, deliveries = _death(headers)
        try:
            body, encoding = raw.body.decode(), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(raw.body).decode(), "base64"
        message_id, message_type = raw.message_id, raw.type
        try:
            envelope = json.loads(raw.body)
            message_id, message_type = envelope.get("id") or message_id, envelope.get("type") or message_type
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass
        async with sessions.begin() as session:
            await session.execute(
                insert(dead_letter).values(
                    id=f"dl_{uuid.uuid4().hex}", message_id=message_id, message_type=message_type, queue=queue,
                    reason=reason, deliveries=deliveries, body=body, body_encoding=encoding,
                    content_type=raw.content_type, status="parked", dead_at=datetime.now(UTC),
                )
            )
        log.error("dead_letter.parked", queue=queue, reason=reason, dead_message_id=message_id)

    return router


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"], "message_id": row["message_id"], "type": row["message_type"], "queue": row["queue"],
        "reason": row["reason"], "deliveries": row["deliveries"], "status": row["status"],
        "dead_at": row["dead_at"].isoformat(), "resolved_at": row["resolved_at"].isoformat() if row["resolved_at"] else None,
        "body": row["body"], "body_encoding": row["body_encoding"],
    }


def build_api() -> APIRouter:
    api = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])

    @api.get("", dependencies=[require(Role.OPS)])
    async def list_dead_letters(
        rt: Runtime, status: Annotated[str, Query(pattern="^(parked|replayed|discarded|all)$")] = "parked",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        query = select(dead_letter).order_by(dead_letter.c.dead_at.desc()).limit(limit)
        if status != "all":
            query = query.where(dead_letter.c.status == status)
        async with rt.sessions() as session:
            rows = (await session.execute(query)).mappings().all()
            parked = await session.scalar(select(func.count()).select_from(dead_letter).where(dead_letter.c.status == "parked"))
        return {"items": [_view(r) for r in rows], "parked": parked}

    async def _resolve(rt: Any, letter_id: str, status: str) -> Any:
        async with rt.sessions.begin() as session:
            row = (await session.execute(select(dead_letter).where(dead_letter.c.id == letter_id))).mappings().first()
            if row is None:
                raise Problem(404, "not-found", "Not found", f"no dead letter {letter_id}")
            if row["status"] != "parked":
                raise Problem(409, "already-resolved", "Already resolved", f"dead letter {letter_id} is {row['status']}")
            if status == "replayed":
                # Back to the queue it died in, through the default exchange, via the outbox.
                await session.execute(
                    insert(outbox_message).values(
                        message_id=f"replay-{uuid.uuid4()}", exchange="", routing_key=row["queue"],
                        message_type=row["message_type"] or "unknown", correlation_id=None,
                        body=row["body"] if row["body_encoding"] == "utf-8" else base64.b64decode(row["body"]).decode("latin-1"),
                        created_at=datetime.now(UTC), attempts=0,
                    )
                )
                session.info["outbox_staged"] = True
            await session.execute(
                update(dead_letter).where(dead_letter.c.id == letter_id).values(status=status, resolved_at=datetime.now(UTC))
            )
        log.info("dead_letter.resolved", dead_letter=letter_id, status=status, queue=row["queue"])
        return {"id": letter_id, "status": status, "queue": row["queue"]}

    @api.post("/{letter_id}/replay", status_code=202, dependencies=[require(Role.ADMIN)])
    async def replay_dead_letter(letter_id: str, rt: Runtime) -> dict[str, Any]:
        return await _resolve(rt, letter_id, "replayed")

    @api.post("/{letter_id}/discard", dependencies=[require(Role.ADMIN)])
    async def discard_dead_letter(letter_id: str, rt: Runtime) -> dict[str, Any]:
        return await _resolve(rt, letter_id, "discarded")

    return api


async def parked_count(sessions: async_sessionmaker) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(dead_letter).where(dead_letter.c.status == "parked")) or 0
