"""Fulfilment as it happens (CONTRACT §4, §7), across the real services on a real broker: an order
split over two warehouses ships two parcels, each followed on its own; a parcel that comes back
undelivered is refunded and restocked; a lost one is sent again from stock, or refunded without;
carriers' scans are believed only when signed."""

from __future__ import annotations

import json
import time

import pytest
from integration.helpers import (
    OPS,
    carrier_event,
    carrier_signature,
    eventually,
    get_order,
    new_sku,
    order_body,
    payment,
    place,
    receive,
    stock,
    wait_settled,
    wait_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("manual_carrier")]


def _items(sku: str, quantity: int, price: str = "10.00") -> list[dict]:
    return [{"sku": sku, "quantity": quantity, "unit_price": price}]


async def _both_booked(orders, order_id: str) -> dict:
    return await eventually(
        lambda: get_order(orders, order_id),
        lambda o: o["status"] == "picking" and len(o["shipments"]) == 2,
        what="two parcels booked",
    )


async def test_an_order_split_over_two_warehouses_ships_two_parcels_and_is_delivered_when_both_are(
    orders, inventory, shipping
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 1)  # neither warehouse can serve both units
    await receive(inventory, "BJ", sku, 1)
    created = await place(orders, order_body(items=_items(sku, 2)))
    order = await _both_booked(orders, created["id"])
    parcels = order["shipments"]
    assert {p["warehouse"] for p in parcels} == {"SH", "BJ"}
    assert len({p["tracking_number"] for p in parcels}) == 2
    assert all(p["items"] == [{"sku": sku, "quantity": 1}] and p["status"] == "created" for p in parcels)

    first, second = parcels
    await carrier_event(shipping, order, "picked_up", parcel=first)
    await eventually(
        lambda: get_order(orders, created["id"]),
        lambda o: [p["status"] for p in o["shipments"]] == ["picked_up", "created"],
        what="the first scan",
    )
    assert (await get_order(orders, created["id"]))["status"] == "picking", (
        "shipped only once every parcel is"
    )
    await carrier_event(shipping, order, "picked_up", parcel=second)
    await wait_status(orders, created["id"], "shipped")
    await carrier_event(shipping, order, "delivered", parcel=first)
    await eventually(
        lambda: get_order(orders, created["id"]),
        lambda o: o["shipments"][0]["status"] == "delivered",
        what="the first parcel delivered",
    )
    assert (await get_order(orders, created["id"]))["status"] == "shipped"
    await carrier_event(shipping, order, "delivered", parcel=second)
    done = await wait_status(orders, created["id"], "delivered")
    assert [e["status"] for e in done["shipments"][0]["events"]] == ["created", "picked_up", "delivered"]
    trail = (await shipping.get(f"/v1/shipments/{first['shipment_id']}", headers=OPS)).json()
    assert [e["status"] for e in trail["events"]] == ["created", "picked_up", "delivered"]
    await eventually(
        lambda: stock(inventory, sku),
        lambda s: (s["on_hand"], s["reserved"]) == (0, 0),
        what="both warehouses' units off the shelf",
    )


async def test_a_parcel_returned_before_delivery_is_refunded_restocked_and_cancels_delivery_failed(
    orders, inventory, payments, shipping
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 5)
    created = await place(orders, order_body(items=_items(sku, 2, "25.00")))
    picking = await wait_status(orders, created["id"], "picking")
    await carrier_event(shipping, picking, "picked_up")
    await wait_status(orders, created["id"], "shipped")
    await carrier_event(shipping, picking, "exception")  # a failed attempt: wait
    await eventually(
        lambda: get_order(orders, created["id"]),
        lambda o: o["shipment"]["status"] == "exception",
        what="the failed attempt shown",
    )
    assert (await get_order(orders, created["id"]))["status"] == "shipped"
    await carrier_event(shipping, picking, "returned")
    order = await wait_settled(orders, created["id"], payment="refunded")
    assert (order["status"], order["status_reason"]) == ("cancelled", "delivery_failed")
    assert (await payment(payments, created["id"]))["refunded_amount"] == "50.00"
    await eventually(
        lambda: stock(inventory, sku),
        lambda s: (s["on_hand"], s["reserved"]) == (5, 0),
        what="the returned units back on the shelf",
    )


async def test_a_lost_parcel_is_sent_again_from_stock_and_the_order_delivered_without_a_refund(
    orders, inventory, payments, shipping
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 4)
    created = await place(orders, order_body(items=_items(sku, 2, "25.00")))
    picking = await wait_status(orders, created["id"], "picking")
    await carrier_event(shipping, picking, "picked_up")
    await wait_status(orders, created["id"], "shipped")
    await carrier_event(shipping, picking, "lost")
    order = await eventually(
        lambda: get_order(orders, created["id"]),
        lambda o: len(o["shipments"]) == 2 and o["shipments"][1]["tracking_number"],
        what="a parcel sent instead of the lost one",
    )
    lost, again = order["shipments"]
    assert lost["status"] == "lost" and again["status"] == "created"
    assert (
        again["items"] == [{"sku": sku, "quantity": 2}]
        and again["tracking_number"] != lost["tracking_number"]
    )
    assert order["status"] == "shipped"
    assert (await stock(inventory, sku))["reserved"] == 2, "the units of the parcel sent again are reserved"
    await carrier_event(shipping, order, "picked_up", parcel=again)
    await carrier_event(shipping, order, "delivered", parcel=again)
    done = await wait_status(orders, created["id"], "delivered")
    assert done["payment"]["refunded_amount"] == "0.00"
    assert (await payment(payments, created["id"]))["refunded_amount"] == "0.00"
    await eventually(
        lambda: stock(inventory, sku),
        lambda s: (s["on_hand"], s["reserved"]) == (0, 0),
        what="both parcels' units off the shelf",
    )


async def test_a_lost_parcel_without_stock_to_send_again_is_refunded(orders, inventory, payments, shipping):
    sku = new_sku()
    await receive(inventory, "SH", sku, 2)
    created = await place(orders, order_body(items=_items(sku, 2, "25.00")))
    picking = await wait_status(orders, created["id"], "picking")
    await carrier_event(shipping, picking, "picked_up")
    await wait_status(orders, created["id"], "shipped")
    await carrier_event(shipping, picking, "lost")
    order = await wait_settled(orders, created["id"], payment="refunded")
    assert (order["status"], order["status_reason"]) == ("cancelled", "delivery_failed")
    assert len(order["shipments"]) == 1, "nothing sent again"
    assert (await payment(payments, created["id"]))["refunded_amount"] == "50.00"


async def test_unsigned_wrongly_signed_and_stale_scans_are_refused_and_change_nothing(
    orders, inventory, shipping
):
    sku = new_sku()
    await receive(inventory, "SH", sku, 1)
    created = await place(orders, order_body(items=_items(sku, 1)))
    picking = await wait_status(orders, created["id"], "picking")
    parcel = picking["shipments"][0]
    body = json.dumps(
        {"tracking_number": parcel["tracking_number"], "status": "returned", "at": "2026-11-24T12:00:00Z"}
    ).encode()
    path = f"/v1/carriers/{parcel['carrier']}/events"
    for headers in (
        {},
        {"Authorization": "Bearer dev-admin-key"},
        {"X-OMS-Signature": carrier_signature(body, secret="guessed")},
        {"X-OMS-Signature": carrier_signature(body, t=int(time.time()) - 301)},
    ):
        r = await shipping.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 401, (headers, r.text)
    after = await get_order(orders, created["id"])
    assert (after["status"], after["shipments"][0]["events"]) == ("picking", parcel["events"])
    trail = (await shipping.get(f"/v1/shipments/{parcel['shipment_id']}", headers=OPS)).json()
    assert [e["status"] for e in trail["events"]] == ["created"]
