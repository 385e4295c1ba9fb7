"""Cards through the ``stripe`` SDK, end to end: a system of its own (its own virtual host) whose
card processor is the Stripe stand-in. An order with a card reaches ``delivered``; the sandbox
tokens keep their meaning (``tok_declined`` is cancelled ``payment_declined``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from integration.conftest import TEST_ENV
from integration.helpers import order_body, payment, place, wait_settled, wait_status

from omstools.system import System

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(new_vhost, tmp_path_factory) -> Iterator[System]:
    if new_vhost is None:
        pytest.skip(
            "a second system needs a broker the suite runs (a virtual host of its own): AMQP_URL is set"
        )
    with new_vhost() as amqp_url:
        oms = System.on_free_ports(
            tmp_path_factory.mktemp("oms-stripe"),
            amqp_url,
            card_processor="stripe",
            env={**TEST_ENV, "SHIPPING_CARRIER_SIMULATION": "true"},
        )
        try:
            oms.up(timeout=180)
            yield oms
        finally:
            oms.stop()


@pytest.fixture
async def clients(system) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {
            svc: await stack.enter_async_context(httpx.AsyncClient(base_url=system.url(svc), timeout=10))
            for svc in ("orders", "payments")
        }


async def test_a_card_order_is_charged_at_the_card_processor_and_delivered(system, clients):
    orders, payments = clients["orders"], clients["payments"]
    created = await place(orders, order_body(token="tok_ok"))
    order = await wait_status(orders, created["id"], "delivered", timeout=90)
    assert order["payment"]["status"] == "captured"
    paid = await payment(payments, created["id"])
    assert paid["provider"] == "stripe" and paid["provider_ref"].startswith("pi_")
    async with httpx.AsyncClient(base_url=system.standin_url("stripe")) as standin:
        books = (await standin.get("/_standin/ledger")).json()
    [intent] = [i for i in books["payment_intents"] if i["oms_key"] == f"capture:{created['id']}"]
    assert (intent["id"], intent["status"], intent["amount"]) == (paid["provider_ref"], "succeeded", 7980)

    declined = await place(orders, order_body(token="tok_declined"))
    order = await wait_settled(orders, declined["id"], timeout=60)
    assert (order["status"], order["status_reason"]) == ("cancelled", "payment_declined")
