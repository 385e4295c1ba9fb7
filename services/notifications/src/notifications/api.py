"""HTTP: a customer's channel preferences (gateway; ops may read), and what was sent for an order
(ops), with the recipient masked. Thin: rules live in domain.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from chassis.db import table
from chassis.settings import Role
from chassis.web import Runtime, require
from notifications import service
from notifications.db import Notification
from notifications.domain import DEFAULT_CHANNELS, Channel, NotificationStatus, mask_address

router = APIRouter(prefix="/v1", tags=["notifications"])

CustomerId = Annotated[str, Path(min_length=1, max_length=200)]


class ChannelChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: bool
    sms: bool
    push: bool


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: ChannelChoice


def _preferences_view(customer_id: str, pref: Any) -> dict:
    if pref is None:
        channels = {c.value: c in DEFAULT_CHANNELS for c in Channel}
    else:
        channels = {"email": pref.email, "sms": pref.sms, "push": pref.push}
    return {
        "customer_id": customer_id,
        "channels": channels,
        "updated_at": pref.updated_at.isoformat() if pref else None,
    }


@router.get("/preferences/{customer_id}", dependencies=[require(Role.GATEWAY, Role.OPS)])
async def get_preferences(customer_id: CustomerId, rt: Runtime) -> dict:
    """The channels the customer is told on; e-mail only until they choose."""
    async with rt.sessions() as session:
        return _preferences_view(customer_id, await service.preference_of(session, customer_id))


@router.put("/preferences/{customer_id}", dependencies=[require(Role.GATEWAY)])
async def put_preferences(
    customer_id: CustomerId, rt: Runtime, body: Annotated[PreferencesIn, Body()]
) -> dict:
    """Replace the customer's choice of channels (all three are required; all off means none)."""
    now = datetime.now(UTC)
    async with rt.sessions.begin() as session:
        pref = await service.choose_channels(
            session,
            customer_id,
            email=body.channels.email,
            sms=body.channels.sms,
            push=body.channels.push,
            at=now,
        )
    return _preferences_view(customer_id, pref)


def _notification_view(n: Any) -> dict:
    return {
        "id": n.id,
        "order_id": n.order_id,
        "customer_id": n.customer_id,
        "channel": n.channel,
        "template": n.template,
        "locale": n.locale,
        "recipient": mask_address(n.channel, n.address),
        "subject": n.subject,
        "status": n.status,
        "attempts": n.attempts,
        "last_error": n.last_error,
        "source_event_id": n.source_event_id,
        "source_type": n.source_type,
        "created_at": n.created_at.isoformat(),
        "sent_at": n.sent_at.isoformat() if n.sent_at else None,
    }


@router.get("/notifications", dependencies=[require(Role.OPS)])
async def list_notifications(
    rt: Runtime,
    order_id: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[NotificationStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    """What was sent (or is pending, or failed), newest first; the recipient is masked."""
    notification = table(Notification)
    query = select(notification).order_by(notification.c.created_at.desc(), notification.c.id).limit(limit)
    if order_id:
        query = query.where(notification.c.order_id == order_id)
    if status:
        query = query.where(notification.c.status == status)
    async with rt.sessions() as session:
        rows = (await session.execute(query)).all()
    return {"items": [_notification_view(n) for n in rows]}
