"""Bodies and look-ups the orders tests share."""

from __future__ import annotations

import copy
import json
from typing import Any

from sqlalchemy import select

from chassis.db import outbox_message

GATEWAY = {"Authorization": "Bearer dev-gateway-key"}
OPS = {"Authorization": "Bearer dev-ops-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
MARKETPLACE = {"Authorization": "Bearer dev-marketplace-key"}  # a second gateway

BODY: dict[str, Any] = {
    "customer": {
        "id": "cust-42",
        "name": "Lin Mei",
        "email": "lin@example.com",
        "phone": "+8613800000000",
        "locale": "zh-CN",
    },
    "shipping_address": {
        "name": "Lin Mei",
        "line1": "1 Century Ave",
        "line2": None,
        "city": "Shanghai",
        "region": "SH",
        "postal_code": "200120",
        "country": "CN",
        "latitude": 31.23,
        "longitude": 121.50,
    },
    "items": [{"sku": "SKU-RED-MUG", "quantity": 2, "unit_price": "39.90"}],
    "currency": "CNY",
    "payment": {"method": "card", "token": "tok_ok"},
    "channel": "web",
}


def body(**changes: Any) -> dict[str, Any]:
    b = copy.deepcopy(BODY)
    b.update(changes)
    return b


async def outbox(sessions) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]
