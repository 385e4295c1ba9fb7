"""The sandbox payment provider of local runs and tests (CONTRACT §7).

``tok_declined`` is declined; ``tok_flaky`` fails twice with a transient error, then captures;
``tok_slow`` never answers; ``tok_late`` captures, but only after ``late_seconds``; any other
``tok_…`` captures. A real provider adapter would offer the same two calls.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal


class Declined(Exception):
    pass


class Transient(Exception):
    """The provider could not answer now; the same call may succeed later."""


@dataclass
class SandboxProvider:
    late_seconds: float = 15.0
    _flaky_calls: Counter[str] = field(default_factory=Counter)
    charges: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # order id -> (reference, amount)
    refunds: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # key -> (reference, amount)

    async def capture(self, *, order_id: str, token: str, amount: Decimal, currency: str) -> str:
        """Charge and return the provider's payment reference. The order id is the idempotency
        key: the same order again is the same charge, so a call retried after a lost answer
        charges once."""
        if order_id in self.charges:
            return self.charges[order_id][0]
        if not token.startswith("tok_"):
            raise Declined("unknown token")
        if token == "tok_declined":
            raise Declined("card declined")
        if token == "tok_flaky":
            self._flaky_calls[order_id] += 1
            if self._flaky_calls[order_id] <= 2:
                raise Transient("provider busy")
        if token == "tok_slow":
            await asyncio.Event().wait()  # never answers: the caller's timeout ends the call
        if token == "tok_late":
            await asyncio.sleep(self.late_seconds)
        self.charges[order_id] = (f"pay_{uuid.uuid4().hex[:16]}", amount)
        return self.charges[order_id][0]

    async def refund(self, *, payment_ref: str, amount: Decimal, idempotency_key: str) -> str:
        """Pay ``amount`` back; the same ``idempotency_key`` again is the same refund (as with real
        providers' idempotency keys), so a call retried after a lost answer refunds once."""
        if idempotency_key not in self.refunds:
            self.refunds[idempotency_key] = (f"re_{uuid.uuid4().hex[:16]}", amount)
        return self.refunds[idempotency_key][0]
