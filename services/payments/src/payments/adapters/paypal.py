"""PayPal by its REST APIs over httpx: Orders v2 (an order the customer approves on PayPal's page,
then captured, or one paid at once with the customer's saved PayPal, its vault id), Payments v2
refunds of the capture, and webhook verification by PayPal's own ``verify-webhook-signature`` API
(the documented postback check of the transmission headers).

OAuth 2 client credentials give the bearer token (kept until it expires). Every write carries
``PayPal-Request-Id`` (the idempotency key). ``paypal-server-sdk`` is not used: it is synchronous
and picks its server from a fixed environment list, where this adapter takes the base URL from
configuration and runs on the event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from payments.adapters.base import (
    Action,
    BadSignature,
    Charge,
    Declined,
    Notification,
    RefundSeen,
    Transient,
)


def _order_id(reference: str) -> str:
    """The payment's reference is PayPal's order id, and once captured ``<order id>/<capture id>``."""
    return reference.split("/", 1)[0]


_HEADERS = (
    "paypal-transmission-id",
    "paypal-transmission-time",
    "paypal-transmission-sig",
    "paypal-cert-url",
    "paypal-auth-algo",
)


def _unit(key: str, amount: Decimal, currency: str, subject: str) -> dict[str, Any]:
    """The order's one purchase unit, named by ``key`` (the idempotency key) in both its ids."""
    return {
        "reference_id": key,
        "custom_id": key,
        "description": subject[:127],
        "amount": {"currency_code": currency, "value": format(amount, ".2f")},
    }


class PayPalAdapter:
    name = "paypal"
    acknowledgement = ""

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        webhook_id: str,
        return_url: str,
        timeout: float = 10.0,
    ) -> None:
        self.base_url, self.client_id, self.client_secret = base_url.rstrip("/"), client_id, client_secret
        self.webhook_id, self.return_url = webhook_id, return_url
        self._client = httpx.AsyncClient(timeout=timeout)
        self._token: tuple[str, float] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _bearer(self) -> str:
        if self._token is None or self._token[1] < time.monotonic() + 60:
            r = await self._send(
                "POST",
                "/v1/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(self.client_id, self.client_secret),
            )
            if r.status_code != 200:
                raise Transient(f"paypal oauth: HTTP {r.status_code}")
            body = r.json()
            self._token = (body["access_token"], time.monotonic() + float(body.get("expires_in", 300)))
        return self._token[0]

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = await self._client.request(method, self.base_url + path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"paypal {path}") from exc
        except httpx.TransportError as exc:
            raise Transient(f"paypal {path}: {type(exc).__name__}") from exc
        if r.status_code >= 500 or r.status_code == 429:
            raise Transient(f"paypal {path}: HTTP {r.status_code}")
        return r

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, request_id: str | None = None
    ) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {await self._bearer()}",
            "Content-Type": "application/json",
            "Prefer": "return=representation",
            **({"PayPal-Request-Id": request_id} if request_id else {}),
        }
        return await self._send(method, path, json=body, headers=headers)

    def trade_key(self, key: str) -> str:
        return key

    async def charge(self, *, key: str, token: str, amount: Decimal, currency: str, subject: str) -> str:
        """A payment with the customer's saved PayPal (``token``: its vault id): an Orders v2 order
        with ``payment_source.paypal.vault_id``, which PayPal completes and captures at once.
        PayPal finds an order only by its id, so an answer that was lost is recovered by sending
        the same request again under the same ``PayPal-Request-Id``, which PayPal answers with the
        order it made: a timeout is retried as a transient failure, never taken for "not paid"."""
        body = {
            "intent": "CAPTURE",
            "purchase_units": [_unit(key, amount, currency, subject)],
            "payment_source": {"paypal": {"vault_id": token}},
        }
        try:
            r = await self._call("POST", "/v2/checkout/orders", body, request_id=f"charge-{key}")
        except TimeoutError as exc:
            raise Transient("paypal vault payment: no answer; the same request id is sent again") from exc
        if r.status_code in (200, 201):
            charge = self._charge(key, r.json())
            if charge.status == "captured" and charge.reference:
                return charge.reference
        issue = (r.json().get("details") or [{}])[0].get("issue") if r.content else None
        raise Declined(f"paypal vault payment: {issue or r.json().get('status') or r.status_code}")

    async def start(
        self, *, key: str, amount: Decimal, currency: str, subject: str, expires_at: datetime
    ) -> Action:
        r = await self._call(
            "POST",
            "/v2/checkout/orders",
            {
                "intent": "CAPTURE",
                "purchase_units": [_unit(key, amount, currency, subject)],
                "payment_source": {
                    "paypal": {
                        "experience_context": {
                            "user_action": "PAY_NOW",
                            "return_url": self.return_url,
                            "cancel_url": self.return_url,
                        }
                    }
                },
            },
            request_id=f"create-{key}",
        )
        if r.status_code not in (200, 201):
            raise Declined(f"paypal create order: {r.json().get('name', r.status_code)}")
        order = r.json()
        href = next(link["href"] for link in order["links"] if link["rel"] in ("payer-action", "approve"))
        return Action(type="redirect", url=href, expires_at=expires_at, reference=order["id"])

    async def query(self, key: str, reference: str | None = None) -> Charge | None:
        if reference is None:
            return None
        r = await self._call("GET", f"/v2/checkout/orders/{_order_id(reference)}")
        if r.status_code == 404:
            return None
        return self._charge(key, r.json())

    async def close(
        self, key: str, *, amount: Decimal, currency: str, reference: str | None = None
    ) -> Charge:
        """PayPal has no cancel for an order: one not approved in the window is left to expire, and
        an approval that comes later is never captured. One approved in time is captured."""
        known = await self.query(key, reference)
        if known is None or known.status == "pending":
            return Charge(key, "voided", None, amount, currency)
        if known.status == "approved" and reference is not None:
            return await self.complete(key, reference=reference)
        return known

    async def complete(self, key: str, *, reference: str) -> Charge:
        order_id = _order_id(reference)
        r = await self._call(
            "POST", f"/v2/checkout/orders/{order_id}/capture", {}, request_id=f"capture-{key}"
        )
        if r.status_code == 422 and r.json().get("details", [{}])[0].get("issue") == "ORDER_ALREADY_CAPTURED":
            r = await self._call("GET", f"/v2/checkout/orders/{order_id}")
        if r.status_code not in (200, 201):
            raise Transient(f"paypal capture: {r.json().get('name', r.status_code)}")
        return self._charge(key, r.json())

    async def refund(
        self, *, payment_ref: str, amount: Decimal, idempotency_key: str, currency: str = "CNY"
    ) -> str:
        r = await self._call(
            "POST",
            f"/v2/payments/captures/{payment_ref.rsplit('/', 1)[-1]}/refund",
            {"amount": {"value": format(amount, ".2f"), "currency_code": currency}},
            request_id=f"refund-{idempotency_key}",
        )
        if r.status_code not in (200, 201) or r.json().get("status") not in ("COMPLETED", "PENDING"):
            raise Transient(f"paypal refund: {r.json().get('name', r.status_code)}")
        return r.json()["id"]

    async def refund_status(
        self, *, payment_ref: str, idempotency_key: str, reference: str | None
    ) -> RefundSeen | None:
        """``GET /v2/payments/refunds/{id}`` (the id ``refund`` answered); it links up to its capture."""
        if reference is None:
            return None
        r = await self._call("GET", f"/v2/payments/refunds/{reference}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise Transient(f"paypal refund lookup: {r.json().get('name', r.status_code)}")
        refund = r.json()
        capture = payment_ref.rsplit("/", 1)[-1]
        ups = [link["href"] for link in refund.get("links", []) if link.get("rel") == "up"]
        if ups and not any(href.rstrip("/").endswith(f"/captures/{capture}") for href in ups):
            return None
        state = {"COMPLETED": "succeeded", "PENDING": "pending"}.get(refund.get("status", ""), "failed")
        amount = refund.get("amount") or {}
        return RefundSeen(refund["id"], state, Decimal(amount.get("value", "0")), amount.get("currency_code"))

    async def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        lowered = {k.lower(): v for k, v in headers.items()}
        if any(not lowered.get(h) for h in _HEADERS):
            raise BadSignature("paypal webhook: transmission headers missing")
        try:
            event = json.loads(body)
        except ValueError as exc:
            raise BadSignature("paypal webhook: not JSON") from exc
        r = await self._call(
            "POST",
            "/v1/notifications/verify-webhook-signature",
            {
                "auth_algo": lowered["paypal-auth-algo"],
                "cert_url": lowered["paypal-cert-url"],
                "transmission_id": lowered["paypal-transmission-id"],
                "transmission_sig": lowered["paypal-transmission-sig"],
                "transmission_time": lowered["paypal-transmission-time"],
                "webhook_id": self.webhook_id,
                "webhook_event": event,
            },
        )
        if r.status_code != 200 or r.json().get("verification_status") != "SUCCESS":
            raise BadSignature("paypal webhook: PayPal did not verify the signature")
        resource = event.get("resource") or {}
        units = resource.get("purchase_units") or [{}]
        kind = event.get("event_type")
        # completed or only approved: the capture (idempotent) gives the capture id refunds need
        status = "approved" if kind in ("CHECKOUT.ORDER.APPROVED", "CHECKOUT.ORDER.COMPLETED") else "pending"
        return Notification(
            id=event.get("id", ""),
            key=units[0].get("custom_id") or units[0].get("reference_id", ""),
            status=status,
            reference=resource.get("id"),
            amount=None,
        )

    @staticmethod
    def _charge(key: str, order: dict[str, Any]) -> Charge:
        unit = (order.get("purchase_units") or [{}])[0]
        captures = (unit.get("payments") or {}).get("captures") or []
        done = next((c for c in captures if c.get("status") == "COMPLETED"), None)
        status = {"COMPLETED": "captured", "APPROVED": "approved", "VOIDED": "voided"}.get(
            str(order.get("status")), "pending"
        )
        amount = (done or unit).get("amount") or {}
        return Charge(
            key=key,
            status="captured" if done else ("pending" if status == "captured" else status),
            reference=f"{order['id']}/{done['id']}" if done else None,
            amount=Decimal(amount.get("value", "0")),
            currency=amount.get("currency_code", ""),
        )
