"""A stand-in for the card processor's API (Stripe's), for local runs and tests.

``python -m omstools.standins.stripe --port 8012 --dir .var/standins/stripe`` serves what the
payments card adapter uses through the ``stripe`` SDK: ``POST /v1/payment_intents`` (confirmed at
once), ``GET /v1/payment_intents/search`` (by ``metadata['oms_key']``), ``POST
/v1/payment_intents/{id}/cancel`` and ``POST /v1/refunds``, with Stripe's bearer-key
authentication, idempotency keys (the same key again replays the first answer) and error shapes
(a declined card is HTTP 402 ``card_error``). Each succeeded payment is sent to ``--webhook-url``
as a ``payment_intent.succeeded`` event signed as Stripe signs (``Stripe-Signature: t=…,v1=…``,
HMAC-SHA256 of ``"<t>.<body>"`` with the endpoint's secret), resent until answered 2xx.

The sandbox card tokens of CONTRACT §7 keep their meaning (``SavedAgreements``, as at the wallets'
stand-ins): ``tok_declined`` is declined,
``tok_flaky`` fails twice with a 500 then succeeds, ``tok_slow`` never answers, ``tok_late``
answers after ``--late-seconds``, any other ``tok_…`` succeeds. ``POST /_standin/fail-refunds``
makes the next refunds fail with a 500; ``GET /_standin/ledger`` shows the books (SQLite in ``--dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from omstools.standins import SavedAgreements, add_control_routes

API_KEY = "sk_test_oms_standin"
WEBHOOK_SECRET = "whsec_oms_standin"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS intent (
    id TEXT PRIMARY KEY, oms_key TEXT, status TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
    body TEXT NOT NULL, notified INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS intent_key ON intent (oms_key);
CREATE TABLE IF NOT EXISTS refund (
    id TEXT PRIMARY KEY, payment_intent TEXT NOT NULL, amount INTEGER NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL);
"""


def stripe_signature(body: bytes, secret: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


class StripeStandIn:
    def __init__(
        self,
        folder: Path,
        *,
        webhook_url: str | None,
        api_key: str = API_KEY,
        webhook_secret: str = WEBHOOK_SECRET,
        late_seconds: float = 15.0,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(
            str(folder / "ledger.db"), isolation_level=None, check_same_thread=False, timeout=30
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.webhook_url, self.api_key, self.webhook_secret = webhook_url, api_key, webhook_secret
        self.customers = SavedAgreements(late_seconds)
        self.fail_refunds = 0
        self.tasks: set[asyncio.Task] = set()
        self.client = httpx.AsyncClient(timeout=10)

    @staticmethod
    def _error(status: int, type_: str, message: str, **more: Any) -> JSONResponse:
        return JSONResponse({"error": {"type": type_, "message": message, **more}}, status_code=status)

    def _intent(self, row: sqlite3.Row) -> dict[str, Any]:
        return json.loads(row["body"])

    async def handle(self, request: Request, call) -> JSONResponse:
        """Authentication and idempotency around every API call, as Stripe does them."""
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "invalid_request_error", "Invalid API Key provided")
        key = request.headers.get("idempotency-key")
        if key and request.method == "POST":
            known = self.db.execute("SELECT status, body FROM idempotency WHERE key = ?", (key,)).fetchone()
            if known is not None:
                return JSONResponse(
                    json.loads(known["body"]),
                    status_code=known["status"],
                    headers={"Idempotent-Replayed": "true"},
                )
        answer = await call()
        if key and request.method == "POST" and answer.status_code < 500:  # Stripe does not save 5xx answers
            self.db.execute(
                "INSERT OR IGNORE INTO idempotency (key, status, body) VALUES (?, ?, ?)",
                (key, answer.status_code, answer.body.decode()),
            )
        return answer

    async def create_intent(self, form: dict[str, str]) -> JSONResponse:
        token, oms_key = form.get("payment_method", ""), form.get("metadata[oms_key]")
        outcome = await self.customers.outcome(oms_key or "", token)
        if outcome == "busy":
            return self._error(500, "api_error", "An unexpected error occurred.")
        declined = outcome == "declined"
        intent = {
            "id": f"pi_{uuid.uuid4().hex[:24]}",
            "object": "payment_intent",
            "amount": int(form["amount"]),
            "amount_received": 0 if declined else int(form["amount"]),
            "currency": form["currency"],
            "status": "requires_payment_method" if declined else "succeeded",
            "metadata": {"oms_key": oms_key},
            "created": int(time.time()),
            "livemode": False,
            "last_payment_error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
            }
            if declined
            else None,
        }
        self.db.execute(
            "INSERT INTO intent (id, oms_key, status, amount, currency, body, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                intent["id"],
                oms_key,
                intent["status"],
                intent["amount"],
                intent["currency"],
                json.dumps(intent),
                intent["created"],
            ),
        )
        if declined:
            return self._error(
                402,
                "card_error",
                "Your card was declined.",
                code="card_declined",
                decline_code="generic_decline",
                payment_intent=intent,
            )
        self._spawn(self.notify(str(intent["id"])))
        return JSONResponse(intent)

    def search(self, query: str) -> JSONResponse:
        key = query.split(":", 1)[1].strip().strip("'\"") if ":" in query else ""
        rows = self.db.execute(
            "SELECT * FROM intent WHERE oms_key = ? ORDER BY created DESC", (key,)
        ).fetchall()
        return JSONResponse(
            {
                "object": "search_result",
                "url": "/v1/payment_intents/search",
                "has_more": False,
                "next_page": None,
                "data": [self._intent(r) for r in rows],
            }
        )

    def cancel(self, intent_id: str) -> JSONResponse:
        row = self.db.execute("SELECT * FROM intent WHERE id = ?", (intent_id,)).fetchone()
        if row is None:
            return self._error(404, "invalid_request_error", f"No such payment_intent: '{intent_id}'")
        if row["status"] == "succeeded":
            return self._error(
                400,
                "invalid_request_error",
                "This PaymentIntent's status is succeeded.",
                code="payment_intent_unexpected_state",
            )
        intent = {**self._intent(row), "status": "canceled"}
        self.db.execute(
            "UPDATE intent SET status = 'canceled', body = ? WHERE id = ?", (json.dumps(intent), intent_id)
        )
        return JSONResponse(intent)

    def refund(self, form: dict[str, str]) -> JSONResponse:
        if self.fail_refunds > 0:
            self.fail_refunds -= 1
            return self._error(500, "api_error", "An unexpected error occurred.")
        row = self.db.execute("SELECT * FROM intent WHERE id = ?", (form.get("payment_intent"),)).fetchone()
        if row is None or row["status"] != "succeeded":
            return self._error(
                400,
                "invalid_request_error",
                "This PaymentIntent does not have a successful charge.",
                code="charge_not_refundable",
            )
        refunded = self.db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM refund WHERE payment_intent = ?", (row["id"],)
        ).fetchone()[0]
        amount = int(form.get("amount") or row["amount"] - refunded)
        if refunded + amount > row["amount"]:
            return self._error(
                400,
                "invalid_request_error",
                "Refund amount is greater than unrefunded amount.",
                code="charge_already_refunded",
            )
        refund = {
            "id": f"re_{uuid.uuid4().hex[:24]}",
            "object": "refund",
            "amount": amount,
            "currency": row["currency"],
            "payment_intent": row["id"],
            "status": "succeeded",
            "created": int(time.time()),
        }
        self.db.execute(
            "INSERT INTO refund (id, payment_intent, amount, created) VALUES (?, ?, ?, ?)",
            (refund["id"], row["id"], amount, refund["created"]),
        )
        return JSONResponse(refund)

    def refund_of(self, refund_id: str) -> JSONResponse:
        row = self.db.execute(
            "SELECT refund.*, intent.currency FROM refund JOIN intent ON intent.id = refund.payment_intent"
            " WHERE refund.id = ?",
            (refund_id,),
        ).fetchone()
        if row is None:
            return self._error(
                404, "invalid_request_error", f"No such refund: '{refund_id}'", code="resource_missing"
            )
        return JSONResponse(
            {
                "id": row["id"],
                "object": "refund",
                "amount": row["amount"],
                "currency": row["currency"],
                "payment_intent": row["payment_intent"],
                "status": "succeeded",
                "created": row["created"],
            }
        )

    # -- webhooks --------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def notify(self, intent_id: str) -> None:
        if not self.webhook_url:
            return
        row = self.db.execute("SELECT * FROM intent WHERE id = ?", (intent_id,)).fetchone()
        event = {
            "id": f"evt_{intent_id[3:]}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "api_version": "2025-01-27",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": self._intent(row)},
        }
        body = json.dumps(event).encode()
        delay, deadline = 0.5, time.monotonic() + 600
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                answer = await self.client.post(
                    self.webhook_url,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": stripe_signature(body, self.webhook_secret),
                    },
                )
                if answer.is_success:
                    self.db.execute("UPDATE intent SET notified = 1 WHERE id = ?", (intent_id,))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    def resume(self) -> None:
        for row in self.db.execute(
            "SELECT id FROM intent WHERE status = 'succeeded' AND notified = 0"
        ).fetchall():
            self._spawn(self.notify(row["id"]))

    def books(self) -> dict[str, Any]:
        intents = [
            {k: r[k] for k in ("id", "oms_key", "status", "amount", "currency")}
            for r in self.db.execute("SELECT * FROM intent ORDER BY created").fetchall()
        ]
        refunds = [dict(r) for r in self.db.execute("SELECT * FROM refund ORDER BY created").fetchall()]
        return {"payment_intents": intents, "refunds": refunds}


def create_app(standin: StripeStandIn) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        standin.resume()
        yield
        for task in list(standin.tasks):
            task.cancel()
        await standin.client.aclose()

    app = FastAPI(title="Stripe stand-in", lifespan=lifespan)

    async def form(request: Request) -> dict[str, str]:
        return {k: str(v) for k, v in (await request.form()).items()}

    @app.post("/v1/payment_intents")
    async def create(request: Request) -> JSONResponse:
        fields = await form(request)
        return await standin.handle(request, lambda: standin.create_intent(fields))

    @app.get("/v1/payment_intents/search")
    async def search(request: Request, query: str = "") -> JSONResponse:
        async def answer() -> JSONResponse:
            return standin.search(query)

        return await standin.handle(request, answer)

    @app.post("/v1/payment_intents/{intent_id}/cancel")
    async def cancel(request: Request, intent_id: str) -> JSONResponse:
        async def answer() -> JSONResponse:
            return standin.cancel(intent_id)

        return await standin.handle(request, answer)

    @app.post("/v1/refunds")
    async def refund(request: Request) -> JSONResponse:
        fields = await form(request)

        async def answer() -> JSONResponse:
            return standin.refund(fields)

        return await standin.handle(request, answer)

    @app.get("/v1/refunds/{refund_id}")
    async def refund_of(request: Request, refund_id: str) -> JSONResponse:
        async def answer() -> JSONResponse:
            return standin.refund_of(refund_id)

        return await standin.handle(request, answer)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "at": datetime.now(UTC).isoformat()}

    add_control_routes(app, standin, standin.books)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8012)
    parser.add_argument("--dir", default=".var/standins/stripe")
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--late-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    standin = StripeStandIn(Path(args.dir), webhook_url=args.webhook_url, late_seconds=args.late_seconds)
    uvicorn.run(
        create_app(standin), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
