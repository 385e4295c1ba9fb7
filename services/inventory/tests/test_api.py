"""The HTTP API of CONTRACT §7 over a temporary SQLite database with the demo data, and the stock
turnover report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from chassis.db import outbox_message
from events.envelope import Envelope, build
from events.inventory import ReserveStock
from events.types import LineItem
from inventory.db import Stock, StockMovement
from inventory.handlers import handle_reserve_stock

ADMIN = {"Authorization": "Bearer dev-admin-key"}
OPS = {"Authorization": "Bearer dev-ops-key"}
GATEWAY = {"Authorization": "Bearer dev-gateway-key"}
PROBLEM = "application/problem+json"


async def reserve(sessions, order_id: str, sku: str, quantity: int) -> None:
    cmd = ReserveStock(
        order_id=order_id,
        items=[LineItem(sku=sku, quantity=quantity)],
        country="CN",
        latitude=31.2,
        longitude=121.5,
    )
    await handle_reserve_stock(
        Envelope[ReserveStock].model_validate(build(cmd, service="orders", subject=order_id)), sessions
    )


async def staged(sessions, key: str) -> list[dict]:
    async with sessions() as session:
        rows = (
            await session.execute(select(outbox_message).where(outbox_message.c.routing_key == key))
        ).mappings()
        return [json.loads(r["body"]) for r in rows]


def fields(response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return sorted(e["field"] for e in response.json()["errors"])


async def test_stock_level_as_the_contract_shows_it(client, sessions):
    r = await client.get("/v1/stock/SKU-LIMITED", headers=GATEWAY)
    assert r.json() == {
        "sku": "SKU-LIMITED",
        "on_hand": 3,
        "reserved": 0,
        "available": 3,
        "warehouses": [{"warehouse": "SH", "on_hand": 3, "reserved": 0, "available": 3}],
    }
    await reserve(sessions, "o1", "SKU-RED-MUG", 2)
    mugs = (await client.get("/v1/stock/SKU-RED-MUG", headers=OPS)).json()
    assert (mugs["on_hand"], mugs["reserved"], mugs["available"]) == (1400, 2, 1398)
    assert {w["warehouse"]: w["available"] for w in mugs["warehouses"]} == {
        "BJ": 500,
        "FRA": 200,
        "NYC": 200,
        "SH": 498,
    }


async def test_an_unknown_sku_is_404_as_a_problem(client):
    r = await client.get("/v1/stock/SKU-NOPE", headers=OPS)
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["type"].endswith("/not-found") and "SKU-NOPE" in r.json()["detail"]


async def test_a_receipt_puts_units_on_the_shelf_and_tells_it(client, sessions):
    r = await client.post(
        "/v1/stock/receipts", json={"warehouse": "SH", "sku": "SKU-NEW", "quantity": 7}, headers=ADMIN
    )
    assert r.status_code == 201
    assert r.json() == {"sku": "SKU-NEW", "warehouse": "SH", "on_hand": 7, "reserved": 0, "available": 7}
    r = await client.post(
        "/v1/stock/receipts", json={"warehouse": "SH", "sku": "SKU-NEW", "quantity": 3}, headers=ADMIN
    )
    assert r.json()["on_hand"] == 10
    told = [e["data"] for e in await staged(sessions, "stock.restocked")]
    assert told == [
        {"order_id": None, "warehouse": "SH", "sku": "SKU-NEW", "quantity": 7},
        {"order_id": None, "warehouse": "SH", "sku": "SKU-NEW", "quantity": 3},
    ]


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        ({"warehouse": "XX", "sku": "SKU-NEW", "quantity": 7}, ["warehouse"]),
        ({"warehouse": "SH", "sku": "SKU-NEW", "quantity": 0}, ["quantity"]),
        ({"warehouse": "SH", "sku": "bad sku!", "quantity": -1}, ["quantity", "sku"]),
        ({"warehouse": "SH", "quantity": 1}, ["sku"]),
        ({"warehouse": "SH", "sku": "SKU-NEW", "quantity": 1, "on_hand": 5}, ["on_hand"]),
    ],
)
async def test_a_wrong_receipt_is_422_naming_the_fields_and_changes_nothing(client, sessions, body, wrong):
    assert fields(await client.post("/v1/stock/receipts", json=body, headers=ADMIN)) == wrong
    assert (await client.get("/v1/stock/SKU-NEW", headers=OPS)).status_code == 404
    assert await staged(sessions, "stock.restocked") == []


async def test_an_adjustment_sets_the_count_but_never_below_what_is_reserved(client, sessions):
    await reserve(sessions, "o1", "SKU-LIMITED", 2)
    r = await client.post(
        "/v1/stock/adjustments",
        headers=ADMIN,
        json={"warehouse": "SH", "sku": "SKU-LIMITED", "on_hand": 1, "reason": "broken"},
    )
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
    assert "2 units" in r.json()["detail"]
    r = await client.post(
        "/v1/stock/adjustments",
        headers=ADMIN,
        json={"warehouse": "SH", "sku": "SKU-LIMITED", "on_hand": 2, "reason": "one broken"},
    )
    assert r.status_code == 200
    assert r.json() == {"sku": "SKU-LIMITED", "warehouse": "SH", "on_hand": 2, "reserved": 2, "available": 0}
    async with sessions() as session:
        moves = (
            await session.execute(
                select(StockMovement.kind, StockMovement.actor)
                .where(StockMovement.sku == "SKU-LIMITED")
                .order_by(StockMovement.id)
            )
        ).all()
    assert moves[-2:] == [("reservation", "oms/orders"), ("adjustment", "dev-admin")], "who moved the stock"


async def test_an_adjustment_of_a_sku_new_to_the_warehouse_counts_it(client):
    r = await client.post(
        "/v1/stock/adjustments",
        headers=ADMIN,
        json={"warehouse": "FRA", "sku": "SKU-LIMITED", "on_hand": 4, "reason": "found in a corner"},
    )
    assert r.status_code == 200
    level = (await client.get("/v1/stock/SKU-LIMITED", headers=OPS)).json()
    assert (level["on_hand"], [w["warehouse"] for w in level["warehouses"]]) == (7, ["FRA", "SH"])


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        ({"warehouse": "NOPE", "sku": "SKU-LIMITED", "on_hand": 1, "reason": "count"}, ["warehouse"]),
        ({"warehouse": "SH", "sku": "SKU-LIMITED", "on_hand": -1, "reason": "count"}, ["on_hand"]),
        ({"warehouse": "SH", "sku": "SKU-LIMITED", "on_hand": 1}, ["reason"]),
        (
            {"warehouse": "SH", "sku": "SKU-LIMITED", "quantity": 1, "reason": "count"},
            ["on_hand", "quantity"],
        ),
    ],
)
async def test_a_wrong_adjustment_is_422_naming_the_fields(client, body, wrong):
    assert fields(await client.post("/v1/stock/adjustments", json=body, headers=ADMIN)) == wrong
    assert (await client.get("/v1/stock/SKU-LIMITED", headers=OPS)).json()["on_hand"] == 3


async def test_warehouses_are_created_and_updated(client):
    body = {"name": "Guangzhou", "country": "CN", "latitude": 23.1, "longitude": 113.3}
    r = await client.put("/v1/warehouses/CAN", json=body, headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"code": "CAN", **body}
    r = await client.put("/v1/warehouses/CAN", json={**body, "name": "Guangzhou South"}, headers=ADMIN)
    assert r.status_code == 200
    listed = {w["code"]: w for w in (await client.get("/v1/warehouses", headers=OPS)).json()["items"]}
    assert sorted(listed) == ["BJ", "CAN", "FRA", "NYC", "SH"]
    assert listed["CAN"]["name"] == "Guangzhou South"
    r = await client.post(
        "/v1/stock/receipts", json={"warehouse": "CAN", "sku": "SKU-NEW", "quantity": 1}, headers=ADMIN
    )
    assert r.status_code == 201


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        ({"name": "X", "country": "china"}, ["country"]),
        ({"country": "CN", "latitude": 91}, ["latitude", "name"]),
        ({"name": "X", "country": "CN", "longitude": "east"}, ["longitude"]),
    ],
)
async def test_a_wrong_warehouse_is_422_naming_the_fields(client, body, wrong):
    assert fields(await client.put("/v1/warehouses/CAN", json=body, headers=ADMIN)) == wrong


async def test_a_warehouse_code_must_be_short_and_plain(client):
    body = {"name": "X", "country": "CN"}
    assert fields(await client.put(f"/v1/warehouses/{'W' * 21}", json=body, headers=ADMIN)) == ["code"]


async def test_low_stock_lists_rows_at_or_below_their_threshold_with_a_reorder_suggestion(client, sessions):
    assert (await client.get("/v1/stock/low", headers=OPS)).json()["items"] == []
    r = await client.put(
        "/v1/stock/SKU-LIMITED/threshold",
        json={"warehouse": "SH", "threshold": 3, "reorder_quantity": 4},
        headers=ADMIN,
    )
    assert r.status_code == 200 and r.json()["threshold"] == 3
    low = (await client.get("/v1/stock/low", headers=OPS)).json()["items"]
    assert low == [
        {
            "sku": "SKU-LIMITED",
            "warehouse": "SH",
            "on_hand": 3,
            "reserved": 0,
            "available": 3,
            "threshold": 3,
            "reorder_quantity": 4,
        }
    ]
    [alert] = [e["data"] for e in await staged(sessions, "stock.low")]
    assert alert == {
        "warehouse": "SH",
        "sku": "SKU-LIMITED",
        "available": 3,
        "threshold": 3,
        "reorder_quantity": 4,
    }
    await reserve(sessions, "o1", "SKU-LIMITED", 3)
    [row] = (await client.get("/v1/stock/low", headers=OPS)).json()["items"]
    assert (row["available"], row["reorder_quantity"]) == (0, 6)  # enough to reach twice the threshold
    assert len(await staged(sessions, "stock.low")) == 1  # still the same crossing
    missing = await client.put(
        "/v1/stock/SKU-LIMITED/threshold", json={"warehouse": "NYC", "threshold": 1}, headers=ADMIN
    )
    assert missing.status_code == 404


async def test_reservations_are_listed_for_the_audit(client, sessions):
    await reserve(sessions, "o1", "SKU-RED-MUG", 2)
    page = (await client.get("/v1/reservations", params={"status": "reserved"}, headers=OPS)).json()
    assert page["items"] == [
        {"order_id": "o1", "warehouse": "SH", "sku": "SKU-RED-MUG", "quantity": 2, "status": "reserved"}
    ]
    assert page["next"] is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/warehouses/CAN", {"name": "X", "country": "CN"}),
        ("POST", "/v1/stock/receipts", {"warehouse": "SH", "sku": "SKU-NEW", "quantity": 1}),
        (
            "POST",
            "/v1/stock/adjustments",
            {"warehouse": "SH", "sku": "SKU-LIMITED", "on_hand": 9, "reason": "x"},
        ),
        ("PUT", "/v1/stock/SKU-LIMITED/threshold", {"warehouse": "SH", "threshold": 1}),
    ],
)
async def test_changes_need_the_admin_key(client, method, path, body):
    for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 401), (OPS, 403), (GATEWAY, 403)):
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status_code == status, (headers, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)
    assert (await client.get("/v1/stock/SKU-LIMITED", headers=OPS)).json()["on_hand"] == 3


async def test_reading_needs_a_key_with_the_role(client):
    assert (await client.get("/v1/stock/SKU-LIMITED")).status_code == 401
    assert (await client.get("/v1/stock/SKU-LIMITED", headers=GATEWAY)).status_code == 200
    assert (await client.get("/v1/stock/SKU-LIMITED", headers=ADMIN)).status_code == 200
    for path in ("/v1/warehouses", "/v1/stock/low", "/v1/reservations"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=GATEWAY)).status_code == 403
        assert (await client.get(path, headers=OPS)).status_code == 200


async def test_the_stock_report_gives_turnover_and_cover_from_the_movements(client, sessions):
    now = datetime.now(UTC)

    def days_ago(n: float) -> datetime:
        return now - timedelta(days=n)

    async with sessions.begin() as session:
        session.add(
            Stock(
                warehouse="SH",
                sku="SKU-TURN",
                on_hand=60,
                reserved=10,
                low_stock_threshold=5,
                reorder_quantity=20,
                low_alerted=False,
            )
        )
        session.add_all(
            StockMovement(warehouse="SH", sku="SKU-TURN", kind=kind, quantity=q, at=days_ago(ago))
            for kind, q, ago in [
                ("receipt", 100, 20),
                ("commit", -20, 10),
                ("commit", -20, 5),
                ("adjustment", -5, 3),
                ("restock", 5, 2),
                ("reservation", 10, 1),
            ]
        )
    period = {"from": days_ago(15).isoformat(), "to": days_ago(4).isoformat()}
    r = await client.get("/v1/reports/stock", params=period, headers=OPS)
    assert r.status_code == 200, r.text
    [item] = [i for i in r.json()["items"] if i["sku"] == "SKU-TURN"]
    # On the shelf: 100 when the period opened, 60 when it closed (the count and the return after it
    # cancel out); 40 shipped in it, 80 on hand on average; 50 available now at 40 in 11 days.
    assert {k: item[k] for k in ("opening", "closing", "shipped", "received", "returned", "counted")} == {
        "opening": 100,
        "closing": 60,
        "shipped": 40,
        "received": 0,
        "returned": 0,
        "counted": 0,
    }
    assert item["turnover"] == 0.5 and item["days_of_cover"] == pytest.approx(
        50 / (40 / 11), abs=0.06
    )  # rounded to a tenth

    whole = (await client.get("/v1/reports/stock", headers=OPS)).json()  # the last 30 days
    [item] = [i for i in whole["items"] if i["sku"] == "SKU-TURN"]
    assert (
        item["opening"],
        item["closing"],
        item["shipped"],
        item["received"],
        item["returned"],
        item["counted"],
    ) == (0, 60, 40, 100, 5, -5)


async def test_the_stock_report_refuses_a_period_that_ends_before_it_begins(client):
    now = datetime.now(UTC)
    r = await client.get(
        "/v1/reports/stock",
        params={"from": now.isoformat(), "to": (now - timedelta(days=1)).isoformat()},
        headers=OPS,
    )
    assert fields(r) == ["from"]
    assert (await client.get("/v1/reports/stock", headers=GATEWAY)).status_code == 403
