"""Value types shared by the message models."""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

# Money is a Decimal in code and a decimal string on the wire, never a float.
Money = Annotated[
    Decimal,
    Field(max_digits=14, decimal_places=2),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]

_DECIMAL_TEXT = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,3})?$")


def _decimal_text(value: Any) -> Any:
    """Money from outside (a request, a gateway's command) is a decimal string: a JSON number
    would have passed through a binary float on its way (CONTRACT §3: 422)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str) and _DECIMAL_TEXT.match(value):
        return value
    if isinstance(value, str):
        raise ValueError('not an amount: digits with an optional decimal point, such as "39.90"')
    raise ValueError('money is a decimal string such as "39.90", never a JSON number')


MoneyText = Annotated[
    Money,
    BeforeValidator(_decimal_text),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,2})?$", "examples": ["39.90"]}),
]
"""Money as callers send it: a non-negative decimal string, never a JSON number."""

# ISO 4217 minor units of the currencies accepted; an amount may have at most as many decimals
# (JPY none, KWD three). Amounts are stored to 2 places, so a 3-decimal currency is taken to 2.
CURRENCY_EXPONENT: dict[str, int] = {
    **dict.fromkeys(
        "AED AUD BRL CAD CHF CNY CZK DKK EGP EUR GBP HKD ILS INR MAD MXN MYR NOK NZD PHP PLN QAR RON SAR SEK "
        "SGD THB TRY TWD USD ZAR".split(),
        2,
    ),
    **dict.fromkeys("CLP ISK JPY KRW UGX VND XAF XOF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
}
STORED_PLACES = 2


def money_places(currency: str) -> int | None:
    """How many decimals an amount in ``currency`` may have here (None: a currency not accepted)."""
    exponent = CURRENCY_EXPONENT.get(currency)
    return None if exponent is None else min(exponent, STORED_PLACES)


def places(amount: Decimal) -> int:
    """Decimals written in ``amount`` ("39.90": 2, "100": 0)."""
    exponent = amount.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class OrderStatus(StrEnum):
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    PAID = "paid"
    PICKING = "picking"
    SHIPPED = "shipped"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    RETURN_REQUESTED = "return_requested"
    RETURNED = "returned"


class CancelReason(StrEnum):
    OUT_OF_STOCK = "out_of_stock"
    PAYMENT_DECLINED = "payment_declined"
    PAYMENT_TIMEOUT = "payment_timeout"
    SHIPMENT_FAILED = "shipment_failed"
    CUSTOMER_REQUEST = "customer_request"
    SAGA_TIMEOUT = "saga_timeout"
    DELIVERY_FAILED = "delivery_failed"


class PaymentMethod(StrEnum):
    CARD = "card"
    ALIPAY = "alipay"
    WECHAT_PAY = "wechat_pay"
    PAYPAL = "paypal"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class Channel(StrEnum):
    WEB = "web"
    APP = "app"
    MINI_PROGRAM = "mini_program"
    SOCIAL = "social"
    MARKETPLACE = "marketplace"
    POS = "pos"


class ShipmentStatus(StrEnum):
    CREATED = "created"
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    EXCEPTION = "exception"
    RETURNED = "returned"
    LOST = "lost"
    FAILED = "failed"


class LineItem(BaseModel):
    """A SKU and how many; used where prices do not matter (reservations, returns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Sku
    quantity: int = Field(gt=0)


class PricedLine(LineItem):
    unit_price: Money


class Allocation(BaseModel):
    """Part of an order reserved at one warehouse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warehouse: str
    sku: Sku
    quantity: int = Field(gt=0)
