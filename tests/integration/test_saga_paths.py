"""Every path of the saga (CONTRACT §5, §7) across the real services on a real broker: the order,
the stock and the payment are checked afterwards, and nothing is left behind."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from integration.helpers import (
    GATEWAY,
    OPS,
    carrier_event,
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


async def _fresh_sku(inventory, quantity: int, warehouse: str = "SH") -> str:
    sku = new_sku()
    await receive(inventory, warehouse, sku, quantity)
    return sku


def _items(sku: str, quantity: int = 1, price: str = "10.00") -> list[dict]:
    return [{"sku": sku, "quantity": quantity, "unit_price": price}]


async def _untouched(inventory, sku: str, quantity: int) -> None:
    """The order is final as soon as the saga decides; the compensations it sent (release the
    stock) complete right after: wait for them, with a deadline."""
    await eventually(
        lambda: stock(inventory, sku),
        lambda level: (level["on_hand"], level["reserved"], level["available"]) == (quantity, 0, quantity),
        what=f"all {quantity} units of {sku} back and free",
    )


async def test_stock_short_cancels_out_of_stock_and_charges_nothing(orders, inventory, payments):
    sku = await _fresh_sku(inventory, 3)
    created = await place(orders, order_body(items=_items(sku, 5)))
    order = await wait_settled(orders, created["id"])
    assert (order["status"], order["status_reason"]) == ("cancelled", "out_of_stock")
    assert await payment(payments, created["id"]) is None
    await _untouched(inventory, sku, 3)


async def test_payment_declined_cancels_and_releases_stock(orders, inventory, payments):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(token="tok_declined", items=_items(sku, 2)))
    order = await wait_settled(orders, created["id"])
    assert (order["status"], order["status_reason"]) == ("cancelled", "payment_declined")
    assert order["payment"]["status"] == "failed"
    assert (await payment(payments, created["id"]))["status"] == "failed"
    await _untouched(inventory, sku, 5)


async def test_flaky_provider_is_retried_inside_payments_and_the_customer_never_sees_it(orders, inventory):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(token="tok_flaky", items=_items(sku)))
    order = await wait_status(orders, created["id"], "picking")
    assert [h["status"] for h in order["history"]] == ["submitted", "confirmed", "paid", "picking"]
    assert order["payment"]["status"] == "captured"


async def test_slow_provider_times_out_and_releases_stock(orders, inventory, payments):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(token="tok_slow", items=_items(sku, 2)))
    order = await wait_settled(orders, created["id"], timeout=45)
    assert (order["status"], order["status_reason"]) == ("cancelled", "payment_timeout")
    await _untouched(inventory, sku, 5)


async def test_a_capture_that_arrives_after_the_customer_cancelled_is_refunded(orders, inventory, payments):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(token="tok_late", items=_items(sku, 1, "12.50")))
    await wait_status(orders, created["id"], "confirmed")  # the capture is on its way to the provider
    r = await orders.post(
        f"/v1/orders/{created['id']}/cancel", json={"reason": "changed my mind"}, headers=GATEWAY
    )
    assert r.status_code == 202, r.text
    order = await wait_settled(orders, created["id"], payment="refunded", timeout=60)
    assert (order["status"], order["status_reason"]) == ("cancelled", "customer_request")
    paid = await payment(payments, created["id"])
    assert (paid["status"], paid["amount"], paid["refunded_amount"]) == ("refunded", "12.50", "12.50")
    assert len(paid["refunds"]) == 1
    await _untouched(inventory, sku, 5)


async def test_payments_down_for_a_while_cancels_nothing_the_order_is_paid_when_it_is_back(
    oms, orders, inventory, payments
):
    """Silence is not an answer: while payments is down the saga resends its capture and waits; the
    order is neither cancelled nor charged twice, and is paid once payments is back."""
    sku = await _fresh_sku(inventory, 5)
    await asyncio.to_thread(oms.stop_service, "payments")
    try:
        created = await place(orders, order_body(items=_items(sku, 1, "12.50")))
        confirmed = await wait_status(orders, created["id"], "confirmed")
        # the saga's step timeout (10 s here) passes: it resends the capture, and keeps waiting
        resent = await eventually(
            lambda: get_order(orders, created["id"]),
            lambda o: o["updated_at"] > confirmed["updated_at"] or o["status"] != "confirmed",
            timeout=45,
            what="the saga to look again at its unanswered capture",
        )
        assert resent["status"] == "confirmed", resent
    finally:
        await asyncio.to_thread(oms.start, "payments")
        await asyncio.to_thread(oms.wait_ready, ["payments"])
    order = await wait_status(orders, created["id"], "picking", timeout=45)
    assert Decimal(order["payment"]["amount"]) == Decimal("12.50")
    paid = await payment(payments, created["id"])
    assert (paid["status"], paid["refunds"]) == ("captured", [])


async def test_no_carrier_for_the_address_refunds_and_releases(orders, inventory, payments):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(country="AQ", items=_items(sku, 1, "20.00")))
    order = await wait_settled(orders, created["id"], payment="refunded")
    assert (order["status"], order["status_reason"]) == ("cancelled", "shipment_failed")
    paid = await payment(payments, created["id"])
    assert (paid["refunded_amount"], len(paid["refunds"])) == ("20.00", 1)
    await _untouched(inventory, sku, 5)


async def test_cancel_before_shipment_refunds_and_releases_and_after_shipping_is_refused(
    orders, inventory, payments, shipping
):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(items=_items(sku, 2, "15.00")))
    await wait_status(orders, created["id"], "picking")
    r = await orders.post(
        f"/v1/orders/{created['id']}/cancel", json={"reason": "changed my mind"}, headers=GATEWAY
    )
    assert r.status_code == 202, r.text
    order = await wait_settled(orders, created["id"], payment="refunded")
    assert (order["status"], order["status_reason"]) == ("cancelled", "customer_request")
    assert (await payment(payments, created["id"]))["refunded_amount"] == "30.00"
    await _untouched(inventory, sku, 5)

    shipped = await place(orders, order_body(items=_items(sku, 1)))
    picking = await wait_status(orders, shipped["id"], "picking")
    await carrier_event(shipping, picking, "picked_up")
    await wait_status(orders, shipped["id"], "shipped")
    r = await orders.post(f"/v1/orders/{shipped['id']}/cancel", json={"reason": "too late"}, headers=GATEWAY)
    assert r.status_code == 409 and "return" in r.json()["detail"]


async def test_cancel_racing_the_capture_ends_in_one_final_state_with_one_refund_at_most(
    orders, inventory, payments
):
    sku = await _fresh_sku(inventory, 20)
    created = [await place(orders, order_body(items=_items(sku, 1, "5.00"))) for _ in range(5)]
    answers = await asyncio.gather(
        *(
            orders.post(f"/v1/orders/{o['id']}/cancel", json={"reason": "race"}, headers=GATEWAY)
            for o in created
        )
    )
    assert {a.status_code for a in answers} == {202}
    for o in created:
        order = await wait_settled(orders, o["id"])
        assert (order["status"], order["status_reason"]) == ("cancelled", "customer_request")
        paid = await eventually(
            lambda oid=o["id"]: payment(payments, oid),
            lambda p: p is None or p["status"] in ("refunded", "failed"),
            what="no capture kept",
        )
        assert (
            paid is None
            or paid["status"] == "failed"
            or (len(paid["refunds"]) == 1 and paid["refunded_amount"] == paid["amount"])
        )
    await eventually(
        lambda: stock(inventory, sku), lambda s: s["reserved"] == 0, what="every reservation released"
    )


async def test_address_change_before_shipping_follows_the_shipment_then_409(orders, inventory, shipping):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(items=_items(sku)))
    picking = await wait_status(orders, created["id"], "picking")
    new_address = {**order_body()["shipping_address"], "line1": "88 Nanjing Rd"}
    r = await orders.patch(f"/v1/orders/{created['id']}/shipping-address", json=new_address, headers=GATEWAY)
    assert r.status_code in (200, 202), r.text
    assert (await get_order(orders, created["id"]))["shipping_address"]["line1"] == "88 Nanjing Rd"
    await carrier_event(shipping, picking, "picked_up")
    await wait_status(orders, created["id"], "shipped")
    r = await orders.patch(f"/v1/orders/{created['id']}/shipping-address", json=new_address, headers=GATEWAY)
    assert r.status_code == 409


async def test_return_after_delivery_restocks_and_refunds_the_returned_items(
    orders, inventory, payments, shipping
):
    sku = await _fresh_sku(inventory, 5)
    created = await place(orders, order_body(items=_items(sku, 2, "25.00")))
    picking = await wait_status(orders, created["id"], "picking")
    r = await orders.post(
        f"/v1/orders/{created['id']}/returns",
        json={"items": [{"sku": sku, "quantity": 1}], "reason": "early"},
        headers=GATEWAY,
    )
    assert r.status_code == 409, "a return before delivery is refused"
    for status in ("picked_up", "in_transit", "delivered"):
        await carrier_event(shipping, picking, status)
    await wait_status(orders, created["id"], "delivered")
    await eventually(
        lambda: stock(inventory, sku),
        lambda level: level["on_hand"] == 3,
        what="the shipped units off the shelf",
    )

    r = await orders.post(
        f"/v1/orders/{created['id']}/returns",
        json={"items": [{"sku": sku, "quantity": 1}], "reason": "too big"},
        headers=GATEWAY,
    )
    assert r.status_code == 202, r.text
    await wait_status(orders, created["id"], "return_requested")
    # The carrier scans the parcel back only after shipping was told to expect it: a scan before
    # that is ignored, as a parcel nobody announced would be.
    await eventually(
        lambda: _shipment(shipping, created["id"]),
        lambda s: s["return_expected"],
        what="shipping expecting the return",
    )
    await carrier_event(shipping, picking, "returned")
    order = await wait_settled(orders, created["id"], payment="partially_refunded")
    assert order["status"] == "returned"
    assert (await payment(payments, created["id"]))["refunded_amount"] == "25.00"
    await eventually(
        lambda: stock(inventory, sku),
        lambda level: (level["on_hand"], level["reserved"]) == (4, 0),
        what="the returned unit back on the shelf",
    )


async def _shipment(shipping, order_id: str) -> dict:
    r = await shipping.get(f"/v1/shipments/{order_id}", headers=OPS)
    assert r.status_code == 200, r.text
    return r.json()


async def test_25_concurrent_orders_for_10_units_exactly_10_go_on(orders, inventory):
    sku = await _fresh_sku(inventory, 10)
    created = await asyncio.gather(*(place(orders, order_body(items=_items(sku, 1))) for _ in range(25)))
    settled = [await wait_status(orders, o["id"], "picking", "cancelled", timeout=60) for o in created]
    going_on = [o for o in settled if o["status"] == "picking"]
    out = [o for o in settled if o["status"] == "cancelled"]
    assert len(going_on) == 10
    assert len(out) == 15 and all(o["status_reason"] == "out_of_stock" for o in out)
    level = await stock(inventory, sku)
    assert (level["on_hand"], level["reserved"], level["available"]) == (10, 10, 0)
