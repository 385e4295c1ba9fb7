"""CONTRACT §3: a gateway sees and changes only the orders placed with its key; ops and admin see
all; every change is recorded with the name of the key that made it."""

from __future__ import annotations

from orders_support import ADMIN, BODY, GATEWAY, MARKETPLACE, OPS

from events.orders import PlaceOrder
from orders import service


async def post(client, key="k-1", headers=GATEWAY):
    return await client.post("/v1/orders", json=BODY, headers={**headers, "Idempotency-Key": key})


async def test_another_gateways_order_is_404_everywhere_and_left_out_of_lists(client):
    order = (await post(client)).json()
    url = f"/v1/orders/{order['id']}"
    address = {**BODY["shipping_address"], "line1": "88 Nanjing Rd"}
    returned = {"items": [{"sku": "SKU-RED-MUG", "quantity": 1}], "reason": "broken"}
    refused = [
        await client.get(url, headers=MARKETPLACE),
        await client.post(f"{url}/cancel", json={}, headers=MARKETPLACE),
        await client.patch(f"{url}/shipping-address", json=address, headers=MARKETPLACE),
        await client.post(f"{url}/returns", json=returned, headers=MARKETPLACE),
    ]
    assert [r.status_code for r in refused] == [404, 404, 404, 404]
    assert all("Lin Mei" not in r.text for r in refused)
    assert (await client.get("/v1/orders", headers=MARKETPLACE)).json()["items"] == []
    mine = (await client.get(url, headers=GATEWAY)).json()
    assert mine["status"] == "submitted" and mine["shipping_address"]["line1"] == "1 Century Ave", (
        "nothing changed"
    )
    assert [o["id"] for o in (await client.get("/v1/orders", headers=GATEWAY)).json()["items"]] == [
        order["id"]
    ]
    assert (await client.get(url, headers=OPS)).status_code == 200
    assert [o["id"] for o in (await client.get("/v1/orders", headers=ADMIN)).json()["items"]] == [order["id"]]


async def test_idempotency_keys_are_per_caller(client):
    first = (await post(client, key="same")).json()
    again = (await post(client, key="same")).json()
    other = await post(client, key="same", headers=MARKETPLACE)
    assert first["id"] == again["id"]
    assert other.status_code == 202 and other.json()["id"] != first["id"], (
        "another gateway's key is another order"
    )


async def test_every_change_records_who_made_it(client, sessions, settings):
    order = (await post(client)).json()
    assert [(h["status"], h["actor"]) for h in order["history"]] == [("submitted", "dev-gateway")]
    url = f"/v1/orders/{order['id']}"
    address = {**BODY["shipping_address"], "line1": "88 Nanjing Rd"}
    assert (await client.patch(f"{url}/shipping-address", json=address, headers=GATEWAY)).status_code == 202
    r = await client.post(f"{url}/cancel", json={"reason": "ordered twice"}, headers=GATEWAY)
    history = [(h["status"], h["reason"], h["actor"], h["note"]) for h in r.json()["history"]]
    assert history == [
        ("submitted", None, "dev-gateway", None),
        ("submitted", "address_changed", "dev-gateway", None),
        ("cancelled", "customer_request", "dev-gateway", "ordered twice"),
    ]


async def test_the_service_functions_take_the_actor_and_scope_to_a_gateway(sessions, settings):
    """What the ops console calls: the same functions, with its signed-in key's name."""
    request = PlaceOrder.model_validate(BODY)
    placed = await service.place_order(
        sessions, request, key="amqp:1", actor="gateway/web", settings=settings
    )
    assert (
        await service.cancel(
            sessions, placed.order_id, actor="dev-marketplace", gateway="dev-marketplace", settings=settings
        )
        is None
    )
    cancelled = await service.cancel(
        sessions, placed.order_id, actor="dev-admin", note="fraud", settings=settings
    )
    assert cancelled.status == "cancelled" and cancelled.gateway == "gateway/web"
