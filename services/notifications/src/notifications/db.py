"""Tables of the notifications service (plus the shared outbox/inbox tables from chassis.db)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chassis.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class Recipient(Base):
    """Who to tell about one order, from the ``notifications.register_recipient`` command."""

    __tablename__ = "recipient"

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(16))
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime())
    """The time of the command these details came from: an older command never overwrites them."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    forgotten_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """Set when the retention blanked the contact details (``notifications.retention``)."""


class Preference(Base):
    """The channels a customer wants to be told on; no row means e-mail only."""

    __tablename__ = "preference"

    customer_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    email: Mapped[bool] = mapped_column(Boolean)
    sms: Mapped[bool] = mapped_column(Boolean)
    push: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Notification(Base):
    """One message to one customer on one channel, for one event: recorded before it is sent.

    ``pending`` → sent outside any transaction → ``sent`` or ``failed``. The unique key (source
    event, channel) makes sure an event is told at most once per channel.
    """

    __tablename__ = "notification"
    __table_args__ = (
        UniqueConstraint("source_event_id", "channel", name="uq_notification_source_event_channel"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    source_event_id: Mapped[str] = mapped_column(String(128))
    source_type: Mapped[str] = mapped_column(String(128))
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    customer_id: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(10))
    template: Mapped[str] = mapped_column(String(40))
    locale: Mapped[str] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(254))
    """Where it goes (e-mail address, phone number, customer id for push). Never logged or shown whole."""
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(200))
    """The e-mail Message-ID: derived from the source event, the same on every attempt."""
    status: Mapped[str] = mapped_column(String(10), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """While set and in the future, one handler is sending this row; others wait for it."""
    last_error: Mapped[str | None] = mapped_column(String(200))
    provider_ref: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
