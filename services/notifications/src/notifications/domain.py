"""Notification rules: pure, no I/O.

Which template an order status is told with, which channels a customer is written to on, where
each channel delivers, the language a message is written in, and how contact details are masked
wherever they could be seen (logs, the ops API, events never carry them at all).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from events.types import OrderStatus

SUPPORTED_LOCALES = ("en", "zh-CN")
DEFAULT_LOCALE = "en"
_BY_LANGUAGE = {"en": "en", "zh": "zh-CN"}

REFUND_TEMPLATE = "payment.refunded"
PAY_TEMPLATE = "payment.action_required"
"""Please pay: the QR code or link the customer pays with, before it expires."""


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


class NotificationStatus(StrEnum):
    PENDING = "pending"  # recorded, not yet accepted by the channel
    SENT = "sent"  # the channel accepted it (an SMTP server took the e-mail)
    FAILED = "failed"  # can never be sent (no address for the channel, the address refused)


DEFAULT_CHANNELS: frozenset[Channel] = frozenset({Channel.EMAIL})


def status_template(status: OrderStatus | str) -> str:
    """The template that tells a customer their order reached ``status``: ``order.<status>``."""
    return f"order.{OrderStatus(status).value}"


def resolve_locale(locale: str | None) -> str:
    """The supported locale nearest to ``locale``: exact, then by language (``zh-TW`` → ``zh-CN``), else en."""
    if not locale:
        return DEFAULT_LOCALE
    tag = locale.strip().replace("_", "-")
    for supported in SUPPORTED_LOCALES:
        if tag.lower() == supported.lower():
            return supported
    return _BY_LANGUAGE.get(tag.split("-", 1)[0].lower(), DEFAULT_LOCALE)


def enabled_channels(*, email: bool, sms: bool, push: bool) -> list[Channel]:
    """The channels a customer's preferences allow, in a fixed order."""
    wanted = {Channel.EMAIL: email, Channel.SMS: sms, Channel.PUSH: push}
    return [channel for channel, on in wanted.items() if on]


def address_for(
    channel: Channel | str, *, email: str | None, phone: str | None, customer_id: str
) -> str | None:
    """Where ``channel`` delivers to; None when the customer gave no such address.

    Push has no device registry here: the sandbox adapter addresses the customer's account.
    """
    channel = Channel(channel)
    if channel is Channel.EMAIL:
        return email or None
    if channel is Channel.SMS:
        return phone or None
    return customer_id


def message_id(event_id: str, channel: Channel | str, domain: str) -> str:
    """A Message-ID that is the same every time the notification of one event is sent, so a repeat
    after a crash shows as one message in the customer's mail client."""
    digest = hashlib.sha256(f"{event_id}/{Channel(channel).value}".encode()).hexdigest()[:40]
    return f"<{digest}@{domain or 'localhost'}>"


def mask_email(address: str) -> str:
    """``lin@example.com`` → ``l***@example.com``."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    """``+8613800000000`` → ``+86*******0000``: the country code and the last four digits at most."""
    if len(number) < 10:
        return "***" + number[-2:]
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


def mask_address(channel: Channel | str, address: str | None) -> str | None:
    if address is None:
        return None
    channel = Channel(channel)
    if channel is Channel.EMAIL:
        return mask_email(address)
    if channel is Channel.SMS:
        return mask_phone(address)
    return address  # a customer id: not a contact detail
