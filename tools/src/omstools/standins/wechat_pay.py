"""A stand-in for WeChat Pay's API v3, for local runs and tests.

``python -m omstools.standins.wechat_pay --port 8013 --dir .var/standins/wechat_pay`` serves the
endpoints the payments adapter uses: ``POST /v3/pay/transactions/native`` (a ``code_url``),
``POST /v3/global/papay/transactions`` (a deduction on a saved agreement, whose ``contract_id``
plays the sandbox tokens: ``SavedAgreements``),
``GET /v3/pay/transactions/out-trade-no/{no}`` and ``/id/{transaction_id}``, ``POST
.../out-trade-no/{no}/close``, ``POST /v3/refund/domestic/refunds`` and ``GET
/v3/refund/domestic/refunds/{out_refund_no}``. The merchant's
``WECHATPAY2-SHA256-RSA2048`` signature is checked with the merchant's public key; every answer is
signed with the stand-in's platform key (``Wechatpay-*`` headers). The simulated customer pays a
code after ``--pay-after`` seconds unless the description names ``tok_nopay``; the payment is
notified to ``notify_url`` as WeChat Pay does (``TRANSACTION.SUCCESS``, the transaction encrypted
AEAD_AES_256_GCM with the APIv3 key, the body signed), resent until answered 2xx. Ledger: SQLite
in ``--dir``; keys: ``ensure_keys(dir)`` (merchant and platform key pairs, the APIv3 key).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import secrets
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI, Request
from fastapi.responses import Response

from omstools.standins import SavedAgreements, add_control_routes
from omstools.standins.alipay import _sign, _verifies, rsa_private, rsa_public
from omstools.standins.alipay import ensure_keys as _rsa_pairs

MCHID, APPID = "1900000001", "wx0000000000000001"
MERCHANT_SERIAL, PLATFORM_SERIAL = "OMS0LOCAL0MERCHANT0SERIAL", "PUB_KEY_ID_0100000000OMS0LOCAL"
NOPAY = "tok_nopay"


def ensure_keys(folder: str | Path) -> dict[str, Path]:
    """The merchant's (``app_*``) and the platform's (``alipay_*`` renamed ``platform_*``) RSA key pairs
    and the APIv3 key, made on first use."""
    folder = Path(folder)
    pairs = _rsa_pairs(folder)
    paths = {
        "app_private": pairs["app_private"],
        "app_public": pairs["app_public"],
        "platform_private": pairs["alipay_private"],
        "platform_public": pairs["alipay_public"],
        "apiv3_key": folder / "apiv3.key",
    }
    if not paths["apiv3_key"].exists():
        paths["apiv3_key"].write_text(secrets.token_hex(16))  # 32 characters
        paths["apiv3_key"].chmod(0o600)
    return paths


_SCHEMA = """
CREATE TABLE IF NOT EXISTS trade (
    out_trade_no TEXT PRIMARY KEY, transaction_id TEXT UNIQUE NOT NULL, state TEXT NOT NULL, total INTEGER NOT NULL,
    currency TEXT NOT NULL, description TEXT NOT NULL, notify_url TEXT, time_expire TEXT NOT NULL,
    paid_at TEXT, notified INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS refund (
    out_refund_no TEXT PRIMARY KEY, refund_id TEXT NOT NULL, transaction_id TEXT NOT NULL, amount INTEGER NOT NULL);
"""


class WechatPayStandIn:
    def __init__(self, folder: Path, *, pay_after: float = 1.5) -> None:
        keys = ensure_keys(folder)
        self.merchant = rsa_public(keys["app_public"])
        self.key = rsa_private(keys["platform_private"])
        self.apiv3 = keys["apiv3_key"].read_text().strip().encode()
        self.pay_after, self.fail_refunds = pay_after, 0
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

    def signed(self, status: int, payload: dict[str, Any] | None = None) -> Response:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")) if payload is not None else ""
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={
                "Wechatpay-Timestamp": ts,
                "Wechatpay-Nonce": nonce,
                "Wechatpay-Serial": PLATFORM_SERIAL,
                "Wechatpay-Signature": _sign(f"{ts}\n{nonce}\n{body}\n".encode(), self.key),
            },
        )

    def authentic(self, request: Request, body: bytes) -> bool:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', request.headers.get("authorization", "")))
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        message = f"{request.method}\n{path}\n{fields.get('timestamp')}\n{fields.get('nonce_str')}\n{body.decode()}\n"
        return fields.get("mchid") == MCHID and _verifies(
            message.encode(), fields.get("signature", ""), self.merchant
        )

    def trade(
        self, *, out_trade_no: str | None = None, transaction_id: str | None = None
    ) -> sqlite3.Row | None:
        column, value = (
            ("out_trade_no", out_trade_no) if out_trade_no is not None else ("transaction_id", transaction_id)
        )
        row = self.db.execute(f"SELECT * FROM trade WHERE {column} = ?", (value,)).fetchone()  # noqa: S608
        if (
            row is not None
            and row["state"] == "NOTPAY"
            and datetime.fromisoformat(row["time_expire"]) <= datetime.now(UTC)
        ):
            self.db.execute(
                "UPDATE trade SET state = 'CLOSED' WHERE out_trade_no = ?", (row["out_trade_no"],)
            )
            return self.trade(out_trade_no=row["out_trade_no"])
        return row

    def view(self, t: sqlite3.Row) -> dict[str, Any]:
        return {
            "appid": APPID,
            "mchid": MCHID,
            "out_trade_no": t["out_trade_no"],
            "transaction_id": t["transaction_id"],
            "trade_type": "NATIVE",
            "trade_state": t["state"],
            "success_time": t["paid_at"],
            "amount": {"total": t["total"], "payer_total": t["total"], "currency": t["currency"]},
        }

    def _add_trade(
        self,
        biz: dict[str, Any],
        *,
        state: str,
        description: str,
        notify_url: str | None,
        time_expire: str,
        paid_at: str | None = None,
    ) -> None:
        """Open the trade of ``biz``'s ``out_trade_no`` (a second one of that number is ignored). A
        trade paid as it is made is answered at once, never notified."""
        self.db.execute(
            "INSERT OR IGNORE INTO trade (out_trade_no, transaction_id, state, total, currency, description, "
            "notify_url, time_expire, paid_at, notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                biz["out_trade_no"],
                "42000" + uuid.uuid4().hex[:23],
                state,
                biz["amount"]["total"],
                biz["amount"].get("currency", "CNY"),
                description,
                notify_url,
                time_expire,
                paid_at,
                int(paid_at is not None),
            ),
        )

    def native(self, biz: dict[str, Any]) -> Response:
        known = self.trade(out_trade_no=biz["out_trade_no"])
        if known is None:
            expire = datetime.fromisoformat(biz["time_expire"]).astimezone(UTC)
            self._add_trade(
                biz,
                state="NOTPAY",
                description=biz["description"],
                notify_url=biz.get("notify_url"),
                time_expire=expire.isoformat(),
            )
            known = self.trade(out_trade_no=biz["out_trade_no"])
            assert known is not None
            if NOPAY not in biz["description"]:
                self._spawn(self._customer_pays(known["transaction_id"]))
        return self.signed(200, {"code_url": f"weixin://wxpay/bizpayurl?pr={known['transaction_id'][-12:]}"})

    async def deduct(self, biz: dict[str, Any]) -> Response:
        """``POST /v3/global/papay/transactions``: a deduction on a saved agreement, whose
        ``contract_id`` plays the sandbox tokens (``SavedAgreements``), answered with the result."""
        known = self.trade(out_trade_no=biz["out_trade_no"])
        if known is not None:
            return self.signed(
                400,
                {
                    "code": "ORDERPAID" if known["state"] == "SUCCESS" else "OUT_TRADE_NO_USED",
                    "message": "商户订单号重复",
                },
            )
        outcome = await self.agreements.outcome(biz["out_trade_no"], biz.get("contract_id", ""))
        if outcome == "busy":
            return self.signed(500, {"code": "SYSTEM_ERROR", "message": "系统繁忙"})
        if outcome == "declined":
            return self.signed(403, {"code": "NOT_ENOUGH", "message": "用户账户余额不足"})
        now = datetime.now(UTC).isoformat()
        self._add_trade(
            biz,
            state="SUCCESS",
            description=biz.get("description", ""),
            notify_url=None,
            time_expire=now,
            paid_at=now,
        )
        t = self.trade(out_trade_no=biz["out_trade_no"])
        assert t is not None
        return self.signed(200, {**self.view(t), "trade_type": "AUTH"})

    def close(self, no: str) -> Response:
        t = self.trade(out_trade_no=no)
        if t is None:
            return self.signed(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        if t["state"] == "SUCCESS":
            return self.signed(400, {"code": "ORDERPAID", "message": "订单已支付"})
        self.db.execute("UPDATE trade SET state = 'CLOSED' WHERE out_trade_no = ?", (no,))
        return self.signed(204)

    def refund(self, biz: dict[str, Any]) -> Response:
        if self.fail_refunds > 0:
            self.fail_refunds -= 1
            return self.signed(500, {"code": "SYSTEM_ERROR", "message": "系统繁忙"})
        t = self.trade(transaction_id=biz.get("transaction_id"))
        if t is None or t["state"] not in ("SUCCESS", "REFUND"):
            return self.signed(400, {"code": "INVALID_REQUEST", "message": "订单状态不正确"})
        known = self.refund_of(biz["out_refund_no"])
        if known is None:
            done = self.db.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM refund WHERE transaction_id = ?", (t["transaction_id"],)
            ).fetchone()[0]
            if done + biz["amount"]["refund"] > t["total"]:
                return self.signed(400, {"code": "NOT_ENOUGH", "message": "退款金额超过可退金额"})
            self.db.execute(
                "INSERT INTO refund (out_refund_no, refund_id, transaction_id, amount) VALUES (?, ?, ?, ?)",
                (
                    biz["out_refund_no"],
                    "50000" + uuid.uuid4().hex[:24],
                    t["transaction_id"],
                    biz["amount"]["refund"],
                ),
            )
            self.db.execute(
                "UPDATE trade SET state = 'REFUND' WHERE transaction_id = ?", (t["transaction_id"],)
            )
            known = self.refund_of(biz["out_refund_no"])
        return self.signed(200, self.refund_view(known, t))

    def refund_of(self, out_refund_no: str) -> Any:
        return self.db.execute("SELECT * FROM refund WHERE out_refund_no = ?", (out_refund_no,)).fetchone()

    @staticmethod
    def refund_view(refund: Any, t: Any) -> dict[str, Any]:
        return {
            "refund_id": refund["refund_id"],
            "out_refund_no": refund["out_refund_no"],
            "transaction_id": refund["transaction_id"],
            "status": "SUCCESS",
            "amount": {"refund": refund["amount"], "total": t["total"], "currency": t["currency"]},
        }

    def refund_lookup(self, out_refund_no: str) -> Response:
        """``GET /v3/refund/domestic/refunds/{out_refund_no}``: the refund, or 404 ``RESOURCE_NOT_EXISTS``."""
        known = self.refund_of(out_refund_no)
        if known is None:
            return self.signed(404, {"code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在"})
        return self.signed(200, self.refund_view(known, self.trade(transaction_id=known["transaction_id"])))

    async def _customer_pays(self, transaction_id: str) -> None:
        await asyncio.sleep(self.pay_after)
        self.pay(transaction_id)

    def pay(self, transaction_id: str) -> bool:
        t = self.trade(transaction_id=transaction_id)
        if t is None or t["state"] != "NOTPAY":
            return False
        self.db.execute(
            "UPDATE trade SET state = 'SUCCESS', paid_at = ? WHERE transaction_id = ?",
            (datetime.now(UTC).isoformat(), transaction_id),
        )
        self._spawn(self.notify(transaction_id))
        return True

    def notification(self, t: sqlite3.Row) -> tuple[bytes, dict[str, str]]:
        nonce = secrets.token_hex(6)
        plain = json.dumps({**self.view(t), "trade_state": "SUCCESS"}).encode()
        cipher = AESGCM(self.apiv3).encrypt(nonce.encode(), plain, b"transaction")
        body = json.dumps(
            {
                "id": f"EV-{t['transaction_id']}",
                "create_time": datetime.now(UTC).isoformat(),
                "event_type": "TRANSACTION.SUCCESS",
                "resource_type": "encrypt-resource",
                "summary": "支付成功",
                "resource": {
                    "algorithm": "AEAD_AES_256_GCM",
                    "original_type": "transaction",
                    "ciphertext": base64.b64encode(cipher).decode(),
                    "associated_data": "transaction",
                    "nonce": nonce,
                },
            }
        )
        ts, n = str(int(time.time())), secrets.token_hex(16)
        return body.encode(), {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": n,
            "Wechatpay-Serial": PLATFORM_SERIAL,
            "Wechatpay-Signature": _sign(f"{ts}\n{n}\n{body}\n".encode(), self.key),
        }

    async def notify(self, transaction_id: str) -> None:
        delay, deadline = 0.5, time.monotonic() + 600
        while time.monotonic() < deadline:
            t = self.trade(transaction_id=transaction_id)
            if t is None or t["notified"] or not t["notify_url"]:
                return
            body, headers = self.notification(t)
            with contextlib.suppress(httpx.HTTPError):
                if (await self.client.post(t["notify_url"], content=body, headers=headers)).is_success:
                    self.db.execute(
                        "UPDATE trade SET notified = 1 WHERE transaction_id = ?", (transaction_id,)
                    )
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    def resume(self) -> None:
        for row in self.db.execute(
            "SELECT transaction_id, state, description FROM trade WHERE notified = 0"
        ).fetchall():
            if row["state"] == "SUCCESS":
                self._spawn(self.notify(row["transaction_id"]))
            elif row["state"] == "NOTPAY" and NOPAY not in row["description"]:
                self._spawn(self._customer_pays(row["transaction_id"]))


def create_app(standin: WechatPayStandIn) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        standin.resume()
        yield
        for task in list(standin.tasks):
            task.cancel()
        await standin.client.aclose()

    app = FastAPI(title="WeChat Pay stand-in", lifespan=lifespan)

    async def authentic(request: Request) -> tuple[bool, dict[str, Any]]:
        body = await request.body()
        return standin.authentic(request, body), (json.loads(body) if body else {})

    def refused() -> Response:
        return standin.signed(401, {"code": "SIGN_ERROR", "message": "签名错误"})

    @app.post("/v3/pay/transactions/native")
    async def native(request: Request) -> Response:
        ok, biz = await authentic(request)
        return standin.native(biz) if ok else refused()

    @app.post("/v3/global/papay/transactions")
    async def deduct(request: Request) -> Response:
        ok, biz = await authentic(request)
        return await standin.deduct(biz) if ok else refused()

    @app.get("/v3/pay/transactions/out-trade-no/{no}")
    async def by_out_trade_no(request: Request, no: str) -> Response:
        ok, _ = await authentic(request)
        t = standin.trade(out_trade_no=no) if ok else None
        return (
            refused()
            if not ok
            else standin.signed(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
            if t is None
            else standin.signed(200, standin.view(t))
        )

    @app.get("/v3/pay/transactions/id/{transaction_id}")
    async def by_id(request: Request, transaction_id: str) -> Response:
        ok, _ = await authentic(request)
        t = standin.trade(transaction_id=transaction_id) if ok else None
        return (
            refused()
            if not ok
            else standin.signed(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
            if t is None
            else standin.signed(200, standin.view(t))
        )

    @app.post("/v3/pay/transactions/out-trade-no/{no}/close")
    async def close(request: Request, no: str) -> Response:
        ok, _ = await authentic(request)
        return standin.close(no) if ok else refused()

    @app.post("/v3/refund/domestic/refunds")
    async def refund(request: Request) -> Response:
        ok, biz = await authentic(request)
        return standin.refund(biz) if ok else refused()

    @app.get("/v3/refund/domestic/refunds/{out_refund_no}")
    async def refund_lookup(request: Request, out_refund_no: str) -> Response:
        ok, _ = await authentic(request)
        return standin.refund_lookup(out_refund_no) if ok else refused()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def books() -> dict[str, Any]:
        return {
            "trades": [dict(r) for r in standin.db.execute("SELECT * FROM trade").fetchall()],
            "refunds": [dict(r) for r in standin.db.execute("SELECT * FROM refund").fetchall()],
        }

    add_control_routes(app, standin, books)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8013)
    parser.add_argument("--dir", default=".var/standins/wechat_pay")
    parser.add_argument("--pay-after", type=float, default=1.5)
    args = parser.parse_args(argv)
    standin = WechatPayStandIn(Path(args.dir), pay_after=args.pay_after)
    uvicorn.run(
        create_app(standin), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
