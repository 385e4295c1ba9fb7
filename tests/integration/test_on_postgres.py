"""The whole system on PostgreSQL: the five service processes, each on a database of its own on a
real PostgreSQL server (as deployed), on a virtual host of their own on the suite's broker.

The other integration tests run the services on SQLite; this one shows the same flows end to end
where the row locks and concurrent transactions are PostgreSQL's: orders that are delivered,
declined, refused by every carrier and short of stock all end in their final status, with the
stock and the money where they belong, and the reports add them up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from integration.conftest import TEST_ENV
from integration.helpers import OPS, order_body, place, stock, wait_status

from omstools.system import SERVICES, System

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(new_vhost, new_database, tmp_path_factory) -> Iterator[tuple[System, dict[str, str]]]:
    if new_vhost is None:
        pytest.skip(
            "a second system needs a broker the suite runs (a virtual host of its own): AMQP_URL is set"
        )
    with new_vhost() as amqp_url, contextlib.ExitStack() as databases:
        urls = {svc: databases.enter_context(new_database()) for svc in SERVICES}
        env = {
            **TEST_ENV,
            "SHIPPING_CARRIER_SIMULATION": "true",
            **{f"{svc.upper()}_DATABASE_URL": url for svc, url in urls.items()},
        }
        oms = System.on_free_ports(tmp_path_factory.mktemp("oms-pg"), amqp_url, env=env)
        try:
            oms.up(timeout=180)
            yield oms, urls
        finally:
            oms.stop()


async def _rows(url: str, sql: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_every_path_ends_final_with_stock_and_money_where_they_belong(system):
    oms, urls = system
    async with (
        httpx.AsyncClient(base_url=oms.url("orders"), timeout=30) as orders,
        httpx.AsyncClient(base_url=oms.url("inventory"), timeout=30) as inventory,
        httpx.AsyncClient(base_url=oms.url("payments"), timeout=30) as payments,
    ):
        before = await stock(inventory, "SKU-RED-MUG")
        bodies = {
            "delivered": [order_body() for _ in range(6)],
            "payment_declined": [order_body(token="tok_declined")],
            "shipment_failed": [order_body(country="AQ")],
            "out_of_stock": [order_body(items=[{"sku": "SKU-LIMITED", "quantity": 4, "unit_price": "9.90"}])],
        }
        placed = {
            outcome: await asyncio.gather(*(place(orders, b) for b in group))
            for outcome, group in bodies.items()
        }

        for outcome, group in placed.items():
            final = "delivered" if outcome == "delivered" else "cancelled"
            for created in group:
                order = await wait_status(orders, created["id"], final, timeout=90)
                assert order["status_reason"] == (None if final == "delivered" else outcome), order
                paid = await payments.get(f"/v1/payments/{created['id']}", headers=OPS)
                if outcome in ("delivered", "shipment_failed"):
                    money = paid.json()
                    assert money["refunded_amount"] == ("0.00" if outcome == "delivered" else money["amount"])

        after = await stock(inventory, "SKU-RED-MUG")
        assert after["reserved"] == before["reserved"], "every reservation was committed or released"
        assert after["on_hand"] == before["on_hand"] - 2 * len(placed["delivered"]), (
            "delivered units left the shelf"
        )
        assert (await stock(inventory, "SKU-LIMITED"))["reserved"] == 0

        # The reports' aggregates (window functions included) run on PostgreSQL too.
        sales = (await orders.get("/v1/reports/sales", headers=OPS)).json()
        delivered = len(placed["delivered"])
        assert (
            sales["orders"] == len(bodies["delivered"]) + 3
            and sales["orders_by_status"]["delivered"] == delivered
        )
        assert sales["best_sellers"][0] == {"sku": "SKU-RED-MUG", "quantity": 2 * delivered}
        assert {"submitted", "confirmed", "paid", "picking", "shipped", "in_transit"} <= set(
            sales["average_seconds_in_status"]
        )
        turnover = (await inventory.get("/v1/reports/stock", headers=OPS)).json()
        [mugs] = [i for i in turnover["items"] if i["sku"] == "SKU-RED-MUG"]
        assert (
            mugs["shipped"] == 2 * delivered and mugs["closing"] == after["on_hand"] and mugs["turnover"] > 0
        )

    # The orders are in PostgreSQL, not in a SQLite file beside it.
    ids = [o["id"] for group in placed.values() for o in group]
    rows = await _rows(urls["orders"], 'SELECT id, status FROM "order" WHERE id = ANY($1::text[])', ids)
    assert len(rows) == len(ids)
    # (The sandbox payment provider keeps its own books in a file: the provider's, not payments'.)
    databases = [p.name for p in oms.var_dir.glob("*.db") if p.name != "payments-provider.db"]
    assert not databases, f"a service wrote to SQLite: {databases}"
