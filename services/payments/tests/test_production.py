"""Production refuses to take money from stand-ins, or not at all: payments does not start with the
in-process sandbox, a stand-in's address or key, a missing key, or a method enabled whose provider
is not configured. The stand-ins' own configuration, as make run and the tests give it, is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from omstools.system import System
from payments.config import Settings

SAFE = {
    "environment": "production",
    "api_keys": "ops-team:admin:" + "ab" * 32,
    "amqp_url": "amqps://oms:s@broker/oms",
    "public_url": "https://pay.shop.example",
}
ALIPAY = {
    "alipay_gateway": "https://openapi.alipay.com/gateway.do",
    "alipay_app_id": "2021000000000001",
    "alipay_private_key": "app-key",
    "alipay_public_key": "alipay-key",
}
CARD = {"stripe_api_key": "sk_live_abc", "stripe_webhook_secret": "whsec_abc"}


def refusal(**settings) -> str:
    with pytest.raises(ValidationError) as refused:
        Settings(**SAFE, **settings)
    return str(refused.value)


def test_a_production_configured_for_real_providers_starts():
    s = Settings(**SAFE, **ALIPAY, **CARD, enabled_methods="card,alipay")
    assert s.enabled_methods == ("card", "alipay") and s.production_problems() == []


def test_cards_with_the_in_process_sandbox_are_refused():
    assert "the in-process sandbox is a stand-in" in refusal(enabled_methods="card")


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"stripe_api_key": "sk_test_abc"}, "test-mode key"),
        ({"stripe_webhook_secret": ""}, "PAYMENTS_STRIPE_WEBHOOK_SECRET is missing"),
        ({"stripe_api_base": "http://127.0.0.1:8012"}, "is a stand-in"),
    ],
)
def test_a_card_processor_that_is_a_stand_in_or_half_configured_is_refused(changes, why):
    assert why in refusal(**{**CARD, **changes}, enabled_methods="card")


def test_alipay_enabled_without_its_keys_or_at_a_stand_in_is_refused():
    assert "PAYMENTS_ALIPAY_PRIVATE_KEY" in refusal(
        **{**ALIPAY, "alipay_private_key": ""}, enabled_methods="alipay"
    )
    assert "is a stand-in" in refusal(
        **{**ALIPAY, "alipay_gateway": "http://127.0.0.1:8011/gateway.do"}, enabled_methods="alipay"
    )


def test_paypal_enabled_without_its_credentials_or_on_its_sandbox_is_refused():
    assert "PAYMENTS_PAYPAL_CLIENT_SECRET" in refusal(
        **CARD, enabled_methods="card,paypal", paypal_base_url="https://api-m.paypal.com"
    )
    assert "PayPal's sandbox" in refusal(
        **CARD,
        enabled_methods="card,paypal",
        paypal_base_url="https://api-m.sandbox.paypal.com",
        paypal_client_id="c",
        paypal_client_secret="s",
        paypal_webhook_id="w",
    )


def test_wechat_pay_enabled_without_its_keys_is_refused():
    assert "PAYMENTS_WECHAT_PAY_APIV3_KEY" in refusal(
        **CARD, enabled_methods="card,wechat_pay", wechat_pay_base_url="https://api.mch.weixin.qq.com"
    )


def test_payments_with_the_stand_ins_of_local_runs_refuses_to_start_in_production(tmp_path):
    """The environment make run and the tests give payments (every provider a stand-in), with
    OMS_ENV=production: the process exits at once, saying why."""
    system = System(tmp_path, "amqps://oms:s@broker/oms")
    env = {
        **system.env_for("payments"),
        "OMS_ENV": "production",
        "API_KEYS": SAFE["api_keys"],
        "AMQP_URL": SAFE["amqp_url"],
        "PAYMENTS_PUBLIC_URL": SAFE["public_url"],
    }
    env.pop("PAYMENTS_ENABLED_METHODS", None)
    done = subprocess.run(
        [sys.executable, "-m", "payments", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "stand-in" in done.stdout + done.stderr
