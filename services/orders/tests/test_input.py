"""CONTRACT §3/§4 input rules at the orders API: money only as decimal strings in the currency's
minor units, a bounded body, and the typed request in the API document."""

from __future__ import annotations

import pytest
from orders_support import GATEWAY, body, outbox

from orders.app import create_app


async def post(client, payload, key="k-1"):
    return await client.post("/v1/orders", json=payload, headers={**GATEWAY, "Idempotency-Key": key})


def priced(price, currency="CNY"):
    return body(items=[{"sku": "SKU-RED-MUG", "quantity": 2, "unit_price": price}], currency=currency)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (priced(39.9), "items.0.unit_price"),  # a JSON number
        (priced(40), "items.0.unit_price"),
        (priced("1e3"), "items.0.unit_price"),
        (priced("NaN"), "items.0.unit_price"),
        (priced("-1.00"), "items.0.unit_price"),
        (priced("39.999"), "items.0.unit_price"),
        (priced("1500.5", "JPY"), "items.0.unit_price"),  # yen have no decimals
        (priced("1.00", "XYZ"), "currency"),
    ],
)
async def test_money_that_is_not_a_decimal_string_in_minor_units_is_422(client, sessions, payload, field):
    r = await post(client, payload)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]
    assert await outbox(sessions) == []


async def test_amounts_are_shown_in_the_currencys_minor_units(client):
    yen = (await post(client, priced("1500", "JPY"), key="yen")).json()
    assert (yen["total"], yen["items"][0]["unit_price"], yen["payment"]["amount"]) == ("3000", "1500", "3000")
    dinar = (await post(client, priced("1.25", "KWD"), key="kwd")).json()
    assert dinar["total"] == "2.50"


async def test_a_body_over_a_mebibyte_is_413(client, sessions):
    huge = body()
    huge["customer"]["name"] = "x" * (1024 * 1024)
    r = await post(client, huge)
    assert r.status_code == 413 and r.json()["type"].endswith("/body-too-large")
    assert await outbox(sessions) == []


def test_the_api_document_types_the_order_body_and_money_as_strings():
    document = create_app().openapi()
    request = document["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request == {"$ref": "#/components/schemas/PlaceOrder"}
    line = document["components"]["schemas"]["OrderLine"]["properties"]["unit_price"]
    assert line["type"] == "string" and "pattern" in line
