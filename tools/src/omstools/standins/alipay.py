"""A stand-in for Alipay's OpenAPI gateway, for local runs and tests.

``python -m omstools.standins.alipay --port 8011 --dir .var/standins/alipay`` serves:

- ``POST /gateway.do``: ``alipay.trade.precreate`` / ``pay`` (a deduction on a saved agreement,
  whose ``agreement_no`` plays the sandbox tokens: ``SavedAgreements``) / ``query`` / ``close`` / ``refund`` /
  ``fastpay.refund.query``, the
  merchant's RSA2 signature checked with the app's public key, every answer signed with the
  stand-in's Alipay key (``{"<method>_response": {...}, "sign": "..."}``);
- ``GET /qr/{trade_no}``: the QR code's page; ``POST /qr/{trade_no}/pay`` pays it by hand;
- ``GET /_standin/ledger``: its books, for reconciliation; ``POST /_standin/fail-refunds?count=N``:
  the next N refunds answer ``ACQ.SYSTEM_ERROR`` (a provider-side failure to retry).

The simulated customer pays every QR code after ``--pay-after`` seconds, except an order whose
subject names the sandbox token ``tok_nopay`` (the customer who never pays). A paid trade is
notified to the request's ``notify_url`` as Alipay does (form fields signed RSA2 over all but
``sign``/``sign_type``), again and again until it answers ``success``. The ledger is a SQLite file
in ``--dir``; trades paid but not yet acknowledged are notified again after a restart.
Keys: ``ensure_keys(dir)`` writes the app's and the stand-in's RSA key pairs there once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from omstools.standins import SavedAgreements, add_control_routes

BEIJING = timezone(timedelta(hours=8))
NOPAY = "tok_nopay"


def ensure_keys(folder: str | Path) -> dict[str, Path]:
    """The merchant app's and the stand-in's key pairs (PEM), generated on first use."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        f"{who}_{kind}": folder / f"{who}_{kind}.pem"
        for who in ("app", "alipay")
        for kind in ("private", "public")
    }
    for who in ("app", "alipay"):
        if not paths[f"{who}_private"].exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            paths[f"{who}_public"].write_bytes(public)
            private = paths[f"{who}_private"]
            private.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            private.chmod(0o600)
    return paths


def rsa_private(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def rsa_public(path: Path) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _signed_text(params: dict[str, str], drop: tuple[str, ...]) -> bytes:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in drop and v != "").encode()


def _sign(data: bytes, key: rsa.RSAPrivateKey) -> str:
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def _verifies(data: bytes, signature: str, key: rsa.RSAPublicKey) -> bool:
    try:
        key.verify(base64.b64decode(signature), data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError):
        return False


_SCHEMA = """
CREATE TABLE IF NOT EXISTS trade (
    out_trade_no TEXT PRIMARY KEY, trade_no TEXT UNIQUE NOT NULL, status TEXT NOT NULL,
    total_amount TEXT NOT NULL, currency TEXT NOT NULL, subject TEXT NOT NULL, notify_url TEXT,
    time_expire TEXT NOT NULL, paid_at TEXT, notified INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refund (
    out_request_no TEXT PRIMARY KEY, trade_no TEXT NOT NULL, amount TEXT NOT NULL, at TEXT NOT NULL);
"""


class Ledger:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def trade(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> sqlite3.Row | None:
        if out_trade_no is not None:
            row = self.db.execute("SELECT * FROM trade WHERE out_trade_no = ?", (out_trade_no,)).fetchone()
        else:
            row = self.db.execute("SELECT * FROM trade WHERE trade_no = ?", (trade_no,)).fetchone()
        if (
            row is not None
            and row["status"] == "WAIT_BUYER_PAY"
            and datetime.fromisoformat(row["time_expire"]) <= datetime.now(UTC)
        ):
            self.db.execute(
                "UPDATE trade SET status = 'TRADE_CLOSED' WHERE out_trade_no = ? AND status = 'WAIT_BUYER_PAY'",
                (row["out_trade_no"],),
            )
            return self.trade(out_trade_no=row["out_trade_no"])
        return row

    def refunded(self, trade_no: str) -> Decimal:
        total = self.db.execute("SELECT amount FROM refund WHERE trade_no = ?", (trade_no,)).fetchall()
        return sum((Decimal(r[0]) for r in total), Decimal("0"))


class AlipayStandIn:
    def __init__(self, folder: Path, *, app_id: str, public_url: str, pay_after: float = 1.5) -> None:
        keys = ensure_keys(folder)
        self.app_id, self.public_url, self.pay_after = app_id, public_url.rstrip("/"), pay_after
        self.app_key = rsa_public(keys["app_public"])
        self.key = rsa_private(keys["alipay_private"])
        self.ledger = Ledger(folder / "ledger.db")
        self.fail_refunds = 0
        self.agreements = SavedAgreements()
        self.tasks: set[asyncio.Task] = set()
        self.client = httpx.AsyncClient(timeout=10)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def answer(self, method: str, payload: dict[str, Any]) -> Response:
        node = "error_response" if payload.get("code") == "40002" else method.replace(".", "_") + "_response"
        inner = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        body = f'{{"{node}":{inner},"sign":"{_sign(inner.encode(), self.key)}"}}'
        return Response(body, media_type="application/json;charset=utf-8")

    async def gateway(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        method = form.get("method", "")
        if form.get("app_id") != self.app_id or not _verifies(
            _signed_text(form, ("sign",)), form.get("sign", ""), self.app_key
        ):
            return self.answer(
                method,
                {
                    "code": "40002",
                    "msg": "Invalid Arguments",
                    "sub_code": "isv.invalid-signature",
                    "sub_msg": "验签出错",
                },
            )
        biz = json.loads(form.get("biz_content") or "{}")
        handler = {
            "alipay.trade.precreate": self.precreate,
            "alipay.trade.query": self.query,
            "alipay.trade.close": self.close,
            "alipay.trade.refund": self.refund,
            "alipay.trade.fastpay.refund.query": self.refund_query,
        }.get(method)
        if method == "alipay.trade.pay":
            return self.answer(method, await self.deduct(biz, form))
        if handler is None:
            return self.answer(
                method, {"code": "40004", "msg": "Business Failed", "sub_code": "isv.invalid-method"}
            )
        return self.answer(method, handler(biz, form))

    @staticmethod
    def _fail(sub_code: str) -> dict[str, Any]:
        return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code}

    def _add_trade(
        self,
        biz: dict[str, Any],
        *,
        status: str,
        subject: str,
        notify_url: str | None,
        time_expire: str,
        paid_at: str | None = None,
    ) -> str:
        """Open the trade of ``biz``'s ``out_trade_no`` (a second one of that number is ignored);
        its ``trade_no``. A trade paid as it is made is answered at once, never notified."""
        trade_no = datetime.now(BEIJING).strftime("%Y%m%d") + uuid.uuid4().hex[:20]
        self.ledger.db.execute(
            "INSERT OR IGNORE INTO trade (out_trade_no, trade_no, status, total_amount, currency, subject, "
            "notify_url, time_expire, paid_at, notified, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                biz["out_trade_no"],
                trade_no,
                status,
                biz["total_amount"],
                biz.get("trans_currency", "CNY"),
                subject,
                notify_url,
                time_expire,
                paid_at,
                int(paid_at is not None),
                datetime.now(UTC).isoformat(),
            ),
        )
        return trade_no

    def precreate(self, biz: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
        out = biz["out_trade_no"]
        if not Decimal("0.01") <= Decimal(biz["total_amount"]) <= Decimal("100000000"):
            return self._fail("ACQ.TOTAL_FEE_EXCEED")  # Alipay's documented range of total_amount
        known = self.ledger.trade(out_trade_no=out)
        if known is None:
            expire = datetime.strptime(biz["time_expire"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
            trade_no = self._add_trade(
                biz,
                status="WAIT_BUYER_PAY",
                subject=biz["subject"],
                notify_url=form.get("notify_url"),
                time_expire=expire.astimezone(UTC).isoformat(),
            )
            if NOPAY not in biz["subject"]:
                self._spawn(self._customer_pays(trade_no))
            known = self.ledger.trade(out_trade_no=out)
            assert known is not None
        elif known["total_amount"] != biz["total_amount"]:
            return self._fail("ACQ.CONTEXT_INCONSISTENT")
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": out,
            "qr_code": f"{self.public_url}/qr/{known['trade_no']}",
        }

    async def deduct(self, biz: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
        """``alipay.trade.pay`` on a saved agreement (``GENERAL_WITHHOLDING``): paid, or refused, at
        once; the same ``out_trade_no`` again is refused ``ACQ.TRADE_HAS_SUCCESS`` once paid."""
        agreement = (biz.get("agreement_params") or {}).get("agreement_no", "")
        if biz.get("product_code") != "GENERAL_WITHHOLDING" or not agreement:
            return self._fail("ACQ.ACCESS_FORBIDDEN")
        out = biz["out_trade_no"]
        known = self.ledger.trade(out_trade_no=out)
        if known is not None:
            return self._fail(
                "ACQ.TRADE_HAS_SUCCESS" if known["status"] == "TRADE_SUCCESS" else "ACQ.TRADE_HAS_CLOSE"
            )
        outcome = await self.agreements.outcome(out, agreement)
        if outcome == "busy":
            return {"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "ACQ.SYSTEM_ERROR"}
        if outcome == "declined":
            return self._fail("ACQ.BUYER_BALANCE_NOT_ENOUGH")
        now = datetime.now(UTC).isoformat()
        self._add_trade(
            biz,
            status="TRADE_SUCCESS",
            subject=biz.get("subject", ""),
            notify_url=None,
            time_expire=now,
            paid_at=now,
        )
        t = self.ledger.trade(out_trade_no=out)
        assert t is not None
        return {**self._view(t), "buyer_pay_amount": t["total_amount"]}

    def _view(self, t: sqlite3.Row) -> dict[str, Any]:
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": t["out_trade_no"],
            "trade_no": t["trade_no"],
            "trade_status": t["status"],
            "total_amount": t["total_amount"],
        }

    def query(self, biz: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
        t = (
            self.ledger.trade(out_trade_no=biz.get("out_trade_no"))
            if biz.get("out_trade_no")
            else self.ledger.trade(trade_no=biz.get("trade_no"))
        )
        return self._fail("ACQ.TRADE_NOT_EXIST") if t is None else self._view(t)

    def close(self, biz: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
        t = self.ledger.trade(out_trade_no=biz.get("out_trade_no"))
        if t is None:
            return self._fail("ACQ.TRADE_NOT_EXIST")
        if t["status"] in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            return self._fail("ACQ.TRADE_STATUS_ERROR")
        self.ledger.db.execute(
            "UPDATE trade SET status = 'TRADE_CLOSED' WHERE out_trade_no = ?", (t["out_trade_no"],)
        )
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": t["out_trade_no"],
            "trade_no": t["trade_no"],
        }

    def refund(self, biz: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
        if self.fail_refunds > 0:
            self.fail_refunds -= 1
            return self._fail("ACQ.SYSTEM_ERROR")
        t = (
            self.ledger.trade(trade_no=biz.get("trade_no"))
            if biz.get("trade_no")
            else self.ledger.trade(out_trade_no=biz.get("out_trade_no"))
        )
        if t is None:
            return self._fail("ACQ.TRADE_NOT_EXIST")
        if t["status"] != "TRADE_SUCCESS":
            return self._fail("ACQ.TRADE_STATUS_ERROR")
        request_no = biz.get("out_request_no") or t["out_trade_no"]
        known = self.ledger.db.execute(
            "SELECT amount FROM refund WHERE out_request_no = ?", (request_no,)
        ).fetchone()
        amount = Decimal(biz["refund_amount"])
        if known is None:
            if self.ledger.refunded(t["trade_no"]) + amount > Decimal(t["total_amount"]):
                return self._fail("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL")
            self.ledger.db.execute(
                "INSERT INTO refund (out_request_no, trade_no, amount, at) VALUES (?, ?, ?, ?)",
                (request_no, t["trade_no"], format(amount, ".2f"), datetime.now(UTC).isoformat()),
            )
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": t["trade_no"],
            "out_trade_no": t["out_trade_no"],
            "fund_change": "N" if known else "Y",
            "refund_fee": format(self.ledger.refunded(t["trade_no"]), ".2f"),
        }

    def refund_query(self, biz: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
        """As Alipay documents it: a refund that was made is answered with its amount and
        ``REFUND_SUCCESS``; one that was not, with ``10000`` and no refund fields."""
        t = (
            self.ledger.trade(trade_no=biz.get("trade_no"))
            if biz.get("trade_no")
            else self.ledger.trade(out_trade_no=biz.get("out_trade_no"))
        )
        request_no = biz.get("out_request_no")
        row = (
            self.ledger.db.execute(
                "SELECT amount FROM refund WHERE out_request_no = ? AND trade_no = ?",
                (request_no, t["trade_no"]),
            ).fetchone()
            if t is not None and request_no
            else None
        )
        if t is None or row is None:
            return {"code": "10000", "msg": "Success"}
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": t["trade_no"],
            "out_trade_no": t["out_trade_no"],
            "out_request_no": request_no,
            "total_amount": t["total_amount"],
            "refund_amount": row["amount"],
            "refund_status": "REFUND_SUCCESS",
        }

    # -- the customer, and the notifications ------------------------------------------------------

    async def _customer_pays(self, trade_no: str) -> None:
        await asyncio.sleep(self.pay_after)
        self.pay(trade_no)

    def pay(self, trade_no: str) -> bool:
        t = self.ledger.trade(trade_no=trade_no)
        if t is None or t["status"] != "WAIT_BUYER_PAY":
            return False
        self.ledger.db.execute(
            "UPDATE trade SET status = 'TRADE_SUCCESS', paid_at = ? WHERE trade_no = ?",
            (datetime.now(UTC).isoformat(), trade_no),
        )
        self._spawn(self.notify(trade_no))
        return True

    def notification(self, t: sqlite3.Row) -> dict[str, str]:
        paid = datetime.fromisoformat(t["paid_at"]).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        fields = {
            "notify_time": datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "notify_type": "trade_status_sync",
            "notify_id": f"{t['trade_no']}-paid",
            "app_id": self.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "sign_type": "RSA2",
            "trade_no": t["trade_no"],
            "out_trade_no": t["out_trade_no"],
            "trade_status": "TRADE_SUCCESS",
            "total_amount": t["total_amount"],
            "receipt_amount": t["total_amount"],
            "subject": t["subject"],
            "gmt_payment": paid,
        }
        fields["sign"] = _sign(_signed_text(fields, ("sign", "sign_type")), self.key)
        return fields

    async def notify(self, trade_no: str) -> None:
        """Until the merchant answers ``success`` (Alipay retries for about a day; this, for ten minutes)."""
        delay = 0.5
        deadline = asyncio.get_running_loop().time() + 600
        while asyncio.get_running_loop().time() < deadline:
            t = self.ledger.trade(trade_no=trade_no)
            if t is None or t["notified"] or not t["notify_url"]:
                return
            with contextlib.suppress(httpx.HTTPError):
                r = await self.client.post(t["notify_url"], data=self.notification(t))
                if r.text.strip() == "success":
                    self.ledger.db.execute("UPDATE trade SET notified = 1 WHERE trade_no = ?", (trade_no,))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    def resume(self) -> None:
        for row in self.ledger.db.execute("SELECT trade_no, status FROM trade WHERE notified = 0").fetchall():
            if row["status"] == "TRADE_SUCCESS":
                self._spawn(self.notify(row["trade_no"]))
            elif row["status"] == "WAIT_BUYER_PAY":
                t = self.ledger.trade(trade_no=row["trade_no"])
                if t is not None and t["status"] == "WAIT_BUYER_PAY" and NOPAY not in t["subject"]:
                    self._spawn(self._customer_pays(row["trade_no"]))

    def books(self) -> dict[str, Any]:
        trades = [
            dict(r) for r in self.ledger.db.execute("SELECT * FROM trade ORDER BY out_trade_no").fetchall()
        ]
        refunds = [
            dict(r) for r in self.ledger.db.execute("SELECT * FROM refund ORDER BY out_request_no").fetchall()
        ]
        return {"trades": trades, "refunds": refunds}


def create_app(standin: AlipayStandIn) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        standin.resume()
        yield
        for task in list(standin.tasks):
            task.cancel()
        await standin.client.aclose()

    app = FastAPI(title="Alipay stand-in", lifespan=lifespan)
    app.add_api_route("/gateway.do", standin.gateway, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/qr/{trade_no}", response_class=HTMLResponse)
    async def qr(trade_no: str) -> str:
        t = standin.ledger.trade(trade_no=trade_no)
        if t is None:
            return "<p>unknown QR code</p>"
        return (
            f"<h1>支付宝 stand-in</h1><p>{t['subject']}: {t['total_amount']} {t['currency']} ({t['status']})</p>"
            f"<form method=post action='/qr/{trade_no}/pay'><button>Pay</button></form>"
        )

    @app.post("/qr/{trade_no}/pay")
    async def pay(trade_no: str) -> JSONResponse:
        paid = standin.pay(trade_no)
        return JSONResponse({"paid": paid}, status_code=200 if paid else 409)

    add_control_routes(app, standin, standin.books)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--dir", default=".var/standins/alipay")
    parser.add_argument("--app-id", default="2021000000000000")
    parser.add_argument("--pay-after", type=float, default=1.5)
    args = parser.parse_args(argv)
    standin = AlipayStandIn(
        Path(args.dir),
        app_id=args.app_id,
        public_url=f"http://{args.host}:{args.port}",
        pay_after=args.pay_after,
    )
    uvicorn.run(
        create_app(standin), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
