"""Channel adapters: one interface, ``await adapter.send(outgoing) -> provider reference``.

E-mail goes to an SMTP server (the standard library's ``smtplib``, in a thread). SMS and push have
no provider here: their sandbox adapters accept every message, and the notification row in the
database is the record of what was "sent". A real provider adapter would offer the same call.

Adapters raise :class:`Transient` when the same send may succeed later (the event is then retried
with back-off) and :class:`Rejected` when it never will (the notification fails). The reason in
either is a short code that never holds contact details: SMTP servers echo the address in their
replies, so only the reply code is kept.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol

from notifications.config import Settings
from notifications.domain import Channel


@dataclass(frozen=True)
class Outgoing:
    channel: str
    address: str
    name: str | None
    subject: str
    body: str
    locale: str
    message_id: str


class Transient(Exception):
    """The channel could not take the message now; the same send may succeed later."""


class Rejected(Exception):
    """The channel will never take this message (the address is invalid or refused)."""


class ChannelAdapter(Protocol):
    channel: str

    async def send(self, message: Outgoing) -> str:
        """Hand ``message`` to the channel; returns the provider's reference for it."""
        ...


class SmtpEmail:
    channel = Channel.EMAIL.value

    def __init__(
        self,
        *,
        host: str,
        port: int,
        timeout: float,
        mail_from: str,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.mail_from = mail_from
        self.starttls, self.username, self.password = starttls, username, password

    def build(self, message: Outgoing) -> EmailMessage:
        email = EmailMessage()
        try:
            display = " ".join((message.name or "").split())  # no line breaks into a header
            email["To"] = Address(display_name=display, addr_spec=message.address)
        except Exception:  # the parser's defects and errors: an address no server would take
            raise Rejected("invalid_address") from None
        email["From"] = self.mail_from
        email["Subject"] = message.subject
        email["Message-ID"] = message.message_id
        email["Date"] = format_datetime(datetime.now(UTC))
        email["Auto-Submitted"] = "auto-generated"
        email.set_content(message.body)  # drops every Content-* header set before it
        email["Content-Language"] = message.locale
        return email

    async def send(self, message: Outgoing) -> str:
        email = self.build(message)
        await asyncio.to_thread(self._deliver, email)
        return message.message_id

    def _deliver(self, email: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if codes and all(400 <= code < 500 for code in codes):
                raise Transient(f"smtp_{codes[0]}") from None
            raise Rejected(f"smtp_{codes[0] if codes else 550}") from None
        except smtplib.SMTPDataError as exc:
            if exc.smtp_code >= 500:
                raise Rejected(f"smtp_{exc.smtp_code}") from None
            raise Transient(f"smtp_{exc.smtp_code}") from None
        except smtplib.SMTPNotSupportedError:
            raise Rejected("smtputf8_not_supported") from None
        except smtplib.SMTPResponseException as exc:
            # Greeting, HELO, sender or login refused: the server or our settings, not this message.
            raise Transient(f"smtp_{exc.smtp_code}") from None
        except (OSError, smtplib.SMTPException) as exc:  # refused, unreachable, timed out, disconnected
            raise Transient(type(exc).__name__) from None


class SandboxChannel:
    """SMS or push without a provider: accepts every message; the notification row is the record."""

    def __init__(self, channel: Channel | str) -> None:
        self.channel = Channel(channel).value

    async def send(self, message: Outgoing) -> str:
        return f"sandbox-{self.channel}-{uuid.uuid4().hex[:12]}"


def build_channels(settings: Settings) -> dict[str, ChannelAdapter]:
    return {
        Channel.EMAIL.value: SmtpEmail(
            host=settings.smtp_host,
            port=settings.smtp_port,
            timeout=settings.smtp_timeout,
            mail_from=settings.mail_from,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        ),
        Channel.SMS.value: SandboxChannel(Channel.SMS),
        Channel.PUSH.value: SandboxChannel(Channel.PUSH),
    }
