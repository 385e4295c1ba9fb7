"""The orders HTTP API (CONTRACT §4) on SQLite: validation, idempotency, roles, reads."""

from __future__ import annotations

import copy

import pytest
from orders_support import BODY, GATEWAY, OPS, body, outbox
from sqlalchemy import func, select

from orders.db import Order


async def post(client, payload, key="k-1", headers=GATEWAY):
    return await client.post("/v1/orders", json=payload, headers={**headers, "Idempotency-Key": key})


async def test_a_valid_order_is_accepted_with_its_location_and_emits_what_it_should(client, sessions):
    r = await post(client, BODY)
    assert r.status_code == 202
    order = r.json()
    assert r.headers["location"] == f"/v1/orders/{order['id']}"
    assert (order["status"], order["total"], order["payment"]["status"]) == ("submitted", "79.80", "pending")
    assert [h["status"] for h in order["history"]] == ["submitted"]
    sent = await outbox(sessions)
    assert [m["key"] for m in sent] == [
        "order.placed",
        "order.status_changed",
        "notifications.register_recipient",
        "inventory.reserve_stock",
    ]
    events = [m for m in sent if not m["type"].startswith("oms.command.")]
    assert "lin@example.com" not in str(events) and "Lin Mei" not in str(events), (
        "events carry no contact details"
    )
    assert "tok_ok" not in str(sent), "the payment token is not sent before the capture"
    assert all(m["correlationid"] == order["id"] for m in sent)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("shipping_address"), "shipping_address"),
        (lambda b: b["items"][0].update(quantity=0), "items.0.quantity"),
        (lambda b: b["payment"].update(method="cash"), "payment.method"),
        (lambda b: b["items"][0].update(unit_price="abc"), "items.0.unit_price"),
        (lambda b: b["items"][0].update(quantity=500), "items.0.quantity"),
        (lambda b: b.update(id="ord_x"), "id"),
        (lambda b: b.update(status="paid"), "status"),
        (lambda b: b.update(total="1.00"), "total"),
        (lambda b: b["shipping_address"].update(country="China"), "shipping_address.country"),
        (lambda b: b.update(currency="yuan"), "currency"),
        (lambda b: b.update(items=[]), "items"),
        (lambda b: b.update(channel="fax"), "channel"),
    ],
)
async def test_a_bad_body_is_422_naming_the_field_and_nothing_is_stored_or_sent(
    client, sessions, change, field
):
    payload = copy.deepcopy(BODY)
    change(payload)
    r = await post(client, payload)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in {e["field"] for e in r.json()["errors"]}, r.json()
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Order)) == 0
    assert await outbox(sessions) == []


async def test_the_idempotency_key_is_required(client):
    r = await client.post("/v1/orders", json=BODY, headers=GATEWAY)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Idempotency-Key"


async def test_the_same_key_and_body_is_the_same_order_another_body_is_422(client, sessions):
    first = await post(client, BODY)
    again = await post(client, BODY)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    other = await post(client, body(currency="USD"))
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Order)) == 1


async def test_a_key_still_in_progress_is_409(client, sessions, settings):
    from datetime import UTC, datetime

    from events.orders import PlaceOrder
    from orders.db import IdempotencyKey
    from orders.domain import request_fingerprint

    async with sessions.begin() as session:
        session.add(
            IdempotencyKey(
                key="dev-gateway:http:busy",
                fingerprint=request_fingerprint(PlaceOrder.model_validate(BODY)),
                state="in_progress",
                created_at=datetime.now(UTC),
            )
        )
    r = await post(client, BODY, key="busy")
    assert r.status_code == 409


async def test_roles(client):
    assert (await client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": "x"})).status_code == 401
    assert (await post(client, BODY, headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await post(client, BODY, headers=OPS)).status_code == 403
    created = (await post(client, BODY)).json()
    assert (await client.get(f"/v1/orders/{created['id']}", headers=OPS)).status_code == 200
    assert (await client.post(f"/v1/orders/{created['id']}/cancel", json={}, headers=OPS)).status_code == 403


async def test_unknown_order_is_404(client):
    r = await client.get("/v1/orders/ord_nope", headers=GATEWAY)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


async def test_list_newest_first_with_filters_and_a_cursor(client):
    ids = [
        (await post(client, body(channel=ch), key=f"k{i}")).json()["id"]
        for i, ch in enumerate(["web", "app", "web"])
    ]
    page = (await client.get("/v1/orders", params={"limit": 2}, headers=OPS)).json()
    assert [o["id"] for o in page["items"]] == [ids[2], ids[1]]
    rest = (
        await client.get("/v1/orders", params={"limit": 2, "cursor": page["next_cursor"]}, headers=OPS)
    ).json()
    assert [o["id"] for o in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    web = (await client.get("/v1/orders", params={"channel": "web"}, headers=OPS)).json()
    assert {o["id"] for o in web["items"]} == {ids[0], ids[2]}
    assert (await client.get("/v1/orders", params={"status": "nonsense"}, headers=OPS)).status_code == 422
    assert (await client.get("/v1/orders", params={"cursor": "!!"}, headers=OPS)).status_code == 422


async def test_cancel_before_shipment_then_409(client, sessions):
    created = (await post(client, BODY)).json()
    r = await client.post(
        f"/v1/orders/{created['id']}/cancel", json={"reason": "changed my mind"}, headers=GATEWAY
    )
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["status_reason"] == "customer_request"
    assert (await outbox(sessions))[-1]["key"] == "inventory.release_stock"


async def test_returns_only_what_was_bought_and_only_after_delivery(client):
    created = (await post(client, BODY)).json()
    url = f"/v1/orders/{created['id']}/returns"
    wrong = await client.post(
        url, json={"items": [{"sku": "SKU-OTHER", "quantity": 1}], "reason": "x"}, headers=GATEWAY
    )
    assert wrong.status_code == 422
    too_many = await client.post(
        url, json={"items": [{"sku": "SKU-RED-MUG", "quantity": 3}], "reason": "x"}, headers=GATEWAY
    )
    assert too_many.status_code == 422
    early = await client.post(
        url, json={"items": [{"sku": "SKU-RED-MUG", "quantity": 1}], "reason": "x"}, headers=GATEWAY
    )
    assert early.status_code == 409


async def test_address_change_before_shipment(client):
    created = (await post(client, BODY)).json()
    new = {**BODY["shipping_address"], "line1": "88 Nanjing Rd"}
    r = await client.patch(f"/v1/orders/{created['id']}/shipping-address", json=new, headers=GATEWAY)
    assert r.status_code == 202 and r.json()["shipping_address"]["line1"] == "88 Nanjing Rd"
    bad = await client.patch(
        f"/v1/orders/{created['id']}/shipping-address", json={**new, "country": "?"}, headers=GATEWAY
    )
    assert bad.status_code == 422
