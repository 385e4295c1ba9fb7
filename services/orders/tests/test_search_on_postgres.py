"""The console's order search on PostgreSQL with 200,000 orders: each kind of term
(order id, e-mail in any case, phone, tracking number, SKU) is found through its index, never by
reading the whole table, so the search stays as fast with a million orders."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.dialects import postgresql

from chassis.migrations import upgrade
from orders.console.queries import Search, search_query

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
ORDERS = 200_000

GENERATE = f"""
INSERT INTO "order" (id, status, customer_id, channel, currency, total, customer, shipping_address,
                     payment_method, payment_status, payment_amount, payment_failed, refunded_amount,
                     shipment, saga, created_at, updated_at, version)
SELECT 'ord_' || lpad(g::text, 8, '0'), (ARRAY['paid', 'delivered', 'cancelled', 'picking'])[1 + g % 4],
       'cust-' || g, (ARRAY['web', 'app', 'pos'])[1 + g % 3], 'CNY', 10.00,
       json_build_object('id', 'cust-' || g, 'name', 'N', 'email', 'User' || g || '@Example.com',
                         'phone', '+86138' || lpad(g::text, 8, '0'), 'locale', 'en'),
       '{{}}'::json, 'card', 'captured', 10.00, false, 0,
       CASE WHEN g % 2 = 0 THEN json_build_object('carrier', 'sf-express', 'tracking_number', 'SF' || g,
                                                  'status', 'in_transit') END,
       '{{}}'::json, now() - g * interval '10 seconds', now(), 1
FROM generate_series(1, {ORDERS}) AS g;
INSERT INTO order_parcel (tracking_number, order_id)
SELECT 'SF' || g, 'ord_' || lpad(g::text, 8, '0') FROM generate_series(2, {ORDERS}, 2) AS g;
INSERT INTO order_line (order_id, position, sku, quantity, unit_price)
SELECT 'ord_' || lpad(g::text, 8, '0'), 0, 'SKU-' || (g % 5000), 1, 10.00 FROM generate_series(1, {ORDERS}) AS g;
ANALYZE;
"""

INDEXES = {
    "order_pkey",
    "ix_order_customer_email",
    "ix_order_customer_phone",
    "order_parcel_pkey",
    "ix_order_line_sku",
}


def _nodes(plan: dict) -> list[dict]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def _plan(conn: asyncpg.Connection, search: Search) -> list[dict]:
    sql = str(
        search_query(search).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    )
    (raw,) = await conn.fetchrow(f"EXPLAIN (FORMAT JSON) {sql}")
    return _nodes(json.loads(raw)[0]["Plan"])


async def test_each_kind_of_term_is_found_through_its_index(postgres_database):
    await asyncio.to_thread(upgrade, MIGRATIONS, postgres_database)
    conn = await asyncpg.connect(postgres_database.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(GENERATE)
        for term, found in [
            ("ord_00123456", "ord_00123456"),
            ("user77@example.com", "ord_00000077"),
            ("+8613800004242", "ord_00004242"),
            ("SF199998", "ord_00199998"),
            ("SKU-4999", None),
        ]:
            nodes = await _plan(conn, Search(q=term))
            scans = {n["Node Type"] for n in nodes if "Scan" in n["Node Type"]}
            assert "Seq Scan" not in scans, (term, scans)
            assert INDEXES <= {n.get("Index Name") for n in nodes}, (
                term,
                [n.get("Index Name") for n in nodes],
            )
            sql = str(
                search_query(Search(q=term)).compile(
                    dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
                )
            )
            ids = [r["id"] for r in await conn.fetch(sql)]
            assert (found in ids) if found else len(ids) == ORDERS // 5000, (term, ids[:5])
        # No term: the newest first, read backwards along the creation index and stopped at the page.
        nodes = await _plan(conn, Search(status="cancelled", channel="web"))
        used = {n.get("Index Name") for n in nodes}
        assert used & {"ix_order_created_id", "ix_order_created_at"}, [n["Node Type"] for n in nodes]
        assert "Seq Scan" not in {n["Node Type"] for n in nodes}
    finally:
        await conn.close()
