"""Commands on SQLite: reservation, release (also before the reservation), commit, restock, alerts,
duplicates, and 25 concurrent orders for 10 units."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from events.db import outbox_message
from events.envelope import Envelope, build
from events.inventory import CommitStock, ReleaseStock, ReserveStock, RestockItems
from events.types import LineItem
from inventory.db import Stock
from inventory.handlers import handle_commit_stock, handle_release_stock, handle_reserve_stock, handle_restock
from inventory.stock import receive


def msg(model, payload):
    return Envelope[model].model_validate(build(payload, service="orders", subject=payload.order_id))


def reserve(order_id: str, sku: str = "SKU-RED-MUG", quantity: int = 2):
    return msg(ReserveStock, ReserveStock(order_id=order_id, items=[LineItem(sku=sku, quantity=quantity)],
                                          country="CN", latitude=39.9, longitude=116.4))


async def events(sessions) -> list[dict]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]


async def level(sessions, sku: str, warehouse: str) -> tuple[int, int]:
    async with sessions() as session:
        row = await session.scalar(select(Stock).where(Stock.sku == sku, Stock.warehouse == warehouse))
        return row.on_hand, row.reserved


async def test_reserve_at_the_nearest_warehouse_then_commit(sessions):
    await handle_reserve_stock(reserve("o1"), sessions)
    [reserved] = [e for e in await events(sessions) if e["key"] == "stock.reserved"]
    assert reserved["data"]["allocations"] == [{"warehouse": "BJ", "sku": "SKU-RED-MUG", "quantity": 2}]
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 2)
    await handle_commit_stock(msg(CommitStock, CommitStock(order_id="o1")), sessions)
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (498, 0)
    await handle_restock(msg(RestockItems, RestockItems(order_id="o1", items=[LineItem(sku="SKU-RED-MUG", quantity=1)])), sessions)
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (499, 0)


async def test_reserving_twice_for_an_order_reserves_once(sessions):
    first = reserve("o1")
    await handle_reserve_stock(first, sessions)
    await handle_reserve_stock(first, sessions)  # redelivered: the inbox drops it
    await handle_reserve_stock(reserve("o1"), sessions)  # resent by the saga: the same answer again
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 2)
    assert [e["key"] for e in await events(sessions)] == ["stock.reserved", "stock.reserved"]


async def test_out_of_stock_reserves_nothing(sessions):
    await handle_reserve_stock(reserve("o1", "SKU-LIMITED", 5), sessions)
    [failed] = await events(sessions)
    assert failed["key"] == "stock.reservation_failed"
    assert failed["data"]["shortages"] == [{"sku": "SKU-LIMITED", "quantity": 5, "available": 3}]
    assert await level(sessions, "SKU-LIMITED", "SH") == (3, 0)


async def test_a_release_that_overtakes_its_reservation_wins(sessions):
    await handle_release_stock(msg(ReleaseStock, ReleaseStock(order_id="o1", reason="customer_request")), sessions)
    await handle_reserve_stock(reserve("o1"), sessions)
    assert [e["key"] for e in await events(sessions)] == ["stock.released", "stock.reservation_failed"]
    assert (await events(sessions))[1]["data"]["reason"] == "released"
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 0)


async def test_release_gives_back_what_was_reserved(sessions):
    await handle_reserve_stock(reserve("o1"), sessions)
    await handle_release_stock(msg(ReleaseStock, ReleaseStock(order_id="o1", reason="payment_declined")), sessions)
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 0)
    assert (await events(sessions))[-1]["data"]["allocations"][0]["quantity"] == 2


async def test_low_stock_is_told_once_per_crossing(sessions):
    for i in range(3):  # SKU-LIMITED: 3 units, threshold 2
        await handle_reserve_stock(reserve(f"o{i}", "SKU-LIMITED", 1), sessions)
    lows = [e for e in await events(sessions) if e["key"] == "stock.low"]
    assert len(lows) == 1 and lows[0]["data"]["sku"] == "SKU-LIMITED"


async def test_25_concurrent_orders_for_10_units_never_oversell(sessions):
    async with sessions.begin() as session:
        await receive(session, "SH", "SKU-TEN", 10, threshold=0, reorder=10)
    await asyncio.gather(*(handle_reserve_stock(reserve(f"c{i}", "SKU-TEN", 1), sessions) for i in range(25)))
    outcomes = [e["key"] for e in await events(sessions) if e["key"].startswith("stock.reserv")]
    assert outcomes.count("stock.reserved") == 10 and outcomes.count("stock.reservation_failed") == 15
    assert await level(sessions, "SKU-TEN", "SH") == (10, 10)
