"""Payment rules: pure, no I/O.

A payment is captured at most once per order, and refunds never exceed what was captured. The
sandbox provider's behaviour per token is the contract's (CONTRACT §7) and lives in provider.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from events.types import PaymentStatus


class RefundRefused(Exception):
    """A refund that would take back more than was captured, or from no capture at all."""


@dataclass(frozen=True)
class RefundDecision:
    amount: Decimal
    refunded_total: Decimal
    status: PaymentStatus


def decide_refund(*, captured: Decimal, refunded: Decimal, requested: Decimal | None) -> RefundDecision:
    """How much to refund now. ``requested`` None means everything not yet refunded."""
    remaining = captured - refunded
    amount = remaining if requested is None else requested
    if amount <= 0:
        raise RefundRefused(f"nothing to refund (captured {captured}, refunded {refunded})")
    if amount > remaining:
        raise RefundRefused(f"refund {amount} exceeds the {remaining} still refundable")
    total = refunded + amount
    return RefundDecision(amount=amount, refunded_total=total, status=status_after_refunds(captured, total))


def status_after_refunds(captured: Decimal, refunded: Decimal) -> PaymentStatus:
    return PaymentStatus.REFUNDED if refunded == captured else PaymentStatus.PARTIALLY_REFUNDED


def mask_token(token: str) -> str:
    """What of a payment token may be stored or logged: its kind, never the secret part."""
    return token.split("_", 1)[0] + "_***" if "_" in token else "***"
