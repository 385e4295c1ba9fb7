"""The CloudEvents 1.0 envelope (structured mode, JSON) that carries every event and command.

Producers build messages with ``extra="forbid"`` models; consumers read with ``extra="ignore"`` so
that fields added later within a version never break them.
"""

from __future__ import annotations

import types
import typing
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.names import command_type, event_type, source


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


def _known_fields_only(annotation: Any, value: Any) -> Any:
    """``value`` without the keys ``annotation``'s models do not know, at every depth.

    Message models forbid unknown fields so that producers cannot misspell one; a consumer must
    instead ignore fields a newer producer added within the same version.
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
        fields = annotation.model_fields
        return {k: _known_fields_only(fields[k].annotation, v) for k, v in value.items() if k in fields}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset) and isinstance(value, list) and args:
        return [_known_fields_only(args[0], v) for v in value]
    if origin is typing.Annotated and args:
        return _known_fields_only(args[0], value)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:
            return _known_fields_only(models[0], value)
    return value


class Envelope(BaseModel, Generic[T]):
    """A CloudEvent as consumers read it; ``Envelope[StockReserved]`` validates ``data`` too,
    ignoring fields it does not know (added later within the version)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _ignore_unknown_data_fields(cls, values: Any) -> Any:
        args = cls.__pydantic_generic_metadata__.get("args") or ()
        if args and isinstance(values, dict) and "data" in values:
            values = {**values, "data": _known_fields_only(args[0], values["data"])}
        return values

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


Cause = Incoming | Envelope[Any] | None
"""The message that caused a change (what the change emits names it as its ``causationid``), or
None for a change asked for over HTTP."""


def utcnow() -> datetime:
    """Now, timezone-aware UTC, as every ``time`` and ``*_at`` of the system is."""
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def build(
    payload: Message,
    *,
    service: str,
    subject: str | None,
    causation: Cause = None,
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
        "source": source(service),
        "subject": subject,
        "time": (time or utcnow()).isoformat(),
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
