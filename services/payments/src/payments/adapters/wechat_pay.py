"""WeChat Pay (微信支付) API v3 by its documented protocol, over httpx: Native payments (a
``code_url`` the customer scans), deductions on a saved agreement (委托代扣, ``contract_id``: the
v3 deduction API, ``POST /v3/global/papay/transactions``), query and close by the merchant's
``out_trade_no``, refunds by ``out_refund_no``.

Every request is signed ``WECHATPAY2-SHA256-RSA2048`` (SHA256withRSA over
``method\\nurl\\ntimestamp\\nnonce\\nbody\\n`` with the merchant's API key, its certificate serial
named); every answer and notification is verified against WeChat Pay's platform key
(``Wechatpay-Timestamp``/``-Nonce``/``-Signature``/``-Serial`` over ``timestamp\\nnonce\\nbody\\n``,
at most 5 minutes old), and a notification's ``resource`` is decrypted with the APIv3 key
(AEAD_AES_256_GCM). ``wechatpayv3`` is not used: it is synchronous (``requests``).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from payments.adapters.alipay import load_private_key, load_public_key, sign, verify
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

BEIJING = timezone(timedelta(hours=8))
_STATE = {
    "SUCCESS": "captured",
    "REFUND": "captured",
    "CLOSED": "voided",
    "REVOKED": "voided",
    "PAYERROR": "declined",
}


def out_trade_no(key: str) -> str:
    """``out_trade_no``/``out_refund_no``: 6 to 32 letters, digits, ``_``, ``-``, ``|``, ``*``."""
    return re.sub(r"[^A-Za-z0-9_\-|*]", "_", key)[-32:]


class WechatPayAdapter:
    name = "wechat_pay"
    acknowledgement = ""

    def __init__(
        self,
        *,
        base_url: str,
        mchid: str,
        appid: str,
        serial_no: str,
        private_key: str,
        platform_public_key: str,
        platform_serial: str,
        apiv3_key: str,
        notify_url: str,
        merchant_category_code: str = "5311",
        timeout: float = 10.0,
    ) -> None:
        self.merchant_category_code = merchant_category_code
        self.base_url, self.mchid, self.appid, self.serial_no = base_url.rstrip("/"), mchid, appid, serial_no
        self.platform_serial, self.notify_url = platform_serial, notify_url
        self._key = load_private_key(private_key)
        self._platform = load_public_key(platform_public_key)
        self._apiv3 = apiv3_key.encode()
        self._client = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _authorization(self, method: str, path: str, body: str) -> str:
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        signature = sign(f"{method}\n{path}\n{ts}\n{nonce}\n{body}\n", self._key)
        return (
            f'WECHATPAY2-SHA256-RSA2048 mchid="{self.mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{ts}",serial_no="{self.serial_no}"'
        )

    def _verified(self, headers: Mapping[str, str], body: str) -> bool:
        ts, nonce = headers.get("wechatpay-timestamp", ""), headers.get("wechatpay-nonce", "")
        if (
            headers.get("wechatpay-serial") != self.platform_serial
            or not ts.isdigit()
            or abs(time.time() - int(ts)) > 300
        ):
            return False
        return verify(f"{ts}\n{nonce}\n{body}\n", headers.get("wechatpay-signature", ""), self._platform)

    async def _call(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False) if payload is not None else ""
        headers = {
            "Authorization": self._authorization(method, path, body),
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        try:
            response = await self._client.request(
                method, self.base_url + path, content=body.encode(), headers=headers
            )
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"wechat pay {path}") from exc
        except httpx.TransportError as exc:
            raise Transient(f"wechat pay {path}: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise Transient(f"wechat pay {path}: HTTP {response.status_code}")
        if not self._verified(response.headers, response.text):
            raise Transient(f"wechat pay {path}: the answer's signature does not verify")
        return response.status_code, (response.json() if response.text else {})

    def trade_key(self, key: str) -> str:
        return out_trade_no(key)

    def _order(self, key: str, amount: Decimal, currency: str, subject: str) -> dict[str, Any]:
        """What a deduction and a Native payment both tell of the merchant's order."""
        return {
            "appid": self.appid,
            "mchid": self.mchid,
            "description": subject[:127],
            "out_trade_no": out_trade_no(key),
            "notify_url": self.notify_url,
            "amount": {"total": int(amount * 100), "currency": currency},
        }

    async def charge(self, *, key: str, token: str, amount: Decimal, currency: str, subject: str) -> str:
        """A deduction on the customer's saved agreement (``token``: its ``contract_id``), by the API
        v3 deduction ``POST /v3/global/papay/transactions``, which answers with the result. The same
        ``out_trade_no`` again is the same order: one already paid is looked up, not paid twice."""
        status, answer = await self._call(
            "POST",
            "/v3/global/papay/transactions",
            {
                **self._order(key, amount, currency, subject),
                "contract_id": token,
                "merchant_category_code": self.merchant_category_code,
            },
        )
        state = answer.get("trade_state")
        if status == 200 and state == "SUCCESS":
            return str(answer["transaction_id"])
        if answer.get("code") in ("ORDERPAID", "ORDER_PAID", "OUT_TRADE_NO_USED"):  # an earlier call paid
            known = await self.query(key)
            if known is not None and known.status == "captured" and known.reference:
                return known.reference
        if status == 200 and state in ("USERPAYING", "ACCEPT", "NOTPAY"):
            raise Transient(f"wechat pay deduction: {state}")
        raise Declined(f"wechat pay deduction: {answer.get('code') or state or status}")

    async def start(
        self, *, key: str, amount: Decimal, currency: str, subject: str, expires_at: datetime
    ) -> Action:
        status, answer = await self._call(
            "POST",
            "/v3/pay/transactions/native",
            {
                **self._order(key, amount, currency, subject),
                "time_expire": expires_at.astimezone(BEIJING).isoformat(timespec="seconds"),
            },
        )
        if status != 200 or "code_url" not in answer:
            raise Declined(f"wechat pay native: {answer.get('code')}")
        return Action(type="qr_code", url=answer["code_url"], expires_at=expires_at)

    async def query(self, key: str, reference: str | None = None) -> Charge | None:
        status, answer = await self._call(
            "GET", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no(key))}?mchid={self.mchid}"
        )
        if status == 404:
            return None
        if status != 200:
            raise Transient(f"wechat pay query: {answer.get('code')}")
        return Charge(
            key=key,
            status=_STATE.get(answer.get("trade_state", ""), "pending"),
            reference=answer.get("transaction_id"),
            amount=Decimal(answer.get("amount", {}).get("total", 0)).scaleb(-2),
            currency=answer.get("amount", {}).get("currency", "CNY"),
        )

    async def close(
        self, key: str, *, amount: Decimal, currency: str, reference: str | None = None
    ) -> Charge:
        status, answer = await self._call(
            "POST",
            f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no(key))}/close",
            {"mchid": self.mchid},
        )
        if status == 204:
            return Charge(key, "voided", None, amount, currency)
        known = await self.query(key)  # ORDERPAID (or never made)
        if known is None:
            return Charge(key, "voided", None, amount, currency)
        if known.status == "pending":
            raise Transient(f"wechat pay close: {answer.get('code')}")
        return known

    async def complete(self, key: str, *, reference: str) -> Charge:
        raise Unsupported("its notifications say paid: there is nothing to capture after approval")

    async def refund(
        self, *, payment_ref: str, amount: Decimal, idempotency_key: str, currency: str = "CNY"
    ) -> str:
        status, paid = await self._call(
            "GET", f"/v3/pay/transactions/id/{quote(payment_ref)}?mchid={self.mchid}"
        )
        if status != 200:
            raise Transient(f"wechat pay refund: the payment {payment_ref} is not found ({paid.get('code')})")
        status, answer = await self._call(
            "POST",
            "/v3/refund/domestic/refunds",
            {
                "transaction_id": payment_ref,
                "out_refund_no": out_trade_no(idempotency_key),
                "amount": {
                    "refund": int(amount * 100),
                    "total": paid["amount"]["total"],
                    "currency": currency,
                },
            },
        )
        if status != 200 or answer.get("status") not in ("SUCCESS", "PROCESSING"):
            raise Transient(f"wechat pay refund: {answer.get('code') or answer.get('status')}")
        return answer["refund_id"]

    async def refund_status(
        self, *, payment_ref: str, idempotency_key: str, reference: str | None
    ) -> RefundSeen | None:
        """``GET /v3/refund/domestic/refunds/{out_refund_no}``."""
        status, answer = await self._call(
            "GET", f"/v3/refund/domestic/refunds/{quote(out_trade_no(idempotency_key))}"
        )
        if status == 404:
            return None
        if status != 200:
            raise Transient(f"wechat pay refund query: {answer.get('code') or status}")
        if answer.get("transaction_id") not in (None, payment_ref):
            return None
        state = {"SUCCESS": "succeeded", "PROCESSING": "pending"}.get(answer.get("status", ""), "failed")
        amount = answer.get("amount") or {}
        return RefundSeen(
            answer.get("refund_id"),
            state,
            Decimal(int(amount.get("refund", 0))) / 100,
            amount.get("currency", "CNY"),
        )

    async def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        text = body.decode("utf-8", errors="replace")
        if not self._verified({k.lower(): v for k, v in headers.items()}, text):
            raise BadSignature("wechat pay notification: the signature does not verify")
        try:
            note = json.loads(text)
            resource = note["resource"]
            plain = AESGCM(self._apiv3).decrypt(
                resource["nonce"].encode(),
                base64.b64decode(resource["ciphertext"]),
                (resource.get("associated_data") or "").encode(),
            )
            transaction = json.loads(plain)
        except (KeyError, ValueError, InvalidTag) as exc:
            raise BadSignature("wechat pay notification: the resource does not decrypt") from exc
        if transaction.get("mchid") != self.mchid:
            raise BadSignature("wechat pay notification: not for this merchant")
        return Notification(
            id=note.get("id", ""),
            key=transaction["out_trade_no"],
            status=_STATE.get(transaction.get("trade_state", ""), "pending"),
            reference=transaction.get("transaction_id"),
            amount=Decimal(transaction.get("amount", {}).get("total", 0)).scaleb(-2),
        )
