"""The envelope: producers are strict, consumers tolerate fields added later in the version."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from events.envelope import Envelope, build
from events.inventory import StockReserved
from events.types import Allocation


def test_consumers_ignore_fields_added_later_at_any_depth():
    event = build(
        StockReserved(order_id="o1", allocations=[Allocation(warehouse="SH", sku="A", quantity=1)]),
        service="inventory",
        subject="o1",
    )
    event["data"]["added_later"] = "x"
    event["data"]["allocations"][0]["bin"] = "A-12"
    event["brand_new_extension"] = "y"
    read = Envelope[StockReserved].model_validate(event)
    assert read.data.allocations[0].warehouse == "SH"


def test_consumers_still_refuse_data_that_is_wrong():
    event = build(StockReserved(order_id="o1", allocations=[]), service="inventory", subject="o1")
    event["data"]["allocations"] = [{"warehouse": "SH", "sku": "A", "quantity": "many"}]
    with pytest.raises(ValidationError):
        Envelope[StockReserved].model_validate(event)


def test_producers_cannot_misspell_a_field():
    with pytest.raises(ValidationError):
        StockReserved(order_id="o1", allocations=[], alocations=[])


def test_the_wire_form_is_a_cloudevent_with_the_extensions():
    event = build(StockReserved(order_id="o1", allocations=[]), service="inventory", subject="o1")
    assert {
        "specversion",
        "id",
        "type",
        "source",
        "subject",
        "time",
        "datacontenttype",
        "data",
        "correlationid",
        "causationid",
        "traceparent",
    } <= set(event)
    assert event["type"] == "oms.stock.reserved.v1" and event["source"] == "oms/inventory"
