"""The sandbox payment provider of local runs and tests (CONTRACT §7), with a ledger of its own.

``tok_declined`` is declined; ``tok_flaky`` fails twice with a transient error, then captures;
``tok_slow`` never answers; ``tok_late`` captures, but only after ``late_seconds``; any other
``tok_…`` captures.

It works as real providers do where money is at stake: every call carries an idempotency key
(the same key again is the same charge or refund), a charge can be looked up by its key after an
answer was lost, and an attempt that never completed can be voided so that it never completes
later. Its ledger is a SQLite file of its own (not the payments database), so it survives a crash
or restart of payments, and reconciliation can compare it with what payments recorded.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from payments.adapters.base import (
    Action,
    BadSignature,
    Charge,
    Declined,
    Notification,
    RefundSeen,
    Transient,
    Unsupported,
)

__all__ = ["Charge", "Declined", "Ledger", "SandboxProvider", "Transient"]


@dataclass(frozen=True)
class LedgerRefund:
    key: str
    reference: str
    charge_reference: str
    amount: Decimal


_SCHEMA = """
CREATE TABLE IF NOT EXISTS charge (
    key TEXT PRIMARY KEY, status TEXT NOT NULL, reference TEXT, amount TEXT NOT NULL,
    currency TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refund (
    key TEXT PRIMARY KEY, reference TEXT NOT NULL, charge_reference TEXT NOT NULL,
    amount TEXT NOT NULL, at TEXT NOT NULL);
"""


class Ledger:
    """The provider's own books: one SQLite file, written before the provider answers."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def charge(self, key: str) -> Charge | None:
        row = self._db.execute(
            "SELECT key, status, reference, amount, currency FROM charge WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else Charge(row[0], row[1], row[2], Decimal(row[3]), row[4])

    def record_charge(self, key: str, status: str, amount: Decimal, currency: str) -> Charge:
        """Record the outcome of ``key`` unless one is recorded already; return what is recorded."""
        reference = f"pay_{uuid.uuid4().hex[:16]}" if status == "captured" else None
        self._db.execute(
            "INSERT OR IGNORE INTO charge (key, status, reference, amount, currency, at) VALUES (?, ?, ?, ?, ?, ?)",
            (key, status, reference, format(amount, "f"), currency, datetime.now(UTC).isoformat()),
        )
        charge = self.charge(key)
        assert charge is not None
        return charge

    def refund(self, key: str) -> LedgerRefund | None:
        row = self._db.execute(
            "SELECT key, reference, charge_reference, amount FROM refund WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else LedgerRefund(row[0], row[1], row[2], Decimal(row[3]))

    def record_refund(self, key: str, charge_reference: str, amount: Decimal) -> LedgerRefund:
        self._db.execute(
            "INSERT OR IGNORE INTO refund (key, reference, charge_reference, amount, at) VALUES (?, ?, ?, ?, ?)",
            (
                key,
                f"re_{uuid.uuid4().hex[:16]}",
                charge_reference,
                format(amount, "f"),
                datetime.now(UTC).isoformat(),
            ),
        )
        refund = self.refund(key)
        assert refund is not None
        return refund

    def charges(self) -> list[Charge]:
        rows = self._db.execute(
            "SELECT key, status, reference, amount, currency FROM charge ORDER BY key"
        ).fetchall()
        return [Charge(r[0], r[1], r[2], Decimal(r[3]), r[4]) for r in rows]

    def refunds(self) -> list[LedgerRefund]:
        rows = self._db.execute(
            "SELECT key, reference, charge_reference, amount FROM refund ORDER BY key"
        ).fetchall()
        return [LedgerRefund(r[0], r[1], r[2], Decimal(r[3])) for r in rows]


@dataclass
class SandboxProvider:
    """The token-capture sandbox (cards, saved wallet agreements) behind ``Adapter``."""

    name = "sandbox"
    acknowledgement = "success"
    ledger: Ledger = field(default_factory=lambda: Ledger(":memory:"))
    late_seconds: float = 15.0
    _flaky_calls: Counter[str] = field(default_factory=Counter)

    async def capture(self, *, key: str, token: str, amount: Decimal, currency: str) -> str:
        """Charge and return the provider's payment reference. The same ``key`` again is the same
        charge, so a call retried after a lost answer charges once; a voided key never charges."""
        known = self.ledger.charge(key)
        if known is not None:
            return self._answer(known)
        if not token.startswith("tok_") or token == "tok_declined":
            return self._answer(self.ledger.record_charge(key, "declined", amount, currency))
        if token == "tok_flaky":
            self._flaky_calls[key] += 1
            if self._flaky_calls[key] <= 2:
                raise Transient("provider busy")
        if token == "tok_slow":
            await asyncio.Event().wait()  # never answers: the caller's timeout ends the call
        if token == "tok_late":
            await asyncio.sleep(self.late_seconds)
        return self._answer(self.ledger.record_charge(key, "captured", amount, currency))

    async def lookup(self, key: str) -> Charge | None:
        """What became of the attempt with ``key``: None when the provider never completed it."""
        return self.ledger.charge(key)

    async def void(self, key: str, *, amount: Decimal, currency: str) -> Charge:
        """Close an attempt that never completed, so that it can never complete later. An attempt
        that completed meanwhile is returned as it is (the caller must honour it)."""
        return self.ledger.record_charge(key, "voided", amount, currency)

    async def complete(self, key: str, *, reference: str) -> Charge:
        raise Unsupported("its notifications say paid: there is nothing to capture after approval")

    async def refund(
        self, *, payment_ref: str, amount: Decimal, idempotency_key: str, currency: str = "CNY"
    ) -> str:
        """Pay ``amount`` back; the same ``idempotency_key`` again is the same refund (as with real
        providers' idempotency keys), so a call retried after a lost answer refunds once."""
        return self.ledger.record_refund(idempotency_key, payment_ref, amount).reference

    async def refund_status(
        self, *, payment_ref: str, idempotency_key: str, reference: str | None
    ) -> RefundSeen | None:
        refund = self.ledger.refund(idempotency_key)
        if refund is None or refund.charge_reference != payment_ref:
            return None
        return RefundSeen(refund.reference, "succeeded", refund.amount, None)  # its ledger keeps no currency

    # -- the Adapter interface ---------------------------------------------------------------

    def trade_key(self, key: str) -> str:
        return key

    async def charge(self, *, key: str, token: str, amount: Decimal, currency: str, subject: str) -> str:
        return await self.capture(key=key, token=token, amount=amount, currency=currency)

    async def start(
        self, *, key: str, amount: Decimal, currency: str, subject: str, expires_at: datetime
    ) -> Action:
        raise Unsupported("the sandbox captures with tokens only")

    async def query(self, key: str, reference: str | None = None) -> Charge | None:
        return await self.lookup(key)

    async def close(
        self, key: str, *, amount: Decimal, currency: str, reference: str | None = None
    ) -> Charge:
        return await self.void(key, amount=amount, currency=currency)

    async def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        raise BadSignature("the sandbox sends no notifications")

    @staticmethod
    def _answer(charge: Charge) -> str:
        if charge.status == "declined":
            raise Declined("card declined")
        if charge.status == "voided":
            raise Declined("the attempt was voided")
        assert charge.reference is not None
        return charge.reference
