"""structlog set-up: JSON lines in production, readable lines locally; every line carries the
service, and, while a message or request is handled, the order id and the trace id.

Every line is masked on its way out (CONTRACT §3: never a payment token, a full e-mail address
or phone number, nor a street address in a log): a value that carries one, wherever it came from
(an exception's text, a validation error quoting its input), is written masked."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from chassis.telemetry import current_trace_id


def _add_trace_id(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if "trace_id" not in event_dict:
        trace_id = current_trace_id()
        if trace_id:
            event_dict["trace_id"] = trace_id
    return event_dict


_TOKEN = re.compile(r"\btok_[A-Za-z0-9_-]+")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")
_PHONE = re.compile(r"\+([1-9][0-9])[0-9 ()-]{3,16}([0-9]{2})\b")
_STREET = re.compile(
    r"\b[0-9]{1,6}[A-Za-z]?,?\s+(?:[A-Z][A-Za-z'.-]*\s+){1,4}"
    r"(?:Ave|Avenue|St|Street|Rd|Road|Blvd|Boulevard|Lane|Ln|Way|Dr|Drive|Ct|Court|Pl|Place|Sq|Square|Hwy|Highway)\b"
)
_PERSONAL_KEYS = frozenset(
    {"name", "line1", "line2", "address", "shipping_address", "customer", "token", "phone"}
)


def mask(text: str) -> str:
    """``text`` with payment tokens, e-mail addresses, phone numbers and street addresses masked
    (``tok_***``, ``l***@example.com``, ``+86***00``, ``[address]``)."""
    if "tok_" in text:
        text = _TOKEN.sub("tok_***", text)
    if "@" in text:
        text = _EMAIL.sub(r"\1***@\2", text)
    if "+" in text:
        text = _PHONE.sub(r"+\1***\2", text)
    if any(c.isdigit() for c in text):
        text = _STREET.sub("[address]", text)
    return text


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: "[personal]" if k in _PERSONAL_KEYS and v else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def mask_personal_data(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: every value of the line masked (``mask``); values under keys that
    name contact details are left out."""
    return {
        k: "[personal]" if k in _PERSONAL_KEYS and v and not isinstance(v, bool) else _masked(v)
        for k, v in event_dict.items()
    }


class MaskPersonalData(logging.Filter):
    """The same for lines that libraries log through the standard library."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask(record.getMessage()), None
        return True


def setup_logging(service: str, *, json: bool, level: str = "INFO") -> None:
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_id,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, mask_personal_data, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through the standard library; keep them quiet and on the same stream.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskPersonalData) for f in handler.filters):
            handler.addFilter(MaskPersonalData())
    logging.getLogger("uvicorn.error").addFilter(MaskPersonalData())


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
