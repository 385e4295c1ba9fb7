"""Value types shared by the message models."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

# Money is a Decimal in code and a decimal string on the wire, never a float.
Money = Annotated[
    Decimal,
    Field(max_digits=14, decimal_places=2),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]
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
