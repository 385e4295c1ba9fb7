"""Cards through the ``stripe`` SDK, end to end: the card processor of local runs and tests is the
Stripe stand-in. An order with a card reaches ``delivered``, charged there once; the sandbox tokens
keep their meaning (``tok_declined`` is cancelled ``payment_declined``)."""

from __future__ import annotations

import httpx
import pytest
from integration.helpers import new_sku, order_body, payment, place, receive, wait_settled, wait_status

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("simulated_carrier")]


async def test_a_card_order_is_charged_at_the_card_processor_and_delivered(oms, orders, inventory, payments):
    sku = new_sku()
    await receive(inventory, "SH", sku, 5)
    items = [{"sku": sku, "quantity": 2, "unit_price": "39.90"}]
    created = await place(orders, order_body(token="tok_ok", items=items))
    order = await wait_status(orders, created["id"], "delivered", timeout=90)
    assert order["payment"]["status"] == "captured"
    paid = await payment(payments, created["id"])
    assert paid["provider"] == "stripe" and paid["provider_ref"].startswith("pi_")
    async with httpx.AsyncClient(base_url=oms.standin_url("stripe")) as standin:
        books = (await standin.get("/_standin/ledger")).json()
    [intent] = [i for i in books["payment_intents"] if i["oms_key"] == f"capture:{created['id']}"]
    assert (intent["id"], intent["status"], intent["amount"]) == (paid["provider_ref"], "succeeded", 7980)

    declined = await place(orders, order_body(token="tok_declined", items=items))
    order = await wait_settled(orders, declined["id"], timeout=60)
    assert (order["status"], order["status_reason"]) == ("cancelled", "payment_declined")
