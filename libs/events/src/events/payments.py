"""Messages of the payments service."""

from __future__ import annotations

from pydantic import AwareDatetime

from events.envelope import Command, Event
from events.types import CurrencyCode, Money, PaymentMethod


class CapturePayment(Command):
    """Charge the customer. Point-to-point only: the token never goes into an event or a log.

    Sent again while the saga has no answer; payments charges an order once whatever it receives.
    ``not_after`` is kept for compatibility and ignored: a late command is still taken, since the
    money may already have moved (an answer after a cancellation is refunded).
    """

    routing_key = "payments.capture_payment"
    order_id: str
    amount: Money
    currency: CurrencyCode
    method: PaymentMethod
    token: str
    not_after: AwareDatetime | None = None


class RefundPayment(Command):
    """Refund ``amount`` (the whole captured amount when None) of the order's payment."""

    routing_key = "payments.refund_payment"
    order_id: str
    amount: Money | None = None
    reason: str
    refund_key: str  # the same key twice is one refund


class PaymentCaptured(Event):
    routing_key = "payment.captured"
    order_id: str
    payment_id: str
    amount: Money
    currency: CurrencyCode
    method: PaymentMethod


class PaymentFailed(Event):
    routing_key = "payment.failed"
    order_id: str
    reason: str  # "declined", "provider_unavailable", "provider_timeout", "expired"


class PaymentRefunded(Event):
    routing_key = "payment.refunded"
    order_id: str
    payment_id: str
    refund_id: str
    refund_key: str | None = None  # the key of the RefundPayment command this answers
    amount: Money
    refunded_total: Money
    currency: CurrencyCode
