"""The pure rules: which warehouse, when to split, what is short, where returns go, when stock is low."""

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.types import LineItem
from inventory.domain import (
    Destination,
    OutOfStock,
    ReturnRefused,
    Shipped,
    Warehouse,
    allocate,
    distance_km,
    is_low,
    merge_lines,
    nearest_first,
    place_returns,
    reorder_suggestion,
)

SH = Warehouse("SH", "CN", 31.23, 121.47)
BJ = Warehouse("BJ", "CN", 39.90, 116.40)
FRA = Warehouse("FRA", "DE", 50.11, 8.68)
NYC = Warehouse("NYC", "US", 40.71, -74.00)
SHANGHAI = Destination("CN", 31.23, 121.50)
BEIJING = Destination("CN", 39.9, 116.4)


def line(sku: str, quantity: int) -> LineItem:
    return LineItem(sku=sku, quantity=quantity)


def test_distance_is_great_circle():
    assert 1050 < distance_km(31.23, 121.47, 39.90, 116.40) < 1100  # Shanghai–Beijing
    assert 6150 < distance_km(40.71, -74.00, 50.11, 8.68) < 6250  # New York–Frankfurt
    assert distance_km(10, 10, 10, 10) == 0


def test_nearest_by_great_circle_distance():
    assert [w.code for w in nearest_first([FRA, NYC, BJ, SH], BEIJING)] == ["BJ", "SH", "FRA", "NYC"]
    assert [w.code for w in nearest_first([SH, BJ, FRA, NYC], Destination("US", 42.36, -71.06))][0] == "NYC"


def test_without_coordinates_the_same_country_comes_first_then_by_code():
    assert [w.code for w in nearest_first([SH, FRA, NYC], Destination("DE"))] == ["FRA", "NYC", "SH"]
    assert [w.code for w in nearest_first([SH, FRA, BJ], Destination("CN"))] == ["BJ", "SH", "FRA"]


def test_a_warehouse_without_coordinates_comes_after_those_with_them():
    nowhere = Warehouse("AAA", "CN", None, None)
    assert [w.code for w in nearest_first([nowhere, FRA, SH], SHANGHAI)] == ["SH", "FRA", "AAA"]


def test_equally_near_warehouses_are_chosen_by_code():
    twin = Warehouse("AB", "CN", 31.23, 121.47)
    assert [w.code for w in nearest_first([SH, twin], SHANGHAI)] == ["AB", "SH"]


def test_the_nearest_warehouse_that_can_serve_the_whole_order():
    items = [line("A", 2), line("B", 1)]
    available = {
        ("SH", "A"): 5,
        ("SH", "B"): 0,
        ("BJ", "A"): 2,
        ("BJ", "B"): 1,
        ("FRA", "A"): 9,
        ("FRA", "B"): 9,
    }
    allocations = allocate(items, [FRA, SH, BJ], available, SHANGHAI)
    assert [(a.warehouse, a.sku, a.quantity) for a in allocations] == [("BJ", "A", 2), ("BJ", "B", 1)]


def test_same_country_fallback_serves_from_home_when_it_can():
    available = {("FRA", "A"): 1, ("SH", "A"): 1}
    assert [a.warehouse for a in allocate([line("A", 1)], [FRA, SH], available, Destination("DE"))] == ["FRA"]
    assert [a.warehouse for a in allocate([line("A", 1)], [FRA, SH], available, Destination("CN"))] == ["SH"]


def test_split_nearest_first_when_nobody_has_it_all():
    items = [line("A", 5)]
    allocations = allocate(items, [SH, BJ, FRA], {("SH", "A"): 3, ("BJ", "A"): 1, ("FRA", "A"): 4}, SHANGHAI)
    assert [(a.warehouse, a.quantity) for a in allocations] == [("SH", 3), ("BJ", 1), ("FRA", 1)]


def test_out_of_stock_names_every_shortage():
    with pytest.raises(OutOfStock) as caught:
        allocate(
            [line("A", 5), line("B", 1), line("C", 2)],
            [SH, BJ],
            {("SH", "A"): 3, ("BJ", "A"): 1, ("SH", "B"): 1},
            SHANGHAI,
        )
    assert [(s.sku, s.quantity, s.available) for s in caught.value.shortages] == [("A", 5, 4), ("C", 2, 0)]


def test_lines_of_one_sku_are_counted_together():
    assert merge_lines([line("A", 2), line("B", 1), line("A", 3)]) == [line("A", 5), line("B", 1)]
    with pytest.raises(OutOfStock) as caught:
        allocate([line("A", 3), line("A", 3)], [SH], {("SH", "A"): 5}, SHANGHAI)
    assert [(s.quantity, s.available) for s in caught.value.shortages] == [(6, 5)]


def test_negative_availability_counts_as_none():
    allocations = allocate([line("A", 2)], [SH, BJ], {("SH", "A"): -3, ("BJ", "A"): 2}, SHANGHAI)
    assert [(a.warehouse, a.quantity) for a in allocations] == [("BJ", 2)]


WAREHOUSES = [SH, BJ, FRA, NYC]


@given(
    available=st.dictionaries(
        st.tuples(st.sampled_from([w.code for w in WAREHOUSES]), st.sampled_from(["A", "B", "C"])),
        st.integers(min_value=-2, max_value=8),
    ),
    items=st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(min_value=1, max_value=12)),
        min_size=1,
        max_size=4,
    ),
    to=st.sampled_from(
        [SHANGHAI, BEIJING, Destination("DE"), Destination("US", 40.0, -75.0), Destination("BR")]
    ),
)
def test_never_more_than_available_and_all_or_nothing(available, items, to):
    lines = [line(sku, q) for sku, q in items]
    wanted = Counter()
    for i in lines:
        wanted[i.sku] += i.quantity
    free = {k: max(0, v) for k, v in available.items()}
    try:
        allocations = allocate(lines, WAREHOUSES, available, to)
    except OutOfStock as exc:
        short = {s.sku: s.available for s in exc.shortages}
        totals = Counter()
        for (_, sku), v in free.items():
            totals[sku] += v
        assert short == {sku: totals[sku] for sku, q in wanted.items() if totals[sku] < q}
        return
    taken = Counter()
    for a in allocations:
        assert a.quantity > 0
        taken[(a.warehouse, a.sku)] += a.quantity
    assert all(q <= free.get(key, 0) for key, q in taken.items())
    got = Counter()
    for (_, sku), q in taken.items():
        got[sku] += q
    assert got == wanted
    whole = [
        w
        for w in nearest_first(WAREHOUSES, to)
        if all(free.get((w.code, s), 0) >= q for s, q in wanted.items())
    ]
    if whole:
        assert {a.warehouse for a in allocations} == {whole[0].code}


def test_returns_go_back_where_they_came_from():
    shipped = [Shipped("SH", "A", 3), Shipped("BJ", "A", 2), Shipped("BJ", "B", 1)]
    placed = place_returns([line("A", 4), line("B", 1)], shipped)
    assert [(p.warehouse, p.sku, p.quantity) for p in placed] == [
        ("SH", "A", 3),
        ("BJ", "A", 1),
        ("BJ", "B", 1),
    ]


def test_units_already_returned_are_not_returned_twice():
    shipped = [Shipped("SH", "A", 3, returned=3), Shipped("BJ", "A", 2, returned=1)]
    assert [(p.warehouse, p.quantity) for p in place_returns([line("A", 1)], shipped)] == [("BJ", 1)]
    with pytest.raises(ReturnRefused):
        place_returns([line("A", 2)], shipped)


def test_a_return_of_what_was_never_shipped_is_refused():
    with pytest.raises(ReturnRefused):
        place_returns([line("Z", 1)], [Shipped("SH", "A", 3)])


def test_low_at_or_below_the_threshold():
    assert is_low(available=5, threshold=5) and is_low(0, 0) and not is_low(6, 5)


def test_reorder_suggestion_reaches_twice_the_threshold():
    assert reorder_suggestion(available=2, threshold=5, reorder_quantity=50) == 50
    assert reorder_suggestion(available=0, threshold=40, reorder_quantity=50) == 80
