"""Dead letters as ops may see them: contact details and payment tokens masked (CONTRACT §9)."""

from __future__ import annotations

import json
from typing import Any

PERSONAL = {"name", "email", "phone", "line1", "line2", "postal_code", "latitude", "longitude", "address"}
SECRET = {"token", "payment_token", "card", "cvv", "signature"}


def _mask(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(key, v) for v in value]
    if value is None:
        return None
    if key in SECRET:
        return "***"
    if key == "email" and isinstance(value, str) and "@" in value:
        return value[0] + "***@" + value.split("@", 1)[1]
    if key == "phone" and isinstance(value, str):
        return "***" + value[-2:]
    if key in PERSONAL:
        return "***"
    return value


def mask_body(body: str, encoding: str) -> str:
    """The message, pretty-printed with what identifies a person or pays replaced; a body that is
    not JSON is not shown at all (it could hold anything)."""
    if encoding != "utf-8":
        return f"(binary, {len(body)} bytes in base64)"
    try:
        data = json.loads(body)
    except ValueError:
        return f"(not JSON, {len(body)} characters)"
    return json.dumps(_mask("", data), indent=2, ensure_ascii=False)
