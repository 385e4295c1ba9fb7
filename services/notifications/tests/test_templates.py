"""Rendering in both locales, the fallback to English, reasons in words and money with its currency."""

from __future__ import annotations

from decimal import Decimal

import pytest

from events.types import CancelReason, OrderStatus
from notifications.domain import REFUND_TEMPLATE, SUPPORTED_LOCALES, status_template
from notifications.templates import REASONS, TEMPLATES, format_money, render

ALL_TEMPLATES = [status_template(s) for s in OrderStatus] + [REFUND_TEMPLATE]
PARCEL_TEMPLATES = [
    "parcel.shipped",
    "parcel.exception",
    "parcel.not_delivered",
    "parcel.lost",
    "parcel.sent_again",
]


@pytest.mark.parametrize("template", PARCEL_TEMPLATES)
@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_a_parcels_messages_name_it_in_every_locale(template, locale):
    out = render(
        template,
        locale,
        order_id="ord-123",
        name="Lin Mei",
        carrier="sf-express",
        tracking_number="SF1",
        tracking_url="https://track.example/SF1",
        eta="2026-11-30",
        replaces="SF0",
    )
    assert "SF1" in out.subject and "sf-express" in out.body and "ord-123" in out.body
    assert "$" not in out.subject + out.body, "no placeholder left unfilled"
    assert out.subject.isascii() or locale != "en"


@pytest.mark.parametrize("template", ALL_TEMPLATES)
@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_every_template_renders_in_every_locale_with_the_order_id(template, locale):
    out = render(
        template,
        locale,
        order_id="ord-123",
        name="Lin Mei",
        reason="out_of_stock",
        amount=Decimal("79.80"),
        currency="CNY",
    )
    assert out.locale == locale and out.template == template
    assert "ord-123" in out.subject and "ord-123" in out.body
    assert "Lin Mei" in out.body
    assert "$" not in out.subject + out.body, "no placeholder left unfilled"
    if locale == "en":
        assert out.subject.isascii(), out.subject
    else:
        assert "订单" in out.subject, out.subject


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_please_pay_shows_the_link_the_amount_and_until_when(locale):
    out = render(
        "payment.action_required",
        locale,
        order_id="ord-123",
        name="Lin Mei",
        amount=Decimal("79.80"),
        currency="CNY",
        url="https://qr.alipay.com/bax01",
        expires_at="2026-12-02 10:15:00 UTC",
    )
    assert "ord-123" in out.subject and "https://qr.alipay.com/bax01" in out.body
    assert "2026-12-02 10:15:00 UTC" in out.body and "79.80" in out.body
    assert "$" not in out.subject + out.body, "no placeholder left unfilled"


def test_the_table_has_every_locale_for_every_template_and_reason():
    assert set(TEMPLATES) == set(ALL_TEMPLATES) | set(PARCEL_TEMPLATES) | {"payment.action_required"}
    assert all(set(texts) == set(SUPPORTED_LOCALES) for texts in TEMPLATES.values())
    assert set(REASONS) == {r.value for r in CancelReason}
    assert all(set(words) == set(SUPPORTED_LOCALES) for words in REASONS.values())


def test_chinese_customers_get_chinese():
    out = render("order.shipped", "zh-CN", order_id="ord-1", name="林美")
    assert out.subject == "您的订单 ord-1 已发货"
    assert out.body.startswith("林美，您好：")


def test_an_unsupported_locale_falls_back_to_english():
    out = render("order.delivered", "fr-FR", order_id="ord-1", name="Lin")
    assert out.locale == "en"
    assert out.subject == "Your order ord-1 has been delivered"
    assert render("order.delivered", None, order_id="ord-1", name="Lin").locale == "en"
    assert render("order.delivered", "zh", order_id="ord-1", name="Lin").locale == "zh-CN"


@pytest.mark.parametrize(
    ("reason", "en", "zh"),
    [
        ("out_of_stock", "out of stock", "库存不足"),
        ("payment_declined", "payment was declined", "支付被拒绝"),
        ("payment_timeout", "not confirmed in time", "支付未能按时确认"),
        ("shipment_failed", "no carrier can deliver", "无承运商"),
        ("customer_request", "you asked us", "应您的要求"),
        ("saga_timeout", "could not be processed in time", "未能按时处理"),
        (None, "could not complete", "无法完成"),
        ("something new", "could not complete", "无法完成"),
    ],
)
def test_a_cancellation_says_why_in_words(reason, en, zh):
    english = render("order.cancelled", "en", order_id="ord-1", name="Lin", reason=reason)
    chinese = render("order.cancelled", "zh-CN", order_id="ord-1", name="Lin", reason=reason)
    assert "because" in english.body and en in english.body
    assert zh in chinese.body
    if reason:
        assert reason not in english.body + chinese.body, "the code is put into words, not shown raw"


def test_money_is_formatted_with_its_currency_never_as_a_float():
    assert format_money(Decimal("79.8"), "CNY", "zh-CN") == "¥79.80"
    assert format_money(Decimal("79.8"), "CNY", "en") == "CNY 79.80"
    assert format_money(Decimal("1234.5"), "USD", "en") == "USD 1,234.50"
    assert format_money(Decimal("1234.5"), "USD", "zh-CN") == "USD 1,234.50"
    assert format_money(Decimal("1500"), "JPY", "en") == "JPY 1,500"
    assert format_money(Decimal("0.1") + Decimal("0.2"), "EUR", "en") == "EUR 0.30"


def test_a_refund_names_the_amount_in_both_languages():
    en = render(REFUND_TEMPLATE, "en", order_id="ord-9", name="Lin", amount=Decimal("79.80"), currency="CNY")
    zh = render(
        REFUND_TEMPLATE, "zh-CN", order_id="ord-9", name="林美", amount=Decimal("79.80"), currency="CNY"
    )
    assert en.subject == "We refunded CNY 79.80 for your order ord-9"
    assert "¥79.80" in zh.subject and "¥79.80" in zh.body
