"""Messages of the payments service."""

from __future__ import annotations

from typing import Literal

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
    token: str | None = None  # None: a wallet the customer pays (a QR code, a redirect)
    not_after: AwareDatetime | None = None


class RefundPayment(Command):
    """Refund ``amount`` (the whole captured amount when None) of the order's payment."""

    routing_key = "payments.refund_payment"
    order_id: str
    amount: Money | None = None
    reason: str
    refund_key: str  # the same key twice is one refund


class CancelPayment(Command):
    """The order was cancelled while its customer was paying (a QR code, a redirect): close the
    payment at its provider now, so it can no longer be paid. Money that arrived first is captured
    (and the saga refunds it); otherwise the payment fails ``cancelled``."""

    routing_key = "payments.cancel_payment"
    order_id: str
    reason: str


class PaymentCaptured(Event):
    routing_key = "payment.captured"
    order_id: str
    payment_id: str
    amount: Money
    currency: CurrencyCode
    method: PaymentMethod


class PaymentActionRequired(Event):
    """The customer pays by themselves: show them ``url`` (a QR code to scan, or a page to go to)
    before ``expires_at``; the payment then arrives as ``payment.captured``, or, the window passed
    unpaid, ``payment.failed`` with ``payment_timeout``. No personal data: the link is the provider's."""

    routing_key = "payment.action_required"
    order_id: str
    payment_id: str
    method: PaymentMethod
    action_type: Literal["qr_code", "redirect"]
    url: str
    expires_at: AwareDatetime
    amount: Money
    currency: CurrencyCode


class PaymentFailed(Event):
    routing_key = "payment.failed"
    order_id: str
    reason: (
        str  # "declined", "provider_unavailable", "provider_timeout", "payment_timeout", "method_unavailable",
        # "cancelled"
    )


class PaymentRefunded(Event):
    routing_key = "payment.refunded"
    order_id: str
    payment_id: str
    refund_id: str
    refund_key: str | None = None  # the key of the RefundPayment command this answers
    amount: Money
    refunded_total: Money
    currency: CurrencyCode
