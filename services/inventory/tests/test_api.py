from __future__ import annotations

ADMIN = {"Authorization": "Bearer dev-admin-key"}
OPS = {"Authorization": "Bearer dev-ops-key"}
GATEWAY = {"Authorization": "Bearer dev-gateway-key"}


async def test_stock_level_as_the_contract_shows_it(client):
    r = await client.get("/v1/stock/SKU-LIMITED", headers=GATEWAY)
    assert r.json() == {"sku": "SKU-LIMITED", "on_hand": 3, "reserved": 0, "available": 3,
                        "warehouses": [{"warehouse": "SH", "on_hand": 3, "reserved": 0, "available": 3}]}
    assert (await client.get("/v1/stock/NOPE", headers=OPS)).status_code == 404


async def test_receipts_and_adjustments(client):
    r = await client.post("/v1/stock/receipts", json={"warehouse": "SH", "sku": "SKU-NEW", "quantity": 7}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["available"] == 7
    bad = await client.post("/v1/stock/receipts", json={"warehouse": "XX", "sku": "SKU-NEW", "quantity": 7}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "warehouse"
    zero = await client.post("/v1/stock/receipts", json={"warehouse": "SH", "sku": "SKU-NEW", "quantity": 0}, headers=ADMIN)
    assert zero.status_code == 422 and zero.json()["errors"][0]["field"] == "quantity"
    r = await client.post("/v1/stock/adjustments", json={"warehouse": "SH", "sku": "SKU-NEW", "on_hand": 4, "reason": "count"},
                          headers=ADMIN)
    assert r.json()["on_hand"] == 4
    assert (await client.post("/v1/stock/receipts", json={"warehouse": "SH", "sku": "S", "quantity": 1}, headers=OPS)).status_code == 403
    assert (await client.post("/v1/stock/receipts", json={"warehouse": "SH", "sku": "S", "quantity": 1})).status_code == 401


async def test_warehouses_low_stock_and_reservations(client):
    r = await client.put("/v1/warehouses/CAN", json={"name": "Guangzhou", "country": "CN", "latitude": 23.1, "longitude": 113.3},
                         headers=ADMIN)
    assert r.status_code == 200
    codes = [w["code"] for w in (await client.get("/v1/warehouses", headers=OPS)).json()["items"]]
    assert "CAN" in codes
    await client.put("/v1/stock/SKU-LIMITED/threshold", json={"warehouse": "SH", "threshold": 3}, headers=ADMIN)
    low = (await client.get("/v1/stock/low", headers=OPS)).json()["items"]
    assert [(i["sku"], i["available"]) for i in low] == [("SKU-LIMITED", 3)]
    page = (await client.get("/v1/reservations", params={"status": "reserved"}, headers=OPS)).json()
    assert page["items"] == [] and page["next"] is None
