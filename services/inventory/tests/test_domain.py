import pytest

from events.types import LineItem
from inventory.domain import (
    Destination,
    OutOfStock,
    Warehouse,
    allocate,
    distance_km,
    nearest_first,
    reorder_suggestion,
)

SH = Warehouse("SH", "CN", 31.23, 121.47)
BJ = Warehouse("BJ", "CN", 39.90, 116.40)
FRA = Warehouse("FRA", "DE", 50.11, 8.68)
SHANGHAI = Destination("CN", 31.23, 121.50)
BEIJING = Destination("CN", 39.9, 116.4)


def test_distance_is_great_circle():
    assert 1050 < distance_km(31.23, 121.47, 39.90, 116.40) < 1100  # Shanghai–Beijing


def test_nearest_by_coordinates_else_same_country():
    assert [w.code for w in nearest_first([FRA, BJ, SH], BEIJING)] == ["BJ", "SH", "FRA"]
    assert [w.code for w in nearest_first([SH, FRA], Destination("DE"))] == ["FRA", "SH"]


def test_the_nearest_warehouse_that_can_serve_the_whole_order():
    items = [LineItem(sku="A", quantity=2), LineItem(sku="B", quantity=1)]
    available = {("SH", "A"): 5, ("SH", "B"): 0, ("BJ", "A"): 2, ("BJ", "B"): 1}
    assert {a.warehouse for a in allocate(items, [SH, BJ], available, SHANGHAI)} == {"BJ"}


def test_split_nearest_first_when_nobody_has_it_all():
    items = [LineItem(sku="A", quantity=5)]
    allocations = allocate(items, [SH, BJ, FRA], {("SH", "A"): 3, ("BJ", "A"): 1, ("FRA", "A"): 4}, SHANGHAI)
    assert [(a.warehouse, a.quantity) for a in allocations] == [("SH", 3), ("BJ", 1), ("FRA", 1)]


def test_out_of_stock_names_the_shortages_and_reserves_nothing():
    with pytest.raises(OutOfStock) as caught:
        allocate([LineItem(sku="A", quantity=5), LineItem(sku="B", quantity=1)], [SH], {("SH", "A"): 3, ("SH", "B"): 1}, SHANGHAI)
    assert [(s.sku, s.quantity, s.available) for s in caught.value.shortages] == [("A", 5, 3)]


def test_reorder_suggestion():
    assert reorder_suggestion(available=2, threshold=5, reorder_quantity=50) == 50
    assert reorder_suggestion(available=0, threshold=40, reorder_quantity=50) == 80
