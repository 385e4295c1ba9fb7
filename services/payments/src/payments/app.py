"""Wiring only: settings, runtime (engine, broker, outbox relay), HTTP routes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from chassis.runtime import ServiceRuntime
from chassis.tasks import every
from chassis.web import install
from payments import api, handlers, reconcile, service
from payments.adapters.alipay import AlipayAdapter
from payments.adapters.base import Adapter
from payments.adapters.card import StripeCardAdapter
from payments.adapters.paypal import PayPalAdapter
from payments.adapters.registry import Providers
from payments.adapters.wechat_pay import WechatPayAdapter
from payments.config import Settings
from payments.provider import Ledger, SandboxProvider


def configured(s: Settings) -> list[Adapter]:
    """The real providers' adapters that configuration names (a gateway URL and keys each)."""
    adapters: list[Adapter] = []
    if s.alipay_gateway:
        adapters.append(
            AlipayAdapter(
                gateway=s.alipay_gateway,
                app_id=s.alipay_app_id,
                private_key=s.alipay_private_key,
                alipay_public_key=s.alipay_public_key,
                notify_url=f"{s.public_url}/v1/providers/alipay/notify",
                timeout=s.provider_timeout_seconds,
            )
        )
    if s.wechat_pay_base_url:
        adapters.append(
            WechatPayAdapter(
                base_url=s.wechat_pay_base_url,
                mchid=s.wechat_pay_mchid,
                appid=s.wechat_pay_appid,
                serial_no=s.wechat_pay_serial_no,
                private_key=s.wechat_pay_private_key,
                platform_public_key=s.wechat_pay_platform_public_key,
                platform_serial=s.wechat_pay_platform_serial,
                apiv3_key=s.wechat_pay_apiv3_key,
                notify_url=f"{s.public_url}/v1/providers/wechat_pay/notify",
                merchant_category_code=s.wechat_pay_merchant_category_code,
                timeout=s.provider_timeout_seconds,
            )
        )
    if s.paypal_base_url:
        adapters.append(
            PayPalAdapter(
                base_url=s.paypal_base_url,
                client_id=s.paypal_client_id,
                client_secret=s.paypal_client_secret,
                webhook_id=s.paypal_webhook_id,
                return_url=s.paypal_return_url,
                timeout=s.provider_timeout_seconds,
            )
        )
    if s.stripe_api_key:
        adapters.append(
            StripeCardAdapter(
                api_key=s.stripe_api_key,
                webhook_secret=s.stripe_webhook_secret,
                api_base=s.stripe_api_base or None,
                timeout=s.provider_timeout_seconds,
            )
        )
    return adapters


async def _reconcile(app: FastAPI, sessions, providers: Providers, s: Settings) -> None:
    """One round over the payments decided lately; its result is what ops read."""
    since = datetime.now(UTC) - timedelta(seconds=s.reconcile_lookback_seconds)
    app.state.reconciliation = await reconcile.reconcile(
        sessions, providers, since=since, timeout=s.provider_timeout_seconds
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings()
        ledger = Ledger(s.sandbox_ledger)
        provider = SandboxProvider(ledger=ledger, late_seconds=s.late_capture_seconds)
        providers = Providers.of(provider, *configured(s))
        try:
            async with (
                ServiceRuntime(s, routers=[handlers.router], context={"providers": providers}) as runtime,
                every(
                    s.window_poll_seconds,
                    lambda: service.expire_windows(runtime.sessions, providers, s),
                    name="payments-windows",
                ),
                every(
                    s.reconcile_interval_seconds,
                    lambda: _reconcile(app, runtime.sessions, providers, s),
                    name="payments-reconciliation",
                ),
            ):
                app.state.runtime = runtime
                app.state.provider = provider
                app.state.providers = providers
                yield
        finally:
            await providers.aclose()
            ledger.close()

    app = FastAPI(title="OMS payments", version="1", lifespan=lifespan)
    install(app, "payments")
    app.include_router(api.router)
    app.include_router(api.providers)
    return app
