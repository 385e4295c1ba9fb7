"""Dead letters, parked where ops can see them: never lost, never looping.

A message that a consumer rejects as malformed, or that reaches its queue's delivery limit, is
dead-lettered by the broker to ``oms.dead-letter``. One service (orders) consumes that queue and
parks each message in its database, with the queue it died in and why; admins list them, replay
one (re-published through the outbox to the queue it died in, with its original CloudEvents id) or
discard it. The ack comes after the row is committed, so a dead letter is never dropped.

What ops see and what the row holds in the clear is masked (CONTRACT §3 holds here too): payment
tokens keep only their kind, e-mail addresses, phone numbers, names and address lines are starred
(by key in a JSON body, by pattern in any other). The original is kept only sealed, encrypted with
``DEAD_LETTER_KEY`` (Fernet), so that a replay sends the message as it was. Rows older than
``DEAD_LETTER_RETENTION_DAYS`` are purged, parked or not, by a background job of the parking
service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from fastapi import APIRouter, Query
from faststream.rabbit import RabbitMessage, RabbitQueue, RabbitRouter
from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chassis.broker import Resource
from chassis.db import UtcDateTime, outbox_message
from chassis.logs import get_logger
from chassis.settings import Role, ServiceSettings
from chassis.tasks import every
from chassis.web import Problem, Runtime, require
from events import topology
from events.names import DEAD_LETTER_QUEUE

log = get_logger("chassis.deadletters")

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
    Column("body", Text, nullable=False),  # masked; base64 when the body was not UTF-8
    Column("body_encoding", String(10), nullable=False),
    Column("content_type", String(100), nullable=True),
    Column("status", String(20), nullable=False, index=True),  # parked | replayed | discarded
    Column("dead_at", UtcDateTime(), nullable=False),
    Column("resolved_at", UtcDateTime(), nullable=True),
    Column(
        "sealed", Text, nullable=True
    ),  # the original body, encrypted (Fernet); None in rows parked before
    Index("ix_dead_letter_dead_at", "dead_at"),  # the purge
)

# ---- masking ---------------------------------------------------------------------------------
MASK = "***"
_PERSONAL_KEYS = frozenset(
    {
        "email",
        "phone",
        "mobile",
        "name",
        "first_name",
        "last_name",
        "full_name",
        "line1",
        "line2",
        "street",
        "postal_code",
        "postcode",
        "zip",
    }
)
_EMAIL = re.compile(
    r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*)"
)  # cut short too
_TOKEN = re.compile(r"\b(tok)_[A-Za-z0-9_-]+")
_PHONE = re.compile(r"\+\d[\d ().-]{6,}\d")
# A personal field in a body that is not JSON (often a malformed message): "email": "…" → "***"
_FIELD = re.compile(
    r'("(?:token|' + "|".join(sorted(_PERSONAL_KEYS)) + r')"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}\]\s]+)',
    re.IGNORECASE,
)


def mask_token(token: str) -> str:
    """A payment token's kind only (``tok_visa_4242`` → ``tok_***``), as payments keeps it."""
    return token.split("_", 1)[0] + "_***" if "_" in token else MASK


def _mask_fields(text: str) -> str:
    return _FIELD.sub(lambda m: f'{m[1]}"{MASK}"', text)


def _mask_text(text: str) -> str:
    text = _TOKEN.sub(r"\1_***", text)
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(MASK, text)


def _personal(key: str) -> bool:
    key = key.lower()
    return key in _PERSONAL_KEYS or key.endswith(("email", "_phone", "_name"))


def _mask_value(value: Any, key: str | None = None) -> Any:
    if key is not None and key.lower() == "token" and isinstance(value, str):
        return mask_token(value)
    if key is not None and _personal(key):
        return MASK if value not in (None, "") else value
    if isinstance(value, dict):
        return {k: _mask_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_value(v) for v in value]
    if isinstance(value, str):
        return _mask_text(value)
    return value


def mask_body(body: bytes) -> tuple[str, str]:
    """The body as it may be shown and stored in the clear, and its encoding (``utf-8``, or
    ``base64`` for a body that is not UTF-8): personal data and payment tokens masked."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        masked = _mask_text(_mask_fields(body.decode("latin-1")))  # bytes 1:1
        return base64.b64encode(masked.encode("latin-1", errors="replace")).decode(), "base64"
    try:
        return json.dumps(_mask_value(json.loads(text)), ensure_ascii=False), "utf-8"
    except ValueError:
        return _mask_text(_mask_fields(text)), "utf-8"


# ---- sealing ---------------------------------------------------------------------------------
def sealer(settings: ServiceSettings) -> MultiFernet:
    """Seals with the first key of ``DEAD_LETTER_KEY`` and opens with any of them (key rotation)."""
    keys = settings.dead_letter_keys()
    if not keys:
        raise ValueError("DEAD_LETTER_KEY must be set in production: it seals parked dead letters")
    return MultiFernet([Fernet(k) for k in keys])


def seal(settings: ServiceSettings, body: bytes) -> str:
    return sealer(settings).encrypt(body).decode("ascii")


def unseal(settings: ServiceSettings, sealed: str) -> bytes:
    return sealer(settings).decrypt(sealed.encode("ascii"))


QUEUE = RabbitQueue(  # type: ignore[call-overload]  # arguments typed per queue type; ours: the topology's
    DEAD_LETTER_QUEUE, durable=True, declare=False, arguments=topology.DEAD_LETTER_ARGUMENTS
)


def _death(headers: dict[str, Any]) -> tuple[str, str, int]:
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths else {}
    queue = str(headers.get("x-first-death-queue") or first.get("queue") or "unknown")
    reason = str(headers.get("x-first-death-reason") or first.get("reason") or "unknown")
    reason = {"rejected": "rejected", "delivery_limit": "delivery_limit", "expired": "expired"}.get(
        reason, reason
    )
    return queue, reason, int(headers.get("x-delivery-count") or first.get("count") or 1)


def _raw(message: Any) -> bytes:
    body: bytes = message.body
    return body


def build_router() -> RabbitRouter:
    router = RabbitRouter()

    # Raw bytes, never decoded: a dead letter is often not JSON, and this queue is the end of the
    # line (a message rejected here would be gone). A database error is retried, like any other.
    @router.subscriber(QUEUE, title="oms.dead-letter:park", decoder=_raw)
    async def on_dead_letter(
        message: RabbitMessage,
        sessions: Annotated[async_sessionmaker[AsyncSession], Resource("sessions")],
        settings: Annotated[ServiceSettings, Resource("settings")],
    ) -> None:
        raw = message.raw_message
        headers = dict(raw.headers or {})
        queue, reason, deliveries = _death(headers)
        body, encoding = mask_body(raw.body)
        sealed = seal(settings, raw.body)
        message_id, message_type = raw.message_id, raw.type
        try:
            envelope = json.loads(raw.body)
            message_id, message_type = envelope.get("id") or message_id, envelope.get("type") or message_type
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass
        async with sessions.begin() as session:
            await session.execute(
                insert(dead_letter).values(
                    id=f"dl_{uuid.uuid4().hex}",
                    message_id=message_id,
                    message_type=message_type,
                    queue=queue,
                    reason=reason,
                    deliveries=deliveries,
                    body=body,
                    body_encoding=encoding,
                    sealed=sealed,
                    content_type=raw.content_type,
                    status="parked",
                    dead_at=datetime.now(UTC),
                )
            )
        log.error("dead_letter.parked", queue=queue, reason=reason, dead_message_id=message_id)

    return router


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "type": row["message_type"],
        "queue": row["queue"],
        "reason": row["reason"],
        "deliveries": row["deliveries"],
        "status": row["status"],
        "dead_at": row["dead_at"].isoformat(),
        "resolved_at": row["resolved_at"].isoformat() if row["resolved_at"] else None,
        "body": row["body"],
        "body_encoding": row["body_encoding"],
    }


def build_api() -> APIRouter:
    api = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])

    @api.get("", dependencies=[require(Role.OPS)])
    async def list_dead_letters(
        rt: Runtime,
        status: Annotated[str, Query(pattern="^(parked|replayed|discarded|all)$")] = "parked",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        query = select(dead_letter).order_by(dead_letter.c.dead_at.desc()).limit(limit)
        if status != "all":
            query = query.where(dead_letter.c.status == status)
        async with rt.sessions() as session:
            rows = (await session.execute(query)).mappings().all()
            parked = await session.scalar(
                select(func.count()).select_from(dead_letter).where(dead_letter.c.status == "parked")
            )
        return {"items": [_view(r) for r in rows], "parked": parked}

    async def _resolve(rt: Any, letter_id: str, status: str) -> dict[str, Any]:
        async with rt.sessions.begin() as session:
            row = (
                (await session.execute(select(dead_letter).where(dead_letter.c.id == letter_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise Problem(404, "not-found", "Not found", f"no dead letter {letter_id}")
            if row["status"] != "parked":
                raise Problem(
                    409, "already-resolved", "Already resolved", f"dead letter {letter_id} is {row['status']}"
                )
            if status == "replayed":
                # Back to the queue it died in, as it was, through the default exchange, via the outbox.
                await session.execute(
                    insert(outbox_message).values(
                        message_id=f"replay-{uuid.uuid4()}",
                        exchange="",
                        routing_key=row["queue"],
                        message_type=row["message_type"] or "unknown",
                        correlation_id=None,
                        body=_original(rt.settings, row),
                        created_at=datetime.now(UTC),
                        attempts=0,
                    )
                )
                session.info["outbox_staged"] = True
            await session.execute(
                update(dead_letter)
                .where(dead_letter.c.id == letter_id)
                .values(status=status, resolved_at=datetime.now(UTC))
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


def _original(settings: ServiceSettings, row: Any) -> str:
    """The body to replay: the sealed original (rows parked before sealing kept it in ``body``)."""
    if row["sealed"] is None:
        raw = row["body"].encode() if row["body_encoding"] == "utf-8" else base64.b64decode(row["body"])
    else:
        try:
            raw = unseal(settings, row["sealed"])
        except InvalidToken:
            raise Problem(
                409,
                "cannot-unseal",
                "Cannot unseal",
                "the original was sealed with a key not in DEAD_LETTER_KEY",
            ) from None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


async def purge(
    sessions: async_sessionmaker[AsyncSession], *, older_than: timedelta, batch: int = 1000
) -> int:
    """Delete the dead letters (parked or resolved) that arrived more than ``older_than`` ago."""
    before = datetime.now(UTC) - older_than
    statement = delete(dead_letter).where(
        dead_letter.c.id.in_(
            select(dead_letter.c.id).where(dead_letter.c.dead_at < before).limit(batch).scalar_subquery()
        )
    )
    total = 0
    while True:
        async with sessions.begin() as session:
            done = int(cast(CursorResult[Any], await session.execute(statement)).rowcount)
        total += done
        if done < batch:
            break
    if total:
        log.info("dead_letter.purged", rows=total, older_than_days=older_than.total_seconds() / 86400)
    return total


def housekeeping(
    sessions: async_sessionmaker[AsyncSession], settings: ServiceSettings, every_seconds: float = 3600.0
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[Any]]:
    """The purge, at start and then every hour, while the block lasts (the service that parks).

    Refuses to start without a key to seal dead letters with (production without DEAD_LETTER_KEY)."""
    sealer(settings)
    older_than = timedelta(days=settings.dead_letter_retention_days)
    return every(every_seconds, lambda: purge(sessions, older_than=older_than), name="dead-letter-retention")


async def parked_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return (
            await session.scalar(
                select(func.count()).select_from(dead_letter).where(dead_letter.c.status == "parked")
            )
            or 0
        )
