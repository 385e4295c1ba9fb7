from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from chassis.settings import ServiceSettings

METHODS = ("card", "alipay", "wechat_pay", "paypal")


def _stand_in(url: str) -> bool:
    """A provider address that cannot be the real provider: plain HTTP, or this machine."""
    parts = urlsplit(url)
    return parts.scheme != "https" or (parts.hostname or "") in ("localhost", "127.0.0.1", "::1", "0.0.0.0")


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENTS_", extra="ignore")

    service: str = "payments"
    http_port: int = 8002
    provider_attempts: int = 4
    """Tries of one capture or refund at the provider before a transient failure becomes a failure."""
    provider_retry_base_seconds: float = 0.05
    provider_timeout_seconds: float = 10.0
    """How long the provider may take to answer one call; ``tok_slow`` never answers. Then the
    attempt is looked up by its key and, when the provider never completed it, voided and failed
    (``provider_timeout``)."""
    late_capture_seconds: float = 15.0
    """``tok_late`` answers, with a capture, after this long."""
    sandbox_ledger: str = ""
    """The sandbox provider's own ledger (a SQLite file; default ``$OMS_VAR_DIR/payments-provider.db``)."""
    payment_window_seconds: float = 0.0
    """How long a customer has to pay a QR code or redirect (``payment.action.expires_at``); then
    the payment is closed at the provider and the order cancelled ``payment_timeout``. Unset: 15
    minutes, 10 s in local runs and tests."""
    window_poll_seconds: float = 1.0
    """How often payments looks for payment windows that have passed."""
    reconcile_interval_seconds: float = 300.0
    """How often the recent payments are reconciled with their providers (``payments.reconcile``)."""
    reconcile_lookback_seconds: float = 3600.0
    """How far back each round looks (payments decided since then)."""
    public_url: str = ""
    """Where providers reach this service from outside (their notifications go to
    ``<public_url>/v1/providers/<provider>/notify``). Unset: its own HTTP address."""
    alipay_gateway: str = ""
    """Alipay's OpenAPI gateway (``https://openapi.alipay.com/gateway.do``); unset: no Alipay."""
    alipay_app_id: str = ""
    alipay_private_key: str = ""
    """The app's RSA2 private key (PEM or Alipay's bare base64), or ``alipay_private_key_file``."""
    alipay_private_key_file: str = ""
    alipay_public_key: str = ""
    """Alipay's public key, that verifies its answers and notifications, or ``alipay_public_key_file``."""
    alipay_public_key_file: str = ""
    enabled_methods: Annotated[tuple[str, ...], NoDecode] = ("card", "alipay", "wechat_pay", "paypal")
    """The payment methods this shop takes (comma-separated); in production each needs its provider
    configured: card the card processor (``stripe_*``), alipay ``alipay_*``, wechat_pay
    ``wechat_pay_*``, paypal ``paypal_*``."""
    wechat_pay_base_url: str = ""
    """WeChat Pay's API v3 address (``https://api.mch.weixin.qq.com``); unset: no WeChat Pay."""
    wechat_pay_mchid: str = ""
    wechat_pay_appid: str = ""
    wechat_pay_serial_no: str = ""
    """The serial number of the merchant's API certificate (named in every request's signature)."""
    wechat_pay_private_key: str = ""
    """The merchant's API private key (PEM), or ``wechat_pay_private_key_file``."""
    wechat_pay_private_key_file: str = ""
    wechat_pay_platform_public_key: str = ""
    """WeChat Pay's platform public key (PEM), that verifies its answers and notifications."""
    wechat_pay_platform_public_key_file: str = ""
    wechat_pay_platform_serial: str = ""
    """The serial (``PUB_KEY_ID_…``) WeChat Pay names in ``Wechatpay-Serial``."""
    wechat_pay_apiv3_key: str = ""
    """The 32-character APIv3 key that decrypts notifications, or ``wechat_pay_apiv3_key_file``."""
    wechat_pay_apiv3_key_file: str = ""
    wechat_pay_merchant_category_code: str = "5311"
    """The shop's merchant category code (MCC), which a deduction on a saved agreement names."""
    paypal_base_url: str = ""
    """PayPal's REST API (``https://api-m.paypal.com``); unset: no PayPal."""
    paypal_client_id: str = ""
    paypal_client_secret: str = ""
    paypal_webhook_id: str = ""
    """The id of the webhook PayPal sends to ``<public_url>/v1/providers/paypal/notify`` (its
    signature is verified by PayPal's verify-webhook-signature API for this id)."""
    paypal_return_url: str = "https://shop.example/paid"
    """Where PayPal sends the customer back after the approval page (the shop's page)."""
    stripe_api_key: str = ""
    """The card processor's secret key (``sk_live_…``); unset: cards go to the in-process sandbox."""
    stripe_api_base: str = ""
    """The card processor's API address; unset: Stripe's own (``https://api.stripe.com``)."""
    stripe_webhook_secret: str = ""
    """The signing secret of the webhook endpoint ``<public_url>/v1/providers/stripe/notify``."""
    fault_crash_after_charge_file: str = ""
    """Fault injection for the tests only: when this file exists, the process removes it and dies
    between the provider's charge and its commit."""

    @field_validator("enabled_methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        return tuple(m.strip() for m in value.split(",") if m.strip()) if isinstance(value, str) else value

    def production_problems(self) -> list[str]:
        """Why this configuration would take no money, or take it from a stand-in: production
        refuses to start with any of them (a sandbox ships goods without charging anyone)."""
        problems = [
            f"PAYMENTS_ENABLED_METHODS: unknown method {m!r}"
            for m in self.enabled_methods
            if m not in METHODS
        ]
        if "card" in self.enabled_methods:
            if not self.stripe_api_key:
                problems.append(
                    "card is enabled but no card processor is configured (PAYMENTS_STRIPE_API_KEY): "
                    "the in-process sandbox is a stand-in"
                )
            elif self.stripe_api_key.startswith(("sk_test_", "rk_test_")):
                problems.append("PAYMENTS_STRIPE_API_KEY is a test-mode key")
            if not self.stripe_webhook_secret:
                problems.append("card is enabled but PAYMENTS_STRIPE_WEBHOOK_SECRET is missing")
            if self.stripe_api_base and _stand_in(self.stripe_api_base):
                problems.append(f"PAYMENTS_STRIPE_API_BASE {self.stripe_api_base} is a stand-in")
        if "alipay" in self.enabled_methods:
            missing = [
                name
                for name in ("alipay_gateway", "alipay_app_id", "alipay_private_key", "alipay_public_key")
                if not getattr(self, name)
            ]
            if missing:
                problems.append(
                    "alipay is enabled but not configured: "
                    + ", ".join(f"PAYMENTS_{m.upper()}" for m in missing)
                )
            elif _stand_in(self.alipay_gateway):
                problems.append(f"PAYMENTS_ALIPAY_GATEWAY {self.alipay_gateway} is a stand-in")
        if "wechat_pay" in self.enabled_methods:
            names = (
                "wechat_pay_base_url",
                "wechat_pay_mchid",
                "wechat_pay_appid",
                "wechat_pay_serial_no",
                "wechat_pay_private_key",
                "wechat_pay_platform_public_key",
                "wechat_pay_platform_serial",
                "wechat_pay_apiv3_key",
            )
            missing = [name for name in names if not getattr(self, name)]
            if missing:
                problems.append(
                    "wechat_pay is enabled but not configured: "
                    + ", ".join(f"PAYMENTS_{m.upper()}" for m in missing)
                )
            elif _stand_in(self.wechat_pay_base_url):
                problems.append(f"PAYMENTS_WECHAT_PAY_BASE_URL {self.wechat_pay_base_url} is a stand-in")
        if "paypal" in self.enabled_methods:
            missing = [
                name
                for name in (
                    "paypal_base_url",
                    "paypal_client_id",
                    "paypal_client_secret",
                    "paypal_webhook_id",
                )
                if not getattr(self, name)
            ]
            if missing:
                problems.append(
                    "paypal is enabled but not configured: "
                    + ", ".join(f"PAYMENTS_{m.upper()}" for m in missing)
                )
            elif _stand_in(self.paypal_base_url) or "sandbox.paypal.com" in self.paypal_base_url:
                problems.append(
                    f"PAYMENTS_PAYPAL_BASE_URL {self.paypal_base_url} is a stand-in or PayPal's sandbox"
                )
        if not self.public_url.startswith("https://"):
            problems.append(
                f"PAYMENTS_PUBLIC_URL {self.public_url} is not an https address providers can notify"
            )
        return problems

    @model_validator(mode="after")
    def _payments_safe(self) -> Settings:
        if not self.sandbox_ledger:
            self.sandbox_ledger = os.path.join(os.environ.get("OMS_VAR_DIR", ".var"), "payments-provider.db")
        if not self.payment_window_seconds:
            self.payment_window_seconds = 900.0 if self.environment == "production" else 10.0
        if not self.public_url:
            self.public_url = f"http://{self.http_host}:{self.http_port}"
        for name in (
            "alipay_private_key",
            "alipay_public_key",
            "wechat_pay_private_key",
            "wechat_pay_platform_public_key",
            "wechat_pay_apiv3_key",
        ):
            path = getattr(self, f"{name}_file")
            if path and not getattr(self, name):
                setattr(self, name, Path(path).read_text().strip())
        if self.environment == "production" and self.fault_crash_after_charge_file:
            raise ValueError("fault injection must not be switched on in production")
        if self.environment == "production" and (problems := self.production_problems()):
            raise ValueError("; ".join(problems))  # every one, so that one restart fixes them all
        return self
