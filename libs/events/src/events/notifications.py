"""Messages of the notifications service."""

from __future__ import annotations

from events.envelope import Command, Event


class RegisterRecipient(Command):
    """Who to tell about an order, and in which language. Point-to-point: it carries contact details."""

    routing_key = "notifications.register_recipient"
    order_id: str
    customer_id: str
    name: str
    email: str
    phone: str | None = None
    locale: str = "en"


class NotificationSent(Event):
    routing_key = "notification.sent"
    order_id: str | None
    channel: str  # email, sms, push
    template: str
    locale: str


class NotificationFailed(Event):
    routing_key = "notification.failed"
    order_id: str | None
    channel: str
    template: str
    reason: str
