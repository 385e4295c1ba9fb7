"""Messages of the orders service: the events it publishes and the commands it accepts."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from events.envelope import Command, ErrorItem, Event
from events.types import (
    CancelReason,
    Channel,
    CountryCode,
    CurrencyCode,
    Money,
    MoneyText,
    OrderStatus,
    PaymentMethod,
    PricedLine,
)

Text = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Customer(_Strict):
    id: Text
    name: Text
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
    phone: Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$")] | None = None
    locale: Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] = "en"


class Address(_Strict):
    name: Text
    line1: Text
    line2: Annotated[str, Field(max_length=200)] | None = None
    city: Text
    region: Annotated[str, Field(max_length=100)] | None = None
    postal_code: Annotated[str, Field(min_length=1, max_length=20)]
    country: CountryCode
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None


class PaymentDetails(_Strict):
    """A ``card`` is captured with its token; ``alipay``, ``wechat_pay`` and ``paypal`` with a token
    (a saved agreement) too, or, without one, paid by the customer (a QR code or a redirect)."""

    method: PaymentMethod
    token: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _card_needs_token(self) -> PaymentDetails:
        if self.method == PaymentMethod.CARD and self.token is None:
            raise ValueError("a card payment needs a token")
        return self


class OrderLine(PricedLine):
    unit_price: Annotated[MoneyText, Field(ge=Decimal("0"))]


class PlaceOrder(Command):
    """``orders.place_order``: the body of ``POST /v1/orders``; the CloudEvent id is the idempotency key."""

    routing_key = "orders.place_order"
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    customer: Customer
    shipping_address: Address
    items: Annotated[list[OrderLine], Field(min_length=1, max_length=100)]
    currency: CurrencyCode
    payment: PaymentDetails
    channel: Channel

    @field_validator("items")
    @classmethod
    def _one_line_per_sku(cls, items: list[OrderLine]) -> list[OrderLine]:
        skus = [i.sku for i in items]
        if len(set(skus)) != len(skus):
            raise ValueError("each SKU may appear on one line only")
        return items


class OrderPlaced(Event):
    routing_key = "order.placed"
    order_id: str
    customer_id: str
    channel: Channel
    currency: CurrencyCode
    total: Money
    items: list[PricedLine]
    country: CountryCode
    placed_at: datetime


class OrderConfirmed(Event):
    routing_key = "order.confirmed"
    order_id: str


class OrderPaid(Event):
    routing_key = "order.paid"
    order_id: str
    amount: Money
    currency: CurrencyCode


class OrderStatusChanged(Event):
    routing_key = "order.status_changed"
    order_id: str
    customer_id: str
    from_status: OrderStatus | None
    to_status: OrderStatus
    reason: str | None = None
    at: datetime


class OrderCancelled(Event):
    routing_key = "order.cancelled"
    order_id: str
    reason: CancelReason


class OrderDelivered(Event):
    routing_key = "order.delivered"
    order_id: str
    delivered_at: datetime


class OrderRejected(Event):
    """A ``place_order`` command that could not be accepted, with the fields that are wrong."""

    routing_key = "order.rejected"
    order_id: str | None = None
    command_id: str
    errors: list[ErrorItem]


class OrderNeedsAttention(Event):
    """Something the saga cannot settle by itself (a compensation that kept failing, a parcel the
    carrier took after its order was cancelled): ops must look at the order."""

    routing_key = "order.needs_attention"
    order_id: str
    step: str
    detail: str
