"""The CloudEvents 1.0 envelope (structured mode, JSON) that carries every event and command.

Producers build messages with ``extra="forbid"`` models; consumers read with ``extra="ignore"`` so
that fields added later within a version never break them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from events.names import command_type, event_type


class Message(BaseModel):
    """Base of every event and command payload (the envelope's ``data``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routing_key: ClassVar[str]
    is_command: ClassVar[bool] = False

    @classmethod
    def ce_type(cls) -> str:
        return command_type(cls.routing_key) if cls.is_command else event_type(cls.routing_key)


class Event(Message):
    """Something that happened; broadcast on ``oms.events``. Never carries contact details."""


class Command(Message):
    """Something one service asks another to do; point-to-point on ``oms.commands``."""

    is_command: ClassVar[bool] = True


T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    """A CloudEvent as consumers read it; ``Envelope[StockReserved]`` validates ``data`` too."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str
    type: str
    source: str
    subject: str | None = None
    time: datetime
    datacontenttype: str = "application/json"
    data: T
    correlationid: str | None = None
    causationid: str | None = None
    traceparent: str | None = None


class Incoming(BaseModel):
    """The envelope's attributes with ``data`` left raw: used where the type is looked at first."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str
    type: str
    source: str
    subject: str | None = None
    time: datetime
    data: Any = None
    correlationid: str | None = None
    causationid: str | None = None
    traceparent: str | None = None


def new_id() -> str:
    return str(uuid.uuid4())


def build(
    payload: Message,
    *,
    service: str,
    subject: str | None,
    causation: Incoming | Envelope[Any] | None = None,
    correlationid: str | None = None,
    traceparent: str | None = None,
    message_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """The JSON-ready CloudEvent for ``payload``.

    ``correlationid`` is the order id; ``causationid`` the id of the message that caused this one.
    """
    return {
        "specversion": "1.0",
        "id": message_id or new_id(),
        "type": payload.ce_type(),
        "source": f"oms/{service}",
        "subject": subject,
        "time": (time or datetime.now(UTC)).isoformat(),
        "datacontenttype": "application/json",
        "data": payload.model_dump(mode="json"),
        "correlationid": correlationid or (causation.correlationid if causation else None) or subject,
        "causationid": causation.id if causation else None,
        "traceparent": traceparent or (causation.traceparent if causation else None),
    }


class ErrorItem(BaseModel):
    """One field that is wrong, as in a 422 problem's ``errors`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    message: str
    type: str = Field(default="value_error")
