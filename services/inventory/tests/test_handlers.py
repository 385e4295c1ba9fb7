"""Commands on SQLite through the subscribers: reservation (nearest, split, out of stock, once per
order), release (also before the reservation), commit, restock, low-stock alerts, duplicates, and 25
concurrent orders for 10 units; a release and a commit racing for one order."""

from __future__ import annotations

import asyncio
import json

import pytest
from concurrency import Meeting
from sqlalchemy import func, select

from chassis.broker import Permanent
from chassis.db import outbox_message, processed_message
from events.envelope import Envelope, build
from events.inventory import CommitStock, ReleaseStock, ReserveStock, RestockItems
from events.types import LineItem
from inventory import service
from inventory.db import Reservation, Stock, StockMovement
from inventory.handlers import handle_commit_stock, handle_release_stock, handle_reserve_stock, handle_restock
from inventory.service import receive


def msg(model, payload):
    return Envelope[model].model_validate(build(payload, service="orders", subject=payload.order_id))


def reserve(
    order_id: str,
    sku: str = "SKU-RED-MUG",
    quantity: int = 2,
    *,
    more: tuple[tuple[str, int], ...] = (),
    country: str = "CN",
    latitude: float | None = 39.9,
    longitude: float | None = 116.4,
):
    items = [LineItem(sku=sku, quantity=quantity), *(LineItem(sku=s, quantity=q) for s, q in more)]
    return msg(
        ReserveStock,
        ReserveStock(order_id=order_id, items=items, country=country, latitude=latitude, longitude=longitude),
    )


def release(order_id: str, reason: str = "customer_request"):
    return msg(ReleaseStock, ReleaseStock(order_id=order_id, reason=reason))


def commit(order_id: str):
    return msg(CommitStock, CommitStock(order_id=order_id))


def restock(order_id: str, *lines: tuple[str, int]):
    return msg(
        RestockItems, RestockItems(order_id=order_id, items=[LineItem(sku=s, quantity=q) for s, q in lines])
    )


async def events(sessions, key: str | None = None) -> list[dict]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    found = [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]
    return [e for e in found if key is None or e["key"] == key]


async def level(sessions, sku: str, warehouse: str) -> tuple[int, int]:
    async with sessions() as session:
        row = await session.scalar(select(Stock).where(Stock.sku == sku, Stock.warehouse == warehouse))
        return row.on_hand, row.reserved


async def stocked(sessions, sku: str, **levels: int) -> None:
    async with sessions.begin() as session:
        for warehouse, quantity in levels.items():
            await receive(session, warehouse, sku, quantity, actor="dev-admin", threshold=0, reorder=10)


async def snapshot(sessions) -> tuple:
    """Everything a message could change, to show that a duplicate changed none of it."""
    async with sessions() as session:
        stock = (
            await session.execute(select(Stock.warehouse, Stock.sku, Stock.on_hand, Stock.reserved))
        ).all()
        reservations = (
            await session.execute(select(Reservation.order_id, Reservation.status, Reservation.returned))
        ).all()
        counts = [
            await session.scalar(select(func.count()).select_from(t))
            for t in (outbox_message, StockMovement.__table__)
        ]
    return sorted(stock), sorted(reservations), counts


async def test_reserve_at_the_nearest_warehouse_that_can_serve_the_whole_order(sessions):
    await handle_reserve_stock(reserve("o1", more=(("SKU-TEA-POT", 1),)), sessions)
    [reserved] = await events(sessions, "stock.reserved")
    assert reserved["data"] == {
        "order_id": "o1",
        "parcel": None,
        "allocations": [
            {"warehouse": "BJ", "sku": "SKU-RED-MUG", "quantity": 2},
            {"warehouse": "BJ", "sku": "SKU-TEA-POT", "quantity": 1},
        ],
    }
    assert (
        reserved["subject"] == "o1"
        and reserved["correlationid"] == "o1"
        and reserved["source"] == "oms/inventory"
    )
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 2)
    assert await level(sessions, "SKU-RED-MUG", "SH") == (500, 0)


async def test_without_coordinates_a_warehouse_in_the_same_country_serves(sessions):
    await handle_reserve_stock(reserve("o1", country="DE", latitude=None, longitude=None), sessions)
    [reserved] = await events(sessions, "stock.reserved")
    assert [a["warehouse"] for a in reserved["data"]["allocations"]] == ["FRA"]


async def test_an_order_no_warehouse_can_serve_whole_is_split_nearest_first(sessions):
    await stocked(sessions, "SKU-SPLIT", SH=3, BJ=3, FRA=10)
    await handle_reserve_stock(reserve("o1", "SKU-SPLIT", 5, latitude=31.2, longitude=121.5), sessions)
    [reserved] = await events(sessions, "stock.reserved")
    assert [(a["warehouse"], a["quantity"]) for a in reserved["data"]["allocations"]] == [("FRA", 5)]
    await handle_reserve_stock(reserve("o2", "SKU-SPLIT", 7, latitude=31.2, longitude=121.5), sessions)
    second = (await events(sessions, "stock.reserved"))[1]
    assert [(a["warehouse"], a["quantity"]) for a in second["data"]["allocations"]] == [
        ("SH", 3),
        ("BJ", 3),
        ("FRA", 1),
    ]
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ", "FRA")] == [(3, 3), (3, 3), (10, 6)]


async def test_out_of_stock_reserves_nothing_and_names_the_shortages(sessions):
    await handle_reserve_stock(
        reserve("o1", "SKU-RED-MUG", 2, more=(("SKU-LIMITED", 5), ("SKU-NONE", 1))), sessions
    )
    [failed] = await events(sessions)
    assert failed["key"] == "stock.reservation_failed"
    assert failed["data"] == {
        "order_id": "o1",
        "parcel": None,
        "reason": "out_of_stock",
        "shortages": [
            {"sku": "SKU-LIMITED", "quantity": 5, "available": 3},
            {"sku": "SKU-NONE", "quantity": 1, "available": 0},
        ],
    }
    assert await level(sessions, "SKU-LIMITED", "SH") == (3, 0)
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 0)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Reservation)) == 0


async def test_reserving_twice_for_an_order_reserves_once(sessions):
    first = reserve("o1")
    await handle_reserve_stock(first, sessions)
    await handle_reserve_stock(first, sessions)  # redelivered: the inbox drops it
    await handle_reserve_stock(
        reserve("o1", quantity=7), sessions
    )  # resent by the saga: the same answer again
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 2)
    answers = await events(sessions)
    assert [e["key"] for e in answers] == ["stock.reserved", "stock.reserved"]
    assert answers[0]["data"] == answers[1]["data"]


async def test_a_failed_order_is_not_reserved_later_even_when_stock_arrives(sessions):
    await handle_reserve_stock(reserve("o1", "SKU-LIMITED", 5), sessions)
    await stocked(sessions, "SKU-LIMITED", SH=10)
    await handle_reserve_stock(reserve("o1", "SKU-LIMITED", 5), sessions)  # resent after the failure
    first, again = await events(sessions, "stock.reservation_failed")
    assert again["data"] == first["data"]
    assert await level(sessions, "SKU-LIMITED", "SH") == (13, 0)


async def test_a_release_that_overtakes_its_reservation_wins(sessions):
    await handle_release_stock(release("o1"), sessions)
    await handle_reserve_stock(reserve("o1"), sessions)
    released, failed = await events(sessions)
    assert released["key"] == "stock.released" and released["data"] == {
        "order_id": "o1",
        "allocations": [],
        "parcel": None,
    }
    assert failed["key"] == "stock.reservation_failed" and failed["data"]["reason"] == "released"
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 0)


async def test_release_gives_back_what_was_reserved_once(sessions):
    await handle_reserve_stock(reserve("o1"), sessions)
    first = release("o1", "payment_declined")
    await handle_release_stock(first, sessions)
    await handle_release_stock(first, sessions)  # redelivered
    await handle_release_stock(release("o1"), sessions)  # resent: nothing left to give back
    assert await level(sessions, "SKU-RED-MUG", "BJ") == (500, 0)
    released = await events(sessions, "stock.released")
    assert [e["data"]["allocations"] for e in released] == [
        [{"warehouse": "BJ", "sku": "SKU-RED-MUG", "quantity": 2}],
        [],
    ]
    await handle_reserve_stock(reserve("o1"), sessions)
    assert (await events(sessions))[-1]["data"]["reason"] == "released"


async def test_commit_takes_the_units_off_the_shelf_once(sessions):
    await stocked(sessions, "SKU-SPLIT", SH=3, BJ=3)
    await handle_reserve_stock(reserve("o1", "SKU-SPLIT", 5, latitude=31.2, longitude=121.5), sessions)
    first = commit("o1")
    await handle_commit_stock(first, sessions)
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(0, 0), (1, 0)]
    before = await snapshot(sessions)
    await handle_commit_stock(first, sessions)  # redelivered
    assert await snapshot(sessions) == before
    await handle_commit_stock(commit("o1"), sessions)  # resent: told again, nothing taken again
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(0, 0), (1, 0)]
    committed = await events(sessions, "stock.committed")
    assert len(committed) == 2 and committed[0]["data"] == committed[1]["data"]
    assert committed[0]["data"]["allocations"] == [
        {"warehouse": "SH", "sku": "SKU-SPLIT", "quantity": 3},
        {"warehouse": "BJ", "sku": "SKU-SPLIT", "quantity": 2},
    ]
    await handle_release_stock(release("o1"), sessions)  # too late to give anything back
    assert (await events(sessions, "stock.released"))[-1]["data"]["allocations"] == []
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(0, 0), (1, 0)]


async def test_a_parcel_leaving_one_warehouse_commits_that_warehouse_only(sessions):
    await stocked(sessions, "SKU-SPLIT", SH=3, BJ=3)
    await handle_reserve_stock(reserve("o1", "SKU-SPLIT", 5, latitude=31.2, longitude=121.5), sessions)
    await handle_commit_stock(msg(CommitStock, CommitStock(order_id="o1", warehouse="SH")), sessions)
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(0, 0), (3, 2)]
    await handle_release_stock(release("o1"), sessions)  # the other parcel was cancelled: its units come back
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(0, 0), (3, 0)]


async def test_a_release_of_the_parcels_that_stayed_leaves_the_one_that_left_to_its_commit(sessions):
    """The commit of the parcel that left may arrive after the release of the others (two queues)."""
    await stocked(sessions, "SKU-SPLIT", SH=3, BJ=3)
    await handle_reserve_stock(reserve("o1", "SKU-SPLIT", 5, latitude=31.2, longitude=121.5), sessions)
    await handle_release_stock(
        msg(ReleaseStock, ReleaseStock(order_id="o1", reason="customer_request", warehouses=["BJ"])), sessions
    )
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(3, 3), (3, 0)]
    await handle_commit_stock(msg(CommitStock, CommitStock(order_id="o1", warehouse="SH")), sessions)
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(0, 0), (3, 0)]


async def test_the_units_of_a_parcel_sent_again_that_no_carrier_took_come_back_alone(sessions):
    """The first parcel's commit may still be on its way (another queue): the release of the parcel
    sent again gives back its own units only, never the ones the carrier took."""
    await stocked(sessions, "SKU-SPLIT", SH=3)
    await handle_reserve_stock(reserve("o1", "SKU-SPLIT", 2, latitude=31.2, longitude=121.5), sessions)
    again = ReserveStock(
        order_id="o1", items=[LineItem(sku="SKU-SPLIT", quantity=1)], country="CN", parcel="SH+1"
    )
    await handle_reserve_stock(msg(ReserveStock, again), sessions)
    assert await level(sessions, "SKU-SPLIT", "SH") == (3, 3)
    give_back = ReleaseStock(order_id="o1", reason="no_carrier", warehouses=["SH"], parcel="SH+1")
    await handle_release_stock(msg(ReleaseStock, give_back), sessions)
    await handle_release_stock(msg(ReleaseStock, give_back), sessions)  # asked again: answered again
    answers = [e["data"] for e in await events(sessions, "stock.released")]
    assert [a["parcel"] for a in answers] == ["SH+1", "SH+1"]
    assert answers[0]["allocations"] == [{"warehouse": "SH", "sku": "SKU-SPLIT", "quantity": 1}]
    assert answers[1]["allocations"] == [], "released once"
    assert await level(sessions, "SKU-SPLIT", "SH") == (3, 2), "the first parcel's units stay reserved"
    await handle_commit_stock(msg(CommitStock, CommitStock(order_id="o1", warehouse="SH")), sessions)
    assert await level(sessions, "SKU-SPLIT", "SH") == (1, 0), "and leave with its commit"


async def test_a_lost_parcel_is_reserved_again_once_and_committed_when_it_leaves(sessions):
    await stocked(sessions, "SKU-SPLIT", SH=3)
    await handle_reserve_stock(reserve("o1", "SKU-SPLIT", 2, latitude=31.2, longitude=121.5), sessions)
    await handle_commit_stock(commit("o1"), sessions)  # the first parcel left, then was lost
    again = ReserveStock(
        order_id="o1", items=[LineItem(sku="SKU-SPLIT", quantity=1)], country="CN", parcel="SH+1"
    )
    await handle_reserve_stock(msg(ReserveStock, again), sessions)
    await handle_reserve_stock(msg(ReserveStock, again), sessions)  # resent: answered again, reserved once
    answers = [e["data"] for e in await events(sessions, "stock.reserved")][1:]
    assert (
        answers
        == [
            {
                "order_id": "o1",
                "parcel": "SH+1",
                "allocations": [{"warehouse": "SH", "sku": "SKU-SPLIT", "quantity": 1}],
            }
        ]
        * 2
    )
    assert await level(sessions, "SKU-SPLIT", "SH") == (1, 1)
    left = CommitStock(order_id="o1", warehouse="SH", parcel="SH+1")
    await handle_commit_stock(msg(CommitStock, left), sessions)
    assert await level(sessions, "SKU-SPLIT", "SH") == (0, 0)
    short = ReserveStock(
        order_id="o1", items=[LineItem(sku="SKU-SPLIT", quantity=1)], country="CN", parcel="SH+2"
    )
    await handle_reserve_stock(msg(ReserveStock, short), sessions)
    failed = (await events(sessions, "stock.reservation_failed"))[-1]["data"]
    assert (failed["parcel"], failed["shortages"][0]["available"]) == ("SH+2", 0)


async def test_a_parcel_sent_again_from_a_warehouse_whose_own_parcel_waits_keeps_apart_from_it(sessions):
    """SH's parcel left and was lost; its replacement SH+1 is reserved at BJ, where the order's own
    BJ parcel has not left. The replacement's commit takes its own units only, and the order's
    release of BJ gives back BJ's own units only."""
    await stocked(sessions, "SKU-SPLIT", SH=3, BJ=4)
    await handle_reserve_stock(reserve("o1", "SKU-SPLIT", 5, latitude=31.2, longitude=121.5), sessions)
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(3, 3), (4, 2)]
    await handle_commit_stock(msg(CommitStock, CommitStock(order_id="o1", warehouse="SH")), sessions)
    again = ReserveStock(
        order_id="o1", items=[LineItem(sku="SKU-SPLIT", quantity=1)], country="CN", parcel="SH+1"
    )
    await handle_reserve_stock(msg(ReserveStock, again), sessions)
    assert await level(sessions, "SKU-SPLIT", "BJ") == (4, 3), "reserved at BJ, beside BJ's own 2"
    left = CommitStock(order_id="o1", warehouse="BJ", parcel="SH+1")
    await handle_commit_stock(msg(CommitStock, left), sessions)
    assert await level(sessions, "SKU-SPLIT", "BJ") == (3, 2), "only the replacement's unit left"
    stays = ReleaseStock(order_id="o1", reason="shipment_failed", warehouses=["BJ"])
    await handle_release_stock(msg(ReleaseStock, stays), sessions)
    assert await level(sessions, "SKU-SPLIT", "BJ") == (3, 0), "BJ's own units are back"


async def test_commit_for_an_order_that_holds_nothing_is_dead_lettered(sessions):
    before = await snapshot(sessions)
    with pytest.raises(Permanent):
        await handle_commit_stock(commit("never-reserved"), sessions)
    assert await snapshot(sessions) == before


async def test_returned_units_go_back_where_they_came_from(sessions):
    await stocked(sessions, "SKU-SPLIT", SH=3, BJ=3)
    await handle_reserve_stock(
        reserve("o1", "SKU-SPLIT", 5, more=(("SKU-RED-MUG", 1),), latitude=31.2, longitude=121.5), sessions
    )
    await handle_commit_stock(commit("o1"), sessions)
    assert await level(sessions, "SKU-RED-MUG", "SH") == (499, 0)

    first = restock("o1", ("SKU-SPLIT", 4))
    await handle_restock(first, sessions)
    await handle_restock(first, sessions)  # redelivered
    assert [await level(sessions, "SKU-SPLIT", w) for w in ("SH", "BJ")] == [(3, 0), (2, 0)]
    restocked = [e["data"] for e in await events(sessions, "stock.restocked") if e["data"]["order_id"]]
    assert restocked == [
        {"order_id": "o1", "warehouse": "SH", "sku": "SKU-SPLIT", "quantity": 3},
        {"order_id": "o1", "warehouse": "BJ", "sku": "SKU-SPLIT", "quantity": 1},
    ]

    await handle_restock(restock("o1", ("SKU-SPLIT", 1), ("SKU-RED-MUG", 1)), sessions)  # a second return
    assert await level(sessions, "SKU-SPLIT", "BJ") == (3, 0)
    assert await level(sessions, "SKU-RED-MUG", "SH") == (500, 0)


async def test_a_return_of_more_than_was_shipped_changes_nothing_and_is_dead_lettered(sessions):
    await handle_reserve_stock(reserve("o1"), sessions)
    await handle_commit_stock(commit("o1"), sessions)
    before = await snapshot(sessions)
    for wrong in (
        restock("o1", ("SKU-RED-MUG", 3)),
        restock("o1", ("SKU-TEA-POT", 1)),
        restock("o2", ("SKU-RED-MUG", 1)),
    ):
        with pytest.raises(Permanent):
            await handle_restock(wrong, sessions)
    assert await snapshot(sessions) == before
    async with sessions() as session:  # nothing claimed either: a fixed message may be replayed
        assert await session.scalar(select(func.count()).select_from(processed_message)) == 2


async def test_low_stock_is_told_once_per_crossing(sessions):
    for i in range(3):  # SKU-LIMITED: 3 units at SH, threshold 2
        await handle_reserve_stock(reserve(f"o{i}", "SKU-LIMITED", 1), sessions)
    [low] = await events(sessions, "stock.low")
    assert low["data"] == {
        "warehouse": "SH",
        "sku": "SKU-LIMITED",
        "available": 2,
        "threshold": 2,
        "reorder_quantity": 50,
    }
    for i in range(3):  # back above the threshold: armed again
        await handle_release_stock(release(f"o{i}"), sessions)
    await handle_reserve_stock(reserve("o9", "SKU-LIMITED", 3), sessions)
    lows = await events(sessions, "stock.low")
    assert [e["data"]["available"] for e in lows] == [2, 0]


async def test_25_concurrent_orders_for_10_units_never_oversell(any_sessions):
    sessions = any_sessions
    await stocked(sessions, "SKU-TEN", SH=10)
    outcomes = await asyncio.gather(
        *(handle_reserve_stock(reserve(f"c{i}", "SKU-TEN", 1), sessions) for i in range(25)),
        return_exceptions=True,
    )
    assert [o for o in outcomes if o is not None] == []
    answers = [e["key"] for e in await events(sessions) if e["key"].startswith("stock.reserv")]
    assert answers.count("stock.reserved") == 10 and answers.count("stock.reservation_failed") == 15
    assert await level(sessions, "SKU-TEN", "SH") == (10, 10)
    async with sessions() as session:
        held = (await session.execute(select(Reservation.order_id, Reservation.quantity))).all()
    assert len({order for order, _ in held}) == 10 and sum(q for _, q in held) == 10


async def test_a_release_and_a_commit_racing_for_one_order_take_its_units_once(any_sessions, monkeypatch):
    """Both read the order's reservations before either locks the stock: without a lock on the
    order first, PostgreSQL lets the second take the same units off again (another order's)."""
    sessions = any_sessions
    await stocked(sessions, "SKU-RACE", SH=10)
    for order in ("mine", "other"):
        await handle_reserve_stock(reserve(order, "SKU-RACE", 2, latitude=31.2, longitude=121.5), sessions)

    # Both read the order's reservations before either goes on (unless a lock keeps one from reading).
    monkeypatch.setattr(service, "_reservations", Meeting().after(service._reservations))
    outcomes = await asyncio.gather(
        handle_release_stock(release("mine"), sessions),
        handle_commit_stock(commit("mine"), sessions),
        return_exceptions=True,
    )

    assert [o for o in outcomes if o is not None and not isinstance(o, Permanent)] == []
    on_hand, reserved = await level(sessions, "SKU-RACE", "SH")
    assert reserved == 2  # the other order's units, still held
    async with sessions() as session:
        status = await session.scalar(select(Reservation.status).where(Reservation.order_id == "mine"))
    assert (status, on_hand) in {("released", 10), ("committed", 8)}
