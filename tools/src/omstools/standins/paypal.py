"""A stand-in for PayPal's REST APIs, for local runs and tests.

``python -m omstools.standins.paypal --port 8014 --dir .var/standins/paypal --webhook-url URL``
serves what the payments adapter uses: ``POST /v1/oauth2/token`` (client credentials),
``POST /v2/checkout/orders`` (``PayPal-Request-Id`` replays; with ``payment_source.paypal.vault_id``,
a saved PayPal that plays the sandbox tokens and is captured at once), ``GET /v2/checkout/orders/{id}``,
``POST /v2/checkout/orders/{id}/capture``, ``POST /v2/payments/captures/{id}/refund``,
``GET /v2/payments/refunds/{id}`` and ``POST /v1/notifications/verify-webhook-signature``. The
approval page is ``GET /checkoutnow?token=ID`` (``POST`` approves by hand). The simulated
customer approves an order after ``--pay-after`` seconds unless its description names
``tok_nopay``; each approval is sent to ``--webhook-url`` as
``CHECKOUT.ORDER.APPROVED`` with PayPal's transmission headers, the signature SHA256withRSA over
``<transmission id>|<time>|<webhook id>|<crc32 of the body>`` as PayPal computes it, checked by the
verify API; resent until answered 2xx. Ledger: SQLite in ``--dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sqlite3
import time
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from omstools.standins import SavedAgreements, add_control_routes
from omstools.standins.alipay import _sign, _verifies, rsa_private
from omstools.standins.alipay import ensure_keys as _rsa_pairs

CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID = "oms-local-client", "oms-local-secret", "WH-OMS-LOCAL"
NOPAY = "tok_nopay"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS paypal_order (id TEXT PRIMARY KEY, request_id TEXT UNIQUE, body TEXT NOT NULL,
    notified INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS refund (request_id TEXT PRIMARY KEY, id TEXT NOT NULL, capture_id TEXT NOT NULL,
    value TEXT NOT NULL);
"""


class PayPalStandIn:
    def __init__(
        self, folder: Path, *, public_url: str, webhook_url: str | None, pay_after: float = 1.5
    ) -> None:
        keys = _rsa_pairs(folder)
        self.key = rsa_private(keys["alipay_private"])
        self.public = self.key.public_key()
        self.public_url, self.webhook_url, self.pay_after = public_url.rstrip("/"), webhook_url, pay_after
        self.tokens: set[str] = set()
        self.fail_refunds = 0
        self.agreements = SavedAgreements()
        self.db = sqlite3.connect(
            str(folder / "ledger.db"), isolation_level=None, check_same_thread=False, timeout=30
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.tasks: set[asyncio.Task] = set()
        self.client = httpx.AsyncClient(timeout=10)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def order(self, order_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM paypal_order WHERE id = ?", (order_id,)).fetchone()
        return None if row is None else json.loads(row["body"])

    def save(self, order: dict[str, Any]) -> None:
        self.db.execute("UPDATE paypal_order SET body = ? WHERE id = ?", (json.dumps(order), order["id"]))

    async def create(self, body: dict[str, Any], request_id: str | None) -> JSONResponse:
        if request_id:
            known = self.db.execute(
                "SELECT body FROM paypal_order WHERE request_id = ?", (request_id,)
            ).fetchone()
            if known is not None:
                return JSONResponse(json.loads(known["body"]), status_code=200)
        order_id = uuid.uuid4().hex[:17].upper()
        unit = body["purchase_units"][0]
        vault_id = ((body.get("payment_source") or {}).get("paypal") or {}).get("vault_id")
        if vault_id:
            return await self.pay_with_vault(order_id, unit, vault_id, request_id)
        order = {
            "id": order_id,
            "intent": "CAPTURE",
            "status": "PAYER_ACTION_REQUIRED",
            "purchase_units": [
                {
                    "reference_id": unit.get("reference_id"),
                    "custom_id": unit.get("custom_id"),
                    "description": unit.get("description", ""),
                    "amount": unit["amount"],
                }
            ],
            "create_time": datetime.now(UTC).isoformat(),
            "links": [
                {"rel": "self", "href": f"{self.public_url}/v2/checkout/orders/{order_id}", "method": "GET"},
                {
                    "rel": "payer-action",
                    "href": f"{self.public_url}/checkoutnow?token={order_id}",
                    "method": "GET",
                },
            ],
        }
        self.db.execute(
            "INSERT INTO paypal_order (id, request_id, body) VALUES (?, ?, ?)",
            (order_id, request_id, json.dumps(order)),
        )
        if NOPAY not in unit.get("description", ""):
            self._spawn(self._customer_approves(order_id))
        return JSONResponse(order, status_code=201)

    async def pay_with_vault(
        self, order_id: str, unit: dict[str, Any], vault_id: str, request_id: str | None
    ) -> JSONResponse:
        """An order paid with a saved PayPal (its vault id plays the sandbox tokens:
        ``SavedAgreements``): completed and captured at once, or refused ``INSTRUMENT_DECLINED``."""
        outcome = await self.agreements.outcome(request_id or order_id, vault_id)
        if outcome == "busy":
            return JSONResponse({"name": "INTERNAL_SERVER_ERROR"}, status_code=500)
        if outcome == "declined":
            return JSONResponse(
                {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "INSTRUMENT_DECLINED"}]},
                status_code=422,
            )
        now = datetime.now(UTC).isoformat()
        order = {
            "id": order_id,
            "intent": "CAPTURE",
            "status": "COMPLETED",
            "payment_source": {"paypal": {"attributes": {"vault": {"id": vault_id, "status": "VAULTED"}}}},
            "purchase_units": [
                {
                    "reference_id": unit.get("reference_id"),
                    "custom_id": unit.get("custom_id"),
                    "description": unit.get("description", ""),
                    "amount": unit["amount"],
                    "payments": {
                        "captures": [
                            {
                                "id": uuid.uuid4().hex[:17].upper(),
                                "status": "COMPLETED",
                                "amount": unit["amount"],
                                "create_time": now,
                            }
                        ]
                    },
                }
            ],
            "create_time": now,
            "links": [
                {"rel": "self", "href": f"{self.public_url}/v2/checkout/orders/{order_id}", "method": "GET"}
            ],
        }
        self.db.execute(
            "INSERT INTO paypal_order (id, request_id, body, notified) VALUES (?, ?, ?, 1)",
            (order_id, request_id, json.dumps(order)),
        )
        return JSONResponse(order, status_code=201)

    def capture(self, order_id: str) -> JSONResponse:
        order = self.order(order_id)
        if order is None:
            return JSONResponse({"name": "RESOURCE_NOT_FOUND"}, status_code=404)
        if order["status"] == "COMPLETED":
            return JSONResponse(
                {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "ORDER_ALREADY_CAPTURED"}]},
                status_code=422,
            )
        if order["status"] != "APPROVED":
            return JSONResponse(
                {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "ORDER_NOT_APPROVED"}]},
                status_code=422,
            )
        unit = order["purchase_units"][0]
        unit["payments"] = {
            "captures": [
                {
                    "id": uuid.uuid4().hex[:17].upper(),
                    "status": "COMPLETED",
                    "amount": unit["amount"],
                    "create_time": datetime.now(UTC).isoformat(),
                }
            ]
        }
        order["status"] = "COMPLETED"
        self.save(order)
        return JSONResponse(order, status_code=201)

    def refund(self, capture_id: str, body: dict[str, Any], request_id: str | None) -> JSONResponse:
        if self.fail_refunds > 0:
            self.fail_refunds -= 1
            return JSONResponse({"name": "INTERNAL_SERVER_ERROR"}, status_code=500)
        known = self.db.execute("SELECT * FROM refund WHERE request_id = ?", (request_id,)).fetchone()
        if known is None:
            captured = [
                c
                for r in self.db.execute("SELECT body FROM paypal_order").fetchall()
                for u in json.loads(r["body"])["purchase_units"]
                for c in (u.get("payments") or {}).get("captures", [])
                if c["id"] == capture_id
            ]
            if not captured:
                return JSONResponse({"name": "RESOURCE_NOT_FOUND"}, status_code=404)
            done = sum(
                float(r["value"])
                for r in self.db.execute(
                    "SELECT value FROM refund WHERE capture_id = ?", (capture_id,)
                ).fetchall()
            )
            value = body.get("amount", {}).get("value") or captured[0]["amount"]["value"]
            if done + float(value) > float(captured[0]["amount"]["value"]) + 1e-9:
                return JSONResponse(
                    {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "REFUND_AMOUNT_EXCEEDED"}]},
                    status_code=422,
                )
            self.db.execute(
                "INSERT INTO refund (request_id, id, capture_id, value) VALUES (?, ?, ?, ?)",
                (request_id or uuid.uuid4().hex, uuid.uuid4().hex[:17].upper(), capture_id, value),
            )
            known = self.db.execute("SELECT * FROM refund WHERE request_id = ?", (request_id,)).fetchone()
        return JSONResponse(
            {"id": known["id"], "status": "COMPLETED", "amount": {"value": known["value"]}}, status_code=201
        )

    def refund_of(self, refund_id: str) -> JSONResponse:
        """``GET /v2/payments/refunds/{id}``: the refund, with a link up to its capture."""
        known = self.db.execute("SELECT * FROM refund WHERE id = ?", (refund_id,)).fetchone()
        if known is None:
            return JSONResponse({"name": "RESOURCE_NOT_FOUND"}, status_code=404)
        currency = next(
            (
                c["amount"]["currency_code"]
                for r in self.db.execute("SELECT body FROM paypal_order").fetchall()
                for u in json.loads(r["body"])["purchase_units"]
                for c in (u.get("payments") or {}).get("captures", [])
                if c["id"] == known["capture_id"]
            ),
            None,
        )
        return JSONResponse(
            {
                "id": known["id"],
                "status": "COMPLETED",
                "amount": {"value": known["value"], "currency_code": currency},
                "links": [
                    {"rel": "up", "href": f"/v2/payments/captures/{known['capture_id']}", "method": "GET"}
                ],
            }
        )

    async def _customer_approves(self, order_id: str) -> None:
        await asyncio.sleep(self.pay_after)
        self.approve(order_id)

    def approve(self, order_id: str) -> bool:
        order = self.order(order_id)
        if order is None or order["status"] != "PAYER_ACTION_REQUIRED":
            return False
        order["status"] = "APPROVED"
        self.save(order)
        self._spawn(self.notify(order_id))
        return True

    def transmission(self, body: bytes) -> dict[str, str]:
        tid, at = str(uuid.uuid4()), datetime.now(UTC).isoformat()
        message = f"{tid}|{at}|{WEBHOOK_ID}|{zlib.crc32(body)}".encode()
        return {
            "PAYPAL-TRANSMISSION-ID": tid,
            "PAYPAL-TRANSMISSION-TIME": at,
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
            "PAYPAL-CERT-URL": f"{self.public_url}/certs/standin.pem",
            "PAYPAL-TRANSMISSION-SIG": _sign(message, self.key),
            "Content-Type": "application/json",
        }

    def verify(self, claim: dict[str, Any]) -> JSONResponse:
        body = json.dumps(claim.get("webhook_event"), separators=(",", ":")).encode()
        fields = (claim.get("transmission_id"), claim.get("transmission_time"), claim.get("webhook_id"))
        message = "|".join(str(f) for f in fields) + f"|{zlib.crc32(body)}"
        ok = claim.get("webhook_id") == WEBHOOK_ID and _verifies(
            message.encode(), claim.get("transmission_sig", ""), self.public
        )
        return JSONResponse({"verification_status": "SUCCESS" if ok else "FAILURE"})

    async def notify(self, order_id: str) -> None:
        if not self.webhook_url:
            return
        delay, deadline = 0.5, time.monotonic() + 600
        while time.monotonic() < deadline:
            order = self.order(order_id)
            row = self.db.execute("SELECT notified FROM paypal_order WHERE id = ?", (order_id,)).fetchone()
            if order is None or row["notified"]:
                return
            event = {
                "id": f"WH-{order_id}-APPROVED",
                "event_type": "CHECKOUT.ORDER.APPROVED",
                "resource_type": "checkout-order",
                "create_time": datetime.now(UTC).isoformat(),
                "resource": order,
            }
            body = json.dumps(event, separators=(",", ":")).encode()
            with contextlib.suppress(httpx.HTTPError):
                if (
                    await self.client.post(self.webhook_url, content=body, headers=self.transmission(body))
                ).is_success:
                    self.db.execute("UPDATE paypal_order SET notified = 1 WHERE id = ?", (order_id,))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    def resume(self) -> None:
        for row in self.db.execute("SELECT id, body FROM paypal_order WHERE notified = 0").fetchall():
            order = json.loads(row["body"])
            if order["status"] == "APPROVED":
                self._spawn(self.notify(row["id"]))
            elif (
                order["status"] == "PAYER_ACTION_REQUIRED"
                and NOPAY not in order["purchase_units"][0]["description"]
            ):
                self._spawn(self._customer_approves(row["id"]))


def create_app(standin: PayPalStandIn) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        standin.resume()
        yield
        for task in list(standin.tasks):
            task.cancel()
        await standin.client.aclose()

    app = FastAPI(title="PayPal stand-in", lifespan=lifespan)

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization", "").removeprefix("Bearer ") in standin.tokens

    denied = JSONResponse({"error": "invalid_token"}, status_code=401)

    @app.post("/v1/oauth2/token")
    async def token(request: Request) -> JSONResponse:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = f"A21AA{uuid.uuid4().hex}"
        standin.tokens.add(issued)
        return JSONResponse({"access_token": issued, "token_type": "Bearer", "expires_in": 32400})

    @app.post("/v2/checkout/orders")
    async def create(request: Request) -> JSONResponse:
        if not authorised(request):
            return denied
        return await standin.create(await request.json(), request.headers.get("paypal-request-id"))

    @app.get("/v2/checkout/orders/{order_id}")
    async def get(request: Request, order_id: str) -> JSONResponse:
        if not authorised(request):
            return denied
        order = standin.order(order_id)
        return JSONResponse(order) if order else JSONResponse({"name": "RESOURCE_NOT_FOUND"}, status_code=404)

    @app.post("/v2/checkout/orders/{order_id}/capture")
    async def capture(request: Request, order_id: str) -> JSONResponse:
        return standin.capture(order_id) if authorised(request) else denied

    @app.post("/v2/payments/captures/{capture_id}/refund")
    async def refund(request: Request, capture_id: str) -> JSONResponse:
        if not authorised(request):
            return denied
        return standin.refund(capture_id, await request.json(), request.headers.get("paypal-request-id"))

    @app.get("/v2/payments/refunds/{refund_id}")
    async def refund_of(request: Request, refund_id: str) -> JSONResponse:
        return standin.refund_of(refund_id) if authorised(request) else denied

    @app.post("/v1/notifications/verify-webhook-signature")
    async def verify(request: Request) -> JSONResponse:
        return standin.verify(await request.json()) if authorised(request) else denied

    @app.get("/checkoutnow", response_class=HTMLResponse)
    async def page(token: str) -> str:
        order = standin.order(token)
        if order is None:
            return "<p>unknown order</p>"
        amount = order["purchase_units"][0]["amount"]
        return (
            f"<h1>PayPal stand-in</h1><p>{amount['value']} {amount['currency_code']} ({order['status']})</p>"
            f"<form method=post action='/checkoutnow?token={token}'><button>Pay Now</button></form>"
        )

    @app.post("/checkoutnow")
    async def approve(token: str) -> JSONResponse:
        approved = standin.approve(token)
        return JSONResponse({"approved": approved}, status_code=200 if approved else 409)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def books() -> dict[str, Any]:
        rows = standin.db.execute("SELECT body, notified FROM paypal_order").fetchall()
        return {
            "orders": [{**json.loads(r["body"]), "notified": bool(r["notified"])} for r in rows],
            "refunds": [dict(r) for r in standin.db.execute("SELECT * FROM refund").fetchall()],
        }

    add_control_routes(app, standin, books)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8014)
    parser.add_argument("--dir", default=".var/standins/paypal")
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--pay-after", type=float, default=1.5)
    args = parser.parse_args(argv)
    standin = PayPalStandIn(
        Path(args.dir),
        public_url=f"http://{args.host}:{args.port}",
        webhook_url=args.webhook_url,
        pay_after=args.pay_after,
    )
    uvicorn.run(
        create_app(standin), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
