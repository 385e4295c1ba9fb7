"""Local stand-ins for the payment providers (CONTRACT §7): each speaks the endpoints of its
provider's API that the payments adapter uses, signs as the provider does with keys generated for
local runs, keeps a ledger that survives restarts, and plays the customer."""

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, Protocol

from fastapi import FastAPI


class _FailsRefunds(Protocol):
    fail_refunds: int


def add_control_routes(app: FastAPI, standin: _FailsRefunds, books: Callable[[], dict[str, Any]]) -> None:
    """The routes every stand-in serves beside its provider's API: its books at
    ``GET /_standin/ledger`` (for reconciliation and tests), and ``POST /_standin/fail-refunds?count=N``,
    which makes its next N refunds fail at the provider."""

    @app.get("/_standin/ledger")
    async def ledger() -> dict[str, Any]:
        return books()

    @app.post("/_standin/fail-refunds")
    async def fail_refunds(count: int = 1) -> dict[str, int]:
        standin.fail_refunds = count
        return {"fail_refunds": count}


class SavedAgreements:
    """The customer behind a saved agreement (a card, an Alipay, WeChat Pay or PayPal agreement
    charged without them), playing the sandbox tokens of CONTRACT §7: ``tok_declined`` (and any
    token not ``tok_…``) is declined, ``tok_flaky`` makes the provider fail twice with a transient
    error for the same payment, ``tok_slow`` never answers, ``tok_late`` answers after
    ``late_seconds``, and any other ``tok_…`` pays."""

    def __init__(self, late_seconds: float = 15.0) -> None:
        self.late_seconds = late_seconds
        self._flaky: Counter[str] = Counter()

    async def outcome(self, payment: str, token: str) -> Literal["paid", "declined", "busy"]:
        if not token.startswith("tok_") or token == "tok_declined":
            return "declined"
        if token == "tok_flaky":
            self._flaky[payment] += 1
            if self._flaky[payment] <= 2:
                return "busy"
        if token == "tok_slow":
            await asyncio.Event().wait()  # never answers: the caller's timeout ends the call
        if token == "tok_late":
            await asyncio.sleep(self.late_seconds)
        return "paid"
