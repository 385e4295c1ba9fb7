"""Order rules that are not the saga's: pure, no I/O."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from decimal import Decimal
from typing import Any

from events.envelope import ErrorItem
from events.orders import PlaceOrder
from events.types import LineItem, money_places, places

CENT = Decimal("0.01")


def order_total(order: PlaceOrder) -> Decimal:
    return sum((line.unit_price * line.quantity for line in order.items), Decimal("0")).quantize(CENT)


def business_errors(order: PlaceOrder, *, max_quantity_per_line: int) -> list[ErrorItem]:
    """What the schema cannot say: limits that are configuration, and prices in the currency's
    minor units (ISO 4217: no decimals for JPY, two for CNY)."""
    errors = [
        ErrorItem(
            field=f"items.{i}.quantity",
            message=f"at most {max_quantity_per_line} of one SKU per order",
            type="less_than_equal",
        )
        for i, line in enumerate(order.items)
        if line.quantity > max_quantity_per_line
    ]
    allowed = money_places(order.currency)
    if allowed is None:
        errors.append(
            ErrorItem(
                field="currency", message=f"{order.currency} is not a currency accepted here", type="currency"
            )
        )
        return errors
    errors += [
        ErrorItem(
            field=f"items.{i}.unit_price",
            message=f"{order.currency} amounts have at most {allowed} decimals",
            type="decimal_places",
        )
        for i, line in enumerate(order.items)
        if places(line.unit_price) > allowed
    ]
    return errors


def request_fingerprint(order: PlaceOrder) -> str:
    """Two requests with the same Idempotency-Key must carry the same order: compare this."""
    canonical = json.dumps(order.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ReturnRefused(ValueError):
    pass


def return_value(lines: list[dict[str, Any]], wanted: list[LineItem]) -> Decimal:
    """What the returned items are worth at the prices paid; refuses what was not bought."""
    bought = {line["sku"]: line for line in lines}
    asked: Counter[str] = Counter()
    for item in wanted:
        asked[item.sku] += item.quantity
    total = Decimal("0")
    for sku, quantity in asked.items():
        line = bought.get(sku)
        if line is None:
            raise ReturnRefused(f"{sku} is not on this order")
        if quantity > line["quantity"]:
            raise ReturnRefused(f"only {line['quantity']} of {sku} were bought")
        total += Decimal(line["unit_price"]) * quantity
    return total.quantize(CENT)


def payment_status(*, captured: Decimal, refunded: Decimal, failed: bool) -> str:
    """CONTRACT §4's payment.status from what payments told us."""
    if captured > 0:
        if refunded >= captured:
            return "refunded"
        return "partially_refunded" if refunded > 0 else "captured"
    return "failed" if failed else "pending"
