"""What the integration tests do to the running system: through its public HTTP API only."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

GATEWAY = {"Authorization": "Bearer dev-gateway-key"}
OPS = {"Authorization": "Bearer dev-ops-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
MARKETPLACE = {
    "Authorization": "Bearer dev-marketplace-key"
}  # a second gateway: sees none of dev-gateway's orders

FINAL = {"delivered", "cancelled", "returned"}

ORDER: dict[str, Any] = {
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

T = TypeVar("T")


def order_body(
    *,
    token: str = "tok_ok",
    items: list[dict] | None = None,
    country: str | None = None,
    email: str | None = None,
    locale: str | None = None,
    customer_id: str | None = None,
) -> dict[str, Any]:
    body = copy.deepcopy(ORDER)
    if customer_id is not None:
        body["customer"]["id"] = customer_id
    body["payment"]["token"] = token
    if items is not None:
        body["items"] = items
    if country is not None:
        body["shipping_address"]["country"] = country
        body["shipping_address"]["latitude"] = body["shipping_address"]["longitude"] = None
    if email is not None:
        body["customer"]["email"] = email
    if locale is not None:
        body["customer"]["locale"] = locale
    return body


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``accept`` says yes; fail with the last value seen after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = await probe()
        if accept(last):
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(0.1)


async def place(orders: httpx.AsyncClient, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    r = await orders.post(
        "/v1/orders", json=body, headers={**GATEWAY, "Idempotency-Key": key or str(uuid.uuid4())}
    )
    assert r.status_code == 202, r.text
    return r.json()


async def get_order(orders: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    r = await orders.get(f"/v1/orders/{order_id}", headers=GATEWAY)
    assert r.status_code == 200, r.text
    return r.json()


async def wait_status(
    orders: httpx.AsyncClient, order_id: str, *statuses: str, timeout: float = 30.0
) -> dict[str, Any]:
    return await eventually(
        lambda: get_order(orders, order_id),
        lambda o: o["status"] in statuses,
        timeout=timeout,
        what=f"order {order_id} to reach {statuses}",
    )


async def wait_settled(
    orders: httpx.AsyncClient, order_id: str, *, payment: str | None = None, timeout: float = 30.0
) -> dict:
    """Wait for the order to be final and, if given, its payment to reach ``payment``."""
    return await eventually(
        lambda: get_order(orders, order_id),
        lambda o: (
            o["status"] in FINAL and (payment is None or (o.get("payment") or {}).get("status") == payment)
        ),
        timeout=timeout,
        what=f"order {order_id} final with payment {payment}",
    )


async def stock(inventory: httpx.AsyncClient, sku: str) -> dict[str, Any]:
    r = await inventory.get(f"/v1/stock/{sku}", headers=OPS)
    assert r.status_code == 200, r.text
    return r.json()


async def receive(inventory: httpx.AsyncClient, warehouse: str, sku: str, quantity: int) -> None:
    r = await inventory.post(
        "/v1/stock/receipts", json={"warehouse": warehouse, "sku": sku, "quantity": quantity}, headers=ADMIN
    )
    assert r.status_code in (200, 201, 202), r.text


async def payment(payments: httpx.AsyncClient, order_id: str) -> dict[str, Any] | None:
    r = await payments.get(f"/v1/payments/{order_id}", headers=OPS)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()


CARRIER_SECRET = "dev-carrier-secret"


def carrier_signature(body: bytes, *, secret: str = CARRIER_SECRET, t: int | None = None) -> str:
    """``X-OMS-Signature`` as a carrier signs its scan (CONTRACT §7)."""
    t = int(time.time()) if t is None else t
    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


async def carrier_event(
    shipping: httpx.AsyncClient,
    order: dict[str, Any],
    status: str,
    *,
    parcel: dict[str, Any] | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    """The carrier of ``parcel`` (default: the order's ``shipment``) posts a signed scan, made now."""
    shipment = parcel or order["shipment"]
    at = at or datetime.now(UTC).isoformat()
    body = json.dumps(
        {"tracking_number": shipment["tracking_number"], "status": status, "at": at, "location": "Shanghai"}
    ).encode()
    r = await shipping.post(
        f"/v1/carriers/{shipment['carrier']}/events",
        content=body,
        headers={"X-OMS-Signature": carrier_signature(body), "Content-Type": "application/json"},
    )
    assert r.status_code in (200, 202), r.text
    return r.json()


def new_sku() -> str:
    return f"SKU-T-{uuid.uuid4().hex[:8].upper()}"
