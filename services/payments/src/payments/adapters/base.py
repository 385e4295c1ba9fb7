"""The interface every payment provider's adapter offers payments, and what it answers.

Two ways to take money, as the providers work: ``charge`` captures with a token (a card, a saved
wallet agreement) and answers at once; ``start`` opens a payment the customer makes (an Alipay QR
code, a PayPal approval page) and answers with the ``Action`` the gateway shows: the money then
arrives by the provider's signed notification (``verify_notification``), or is found by ``query``
(the same idempotency key), or never, and ``close`` makes sure it never can once the payment
window has passed; a provider where the customer only approves (PayPal) is then captured by
``complete``. ``refund`` pays back all or part of a charge, once per idempotency key, and
``refund_status`` asks the provider what became of one (reconciliation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol


class Declined(Exception):
    pass


class Transient(Exception):
    """The provider could not answer now; the same call may succeed later."""


class BadSignature(Exception):
    """A notification that does not verify: answered 401, nothing changes."""


class Unsupported(Exception):
    """The provider does not take money this way (a customer-paid flow on a token-only sandbox)."""


@dataclass(frozen=True)
class Charge:
    """What the provider knows of one attempt, by its idempotency key."""

    key: str
    status: str  # captured | declined | voided | pending (the customer has not paid yet)
    reference: str | None
    amount: Decimal
    currency: str | None


@dataclass(frozen=True)
class RefundSeen:
    """What the provider knows of one refund."""

    reference: str | None
    status: str  # succeeded | pending | failed
    amount: Decimal
    currency: str | None


@dataclass(frozen=True)
class Action:
    """What the customer does to pay: scan a QR code or follow a redirect, before ``expires_at``."""

    type: str  # qr_code | redirect
    url: str
    expires_at: datetime
    reference: str | None = None  # the provider's id of the payment, where it makes its own (PayPal's order)


@dataclass(frozen=True)
class Notification:
    """A verified notification from the provider: the attempt ``key`` is now ``status``."""

    id: str  # the provider's id of the notification (a resent one has the same)
    key: str
    status: str  # captured | voided | pending | approved (the customer approved: the merchant captures)
    reference: str | None
    amount: Decimal | None


class Adapter(Protocol):
    name: str
    acknowledgement: str  # the body the provider expects in answer to a notification it may stop resending

    def trade_key(self, key: str) -> str:
        """``key`` (an order's id for the payment its customer makes, its capture key for a token)
        in the form the provider takes as its merchant order number: what its notifications name."""

    async def charge(self, *, key: str, token: str, amount: Decimal, currency: str, subject: str) -> str:
        """Capture with ``token`` (``subject``: what the customer's statement shows, where the provider
        takes one); the provider's reference. Raises Declined or Transient."""

    async def start(
        self, *, key: str, amount: Decimal, currency: str, subject: str, expires_at: datetime
    ) -> Action:
        """Open a payment the customer makes; the same key again is the same payment."""

    async def query(self, key: str, reference: str | None = None) -> Charge | None:
        """What became of the attempt ``key``; None when the provider never heard of it."""

    async def close(
        self, key: str, *, amount: Decimal, currency: str, reference: str | None = None
    ) -> Charge:
        """Make sure an attempt that was not paid never can be; returns it as it stands (a paid one
        stays paid, and the caller must honour it)."""

    async def complete(self, key: str, *, reference: str) -> Charge:
        """Capture a payment the customer approved (PayPal's capture after approval); the same key
        again is the same capture. Providers whose notification says "paid" never get here."""

    async def refund(
        self, *, payment_ref: str, amount: Decimal, idempotency_key: str, currency: str = "CNY"
    ) -> str:
        """Pay back ``amount`` of the charge; the same idempotency key again is the same refund."""

    async def refund_status(
        self, *, payment_ref: str, idempotency_key: str, reference: str | None
    ) -> RefundSeen | None:
        """What became of the refund ``idempotency_key`` of the charge ``payment_ref`` (``reference``:
        the provider's id of it, as ``refund`` answered); None when the provider has no such refund.
        Raises Transient when it cannot say now."""

    async def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify the provider's signature exactly as it documents it, then parse. Raises BadSignature."""
