"""The pure rules: locales, channels, addresses, masking, stable Message-IDs."""

from __future__ import annotations

import pytest

from events.types import OrderStatus
from notifications.domain import (
    Channel,
    address_for,
    enabled_channels,
    mask_address,
    mask_email,
    mask_phone,
    message_id,
    resolve_locale,
    status_template,
)


@pytest.mark.parametrize(
    ("asked", "resolved"),
    [
        ("zh-CN", "zh-CN"),
        ("zh-cn", "zh-CN"),
        ("zh_CN", "zh-CN"),
        ("zh", "zh-CN"),
        ("zh-TW", "zh-CN"),
        ("en", "en"),
        ("en-GB", "en"),
        ("fr-FR", "en"),
        ("", "en"),
        (None, "en"),
        ("xx-YY-zz", "en"),
    ],
)
def test_locales_resolve_to_the_nearest_supported_one_else_english(asked, resolved):
    assert resolve_locale(asked) == resolved


def test_every_order_status_has_its_own_template():
    assert status_template("shipped") == "order.shipped"
    assert len({status_template(s) for s in OrderStatus}) == len(OrderStatus)
    with pytest.raises(ValueError):
        status_template("teleported")


def test_channels_follow_the_preferences_in_a_fixed_order():
    assert enabled_channels(email=True, sms=False, push=False) == [Channel.EMAIL]
    assert enabled_channels(email=False, sms=True, push=True) == [Channel.SMS, Channel.PUSH]
    assert enabled_channels(email=False, sms=False, push=False) == []


def test_each_channel_delivers_to_its_own_address():
    contact = {"email": "lin@example.com", "phone": None, "customer_id": "cust-42"}
    assert address_for("email", **contact) == "lin@example.com"
    assert address_for("sms", **contact) is None, "no phone, no SMS"
    assert address_for("push", **contact) == "cust-42"


def test_contact_details_are_masked():
    assert mask_email("lin@example.com") == "l***@example.com"
    assert mask_email("not-an-address") == "***"
    assert mask_phone("+8613800000000") == "+86*******0000"
    assert "3456" not in mask_phone("+123456") and mask_phone("+123456").startswith("***")
    assert mask_address("sms", "+8613800000000") == "+86*******0000"
    assert mask_address("push", "cust-42") == "cust-42"


def test_the_message_id_is_stable_per_event_and_channel():
    first = message_id("evt-1", "email", "oms.local")
    assert first == message_id("evt-1", "email", "oms.local")
    assert first != message_id("evt-2", "email", "oms.local")
    assert first != message_id("evt-1", "sms", "oms.local")
    assert first.startswith("<") and first.endswith("@oms.local>")
