"""Alipay (支付宝) by its documented OpenAPI protocol: the gateway's form-encoded requests signed
RSA2 (SHA256withRSA over the sorted ``key=value`` pairs), responses and asynchronous notifications
verified with Alipay's public key.

Used: ``alipay.trade.precreate`` (a QR code the customer scans; ``time_expire`` is the payment
window, after which Alipay refuses it), ``alipay.trade.pay`` (a deduction on a saved agreement,
``GENERAL_WITHHOLDING``), ``alipay.trade.query``, ``alipay.trade.close`` and
``alipay.trade.refund`` (``out_request_no``: the same one again is the same refund). The merchant's
order number (``out_trade_no``) is the idempotency key. ``python-alipay-sdk`` is not used: it is
synchronous (blocking ``urlopen`` calls) and ties its gateway to a ``debug`` flag, where this
adapter takes the gateway URL from configuration and runs on the event loop.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
PAID = {"TRADE_SUCCESS", "TRADE_FINISHED"}


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """A PEM key, or the bare base64 (PKCS#8) that Alipay's key tool writes."""
    pem = (
        text
        if "-----BEGIN" in text
        else f"-----BEGIN PRIVATE KEY-----\n{text.strip()}\n-----END PRIVATE KEY-----\n"
    )
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def load_public_key(text: str) -> rsa.RSAPublicKey:
    pem = (
        text
        if "-----BEGIN" in text
        else f"-----BEGIN PUBLIC KEY-----\n{text.strip()}\n-----END PUBLIC KEY-----\n"
    )
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def content_to_sign(params: Mapping[str, str], *, drop: tuple[str, ...] = ("sign",)) -> str:
    """Alipay's string to sign: every non-empty parameter but ``drop``, sorted, ``k=v`` joined by ``&``."""
    return "&".join(
        f"{k}={params[k]}" for k in sorted(params) if k not in drop and params[k] not in ("", None)
    )


def sign(text: str, key: rsa.RSAPrivateKey) -> str:
    return base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(text: str, signature: str, key: rsa.RSAPublicKey) -> bool:
    try:
        key.verify(base64.b64decode(signature), text.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def trade_no_for(key: str) -> str:
    """Alipay's ``out_trade_no`` and ``out_request_no`` take letters, digits and ``_``, 64 at most."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)[:64]


class AlipayAdapter:
    name = "alipay"
    acknowledgement = "success"

    def __init__(
        self,
        *,
        gateway: str,
        app_id: str,
        private_key: str,
        alipay_public_key: str,
        notify_url: str,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.gateway, self.app_id, self.notify_url = gateway, app_id, notify_url
        self._key = load_private_key(private_key)
        self._alipay_key = load_public_key(alipay_public_key)
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, biz: dict[str, Any], **extra: str) -> dict[str, Any]:
        params = {
            "app_id": self.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "biz_content": json.dumps(biz, separators=(",", ":"), ensure_ascii=False),
            **extra,
        }
        params["sign"] = sign(content_to_sign(params), self._key)
        try:
            response = await self._client.post(self.gateway, data=params)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"alipay {method}") from exc
        except httpx.TransportError as exc:
            raise Transient(f"alipay {method}: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise Transient(f"alipay {method}: HTTP {response.status_code}")
        return self._verified(method, response.text)

    def _verified(self, method: str, text: str) -> dict[str, Any]:
        """The response object, once its signature over its exact text verifies."""
        node = method.replace(".", "_") + "_response"
        body = json.loads(text)
        if node not in body:
            node = "error_response"
        answer = body.get(node)
        if not isinstance(answer, dict):
            raise Transient(f"alipay {method}: no answer in {text[:100]!r}")
        if "sign" in body or answer.get("code") == "10000":
            start = text.index(":", text.index(f'"{node}"')) + 1
            end = text.rindex(',"sign"') if '"sign"' in text else len(text) - 1
            if not verify(text[start:end].strip(), body.get("sign", ""), self._alipay_key):
                raise Transient(f"alipay {method}: the answer's signature does not verify")
        if answer.get("code") in ("20000", "20001") or answer.get("sub_code", "").endswith("SYSTEM_ERROR"):
            raise Transient(f"alipay {method}: {answer.get('sub_code') or answer.get('code')}")
        return answer

    def trade_key(self, key: str) -> str:
        return trade_no_for(key)

    async def charge(self, *, key: str, token: str, amount: Decimal, currency: str, subject: str) -> str:
        """A deduction on the customer's saved agreement (``token``: its ``agreement_no``):
        ``alipay.trade.pay`` with ``product_code`` ``GENERAL_WITHHOLDING``, answered at once. The
        same ``out_trade_no`` again is the same trade: one already paid is looked up, not paid twice."""
        biz: dict[str, Any] = {
            "out_trade_no": trade_no_for(key),
            "total_amount": format(amount, ".2f"),
            "subject": subject[:256],
            "product_code": "GENERAL_WITHHOLDING",
            "agreement_params": {"agreement_no": token},
        }
        if currency != "CNY":
            biz["trans_currency"] = currency
        answer = await self._call("alipay.trade.pay", biz, notify_url=self.notify_url)
        sub_code = answer.get("sub_code", "")
        if answer.get("code") == "10000":
            return str(answer["trade_no"])
        if sub_code == "ACQ.TRADE_HAS_SUCCESS":  # paid by an earlier call whose answer was lost
            known = await self.query(key)
            if known is not None and known.status == "captured" and known.reference:
                return known.reference
        if answer.get("code") == "10003":  # waiting for the customer: never for a deduction; ask again
            raise Transient("alipay pay: the trade is still being processed")
        raise Declined(f"alipay pay: {sub_code or answer.get('code')}")

    async def start(
        self, *, key: str, amount: Decimal, currency: str, subject: str, expires_at: datetime
    ) -> Action:
        biz: dict[str, Any] = {
            "out_trade_no": trade_no_for(key),
            "total_amount": format(amount, ".2f"),
            "subject": subject[:256],
            "time_expire": expires_at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        }
        if currency != "CNY":
            biz["trans_currency"] = currency
        answer = await self._call("alipay.trade.precreate", biz, notify_url=self.notify_url)
        if answer.get("code") != "10000":
            raise Declined(f"alipay precreate: {answer.get('sub_code') or answer.get('code')}")
        return Action(type="qr_code", url=answer["qr_code"], expires_at=expires_at)

    async def query(self, key: str, reference: str | None = None) -> Charge | None:
        answer = await self._call("alipay.trade.query", {"out_trade_no": trade_no_for(key)})
        if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return None
        if answer.get("code") != "10000":
            raise Transient(f"alipay query: {answer.get('sub_code') or answer.get('code')}")
        return self._charge(key, answer)

    async def close(
        self, key: str, *, amount: Decimal, currency: str, reference: str | None = None
    ) -> Charge:
        answer = await self._call("alipay.trade.close", {"out_trade_no": trade_no_for(key)})
        if answer.get("code") == "10000" or answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            # not scanned before time_expire: Alipay no longer takes it
            return Charge(key, "voided", None, amount, currency)
        known = await self.query(key)  # ACQ.TRADE_STATUS_ERROR: paid (or closed) meanwhile
        if known is None or known.status == "pending":
            raise Transient(f"alipay close: {answer.get('sub_code') or answer.get('code')}")
        return known

    async def complete(self, key: str, *, reference: str) -> Charge:
        raise Unsupported("its notifications say paid: there is nothing to capture after approval")

    async def refund(
        self, *, payment_ref: str, amount: Decimal, idempotency_key: str, currency: str = "CNY"
    ) -> str:
        answer = await self._call(
            "alipay.trade.refund",
            {
                "trade_no": payment_ref,
                "refund_amount": format(amount, ".2f"),
                "out_request_no": trade_no_for(idempotency_key),
            },
        )
        if answer.get("code") != "10000":
            raise Transient(f"alipay refund: {answer.get('sub_code') or answer.get('code')}")
        return f"{answer.get('trade_no', payment_ref)}:{trade_no_for(idempotency_key)}"

    async def refund_status(
        self, *, payment_ref: str, idempotency_key: str, reference: str | None
    ) -> RefundSeen | None:
        """``alipay.trade.fastpay.refund.query``: with ``refund_amount`` and an empty or
        ``REFUND_SUCCESS`` status it was made; answered without refund fields, it was not."""
        answer = await self._call(
            "alipay.trade.fastpay.refund.query",
            {"trade_no": payment_ref, "out_request_no": trade_no_for(idempotency_key)},
        )
        if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return None
        if answer.get("code") != "10000":
            raise Transient(f"alipay refund query: {answer.get('sub_code') or answer.get('code')}")
        if not answer.get("refund_amount"):
            return None
        status = "succeeded" if answer.get("refund_status") in (None, "", "REFUND_SUCCESS") else "pending"
        return RefundSeen(
            f"{answer.get('trade_no', payment_ref)}:{trade_no_for(idempotency_key)}",
            status,
            Decimal(answer["refund_amount"]),
            None,  # Alipay answers in the trade's currency
        )

    async def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """An asynchronous notification: form fields, signed over all of them but ``sign`` and
        ``sign_type``; it must be for this merchant's app."""
        fields = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        if not fields.get("sign") or not verify(
            content_to_sign(fields, drop=("sign", "sign_type")), fields["sign"], self._alipay_key
        ):
            raise BadSignature("alipay notification: the signature does not verify")
        if (
            fields.get("app_id") != self.app_id
            or not fields.get("out_trade_no")
            or not fields.get("notify_id")
        ):
            raise BadSignature("alipay notification: not for this app")
        status = fields.get("trade_status", "")
        return Notification(
            id=fields["notify_id"],
            key=fields["out_trade_no"],
            status="captured" if status in PAID else "voided" if status == "TRADE_CLOSED" else "pending",
            reference=fields.get("trade_no"),
            amount=Decimal(fields["total_amount"]) if fields.get("total_amount") else None,
        )

    @staticmethod
    def _charge(key: str, answer: dict[str, Any]) -> Charge:
        status = answer.get("trade_status", "")
        return Charge(
            key=key,
            status="captured" if status in PAID else "voided" if status == "TRADE_CLOSED" else "pending",
            reference=answer.get("trade_no"),
            amount=Decimal(answer.get("total_amount") or "0"),
            currency="CNY",
        )
