"""Cards through the card processor's official SDK (``stripe``): a PaymentIntent confirmed at once
with the token, its idempotency key the capture's; looked up by that key in its metadata (the
Search API), cancelled when it never completed, refunded all or part (the refund key as the
idempotency key); Stripe's signed webhooks (``Stripe-Signature``, verified by the SDK with the
endpoint's secret and a 300 s tolerance) tell a payment that succeeded while its answer was lost.

The API's base address, the secret key and the webhook secret come from configuration: the same
code talks to Stripe or to the stand-in of local runs. The SDK's own retries are off: payments
retries transient failures itself, with the same idempotency key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

import httpx
import stripe

from events.types import CURRENCY_EXPONENT
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

_STATUS = {"succeeded": "captured", "canceled": "voided", "requires_payment_method": "declined"}


def minor_units(amount: Decimal, currency: str) -> int:
    return int((amount * (10 ** CURRENCY_EXPONENT.get(currency, 2))).to_integral_value())


def major_units(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-CURRENCY_EXPONENT.get(currency.upper(), 2))


def _no_answer(exc: stripe.APIConnectionError) -> Exception:
    """A request that got no answer: past its timeout, the outcome is unknown (looked up by its
    key); a connection that failed (refused, or closed by the processor as the request went out on
    it, as an idle kept-alive one can be) is tried again under the same idempotency key, never
    taken for a processor that did not answer in time."""
    if isinstance(exc.__cause__, httpx.TimeoutException):
        return TimeoutError("card processor: no answer")
    return Transient(
        f"card processor: {type(exc.__cause__).__name__ if exc.__cause__ else 'connection failed'}"
    )


class StripeCardAdapter:
    name = "stripe"
    acknowledgement = ""

    def __init__(
        self, *, api_key: str, webhook_secret: str, api_base: str | None = None, timeout: float = 10.0
    ) -> None:
        self.webhook_secret = webhook_secret
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=stripe.HTTPXClient(timeout=timeout),
        )

    async def aclose(self) -> None:
        client = self._client._requestor._client
        if client is not None:
            await client.close_async()

    def trade_key(self, key: str) -> str:
        return key

    async def charge(self, *, key: str, token: str, amount: Decimal, currency: str, subject: str) -> str:
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params={
                    "amount": minor_units(amount, currency),
                    "currency": currency.lower(),
                    "payment_method": token,
                    "confirm": True,
                    "metadata": {"oms_key": key},
                    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                },
                options={"idempotency_key": key},
            )
        except stripe.CardError as exc:
            raise Declined(exc.code or "card_declined") from exc
        except stripe.APIConnectionError as exc:
            raise _no_answer(exc) from exc
        except (stripe.RateLimitError, stripe.APIError) as exc:
            raise Transient(f"card processor: {type(exc).__name__}") from exc
        if intent.status != "succeeded":
            raise Declined(intent.status)
        return intent.id

    async def start(
        self, *, key: str, amount: Decimal, currency: str, subject: str, expires_at: datetime
    ) -> Action:
        raise Unsupported("a card is charged with its token")

    async def query(self, key: str, reference: str | None = None) -> Charge | None:
        try:
            found = await self._client.v1.payment_intents.search_async(
                params={"query": f"metadata['oms_key']:'{key}'"}
            )
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise Transient(f"card processor: {type(exc).__name__}") from exc
        if not found.data:
            return None
        intent = next((i for i in found.data if i.status == "succeeded"), found.data[0])
        return Charge(
            key=key,
            status=_STATUS.get(intent.status, "pending"),
            reference=intent.id if intent.status == "succeeded" else None,
            amount=major_units(intent.amount, intent.currency),
            currency=intent.currency.upper(),
        )

    async def close(
        self, key: str, *, amount: Decimal, currency: str, reference: str | None = None
    ) -> Charge:
        known = await self.query(key)
        if known is None or known.status in ("captured", "voided", "declined"):
            return known or Charge(key=key, status="voided", reference=None, amount=amount, currency=currency)
        found = await self._client.v1.payment_intents.search_async(
            params={"query": f"metadata['oms_key']:'{key}'"}
        )
        try:
            await self._client.v1.payment_intents.cancel_async(found.data[0].id)
        except stripe.InvalidRequestError:  # succeeded meanwhile
            pass
        return await self.query(key) or Charge(
            key=key, status="voided", reference=None, amount=amount, currency=currency
        )

    async def complete(self, key: str, *, reference: str) -> Charge:
        raise Unsupported("its notifications say paid: there is nothing to capture after approval")

    async def refund(
        self, *, payment_ref: str, amount: Decimal, idempotency_key: str, currency: str = "CNY"
    ) -> str:
        try:
            refund = await self._client.v1.refunds.create_async(
                params={"payment_intent": payment_ref, "amount": minor_units(amount, currency)},
                options={"idempotency_key": idempotency_key},
            )
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise Transient(f"card processor refund: {type(exc).__name__}") from exc
        return refund.id

    async def refund_status(
        self, *, payment_ref: str, idempotency_key: str, reference: str | None
    ) -> RefundSeen | None:
        """The refund by its id (``GET /v1/refunds/{id}``); Stripe keeps no idempotency key on it."""
        if reference is None:
            return None
        try:
            refund = await self._client.v1.refunds.retrieve_async(reference)
        except stripe.InvalidRequestError:  # resource_missing
            return None
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise Transient(f"card processor refund lookup: {type(exc).__name__}") from exc
        if refund.payment_intent != payment_ref:
            return None
        status = {"succeeded": "succeeded", "pending": "pending"}.get(refund.status or "", "failed")
        return RefundSeen(
            refund.id, status, major_units(refund.amount, refund.currency), refund.currency.upper()
        )

    async def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        try:
            event = stripe.Webhook.construct_event(body, headers.get("stripe-signature"), self.webhook_secret)
        except (stripe.SignatureVerificationError, ValueError) as exc:
            raise BadSignature("card processor webhook: the signature does not verify") from exc
        intent = event.data.object.to_dict()
        if event.type != "payment_intent.succeeded" or not (intent.get("metadata") or {}).get("oms_key"):
            return Notification(id=event.id, key="", status="pending", reference=None, amount=None)
        return Notification(
            id=event.id,
            key=intent["metadata"]["oms_key"],
            status="captured",
            reference=intent["id"],
            amount=major_units(intent["amount_received"] or intent["amount"], intent["currency"]),
        )
