"""Local stand-ins for the payment providers (CONTRACT §7): each speaks the endpoints of its
provider's API that the payments adapter uses, signs as the provider does with keys generated for
local runs, keeps a ledger that survives restarts, and plays the customer."""

from collections.abc import Callable
from typing import Any, Protocol

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
