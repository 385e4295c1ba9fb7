"""Channel adapters: one interface, ``await adapter.send(outgoing) -> provider reference``.

E-mail goes to an SMTP server (the standard library's ``smtplib``, in a thread, on a connection
kept open). SMS and push have no provider here: their sandbox adapters accept every message, and
the notification row in the database is the record of what was "sent". A real provider adapter
would offer the same call.

Adapters raise ``events.broker.Unavailable`` when the channel's server cannot be reached (refused,
timed out, disconnected, "service not available": the event waits for it, however long, without
counting as a failed delivery), :class:`Transient` when the server answered that the same send may
succeed later (the event is retried with back-off, and dead-lettered if it never does) and
:class:`Rejected` when it never will (the notification fails). The reason in each is a short code
that never holds contact details: SMTP servers echo the address in their replies, so only the reply
code is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, parseaddr
from typing import Protocol

from events.broker import Unavailable
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

    def close(self) -> None:
        """Let go of any connection kept open (the service is stopping)."""
        ...


class SmtpEmail:
    """E-mail over SMTP, on one connection kept open between messages.

    A connection per message would cost the TCP set-up, the greeting, EHLO (and STARTTLS, login)
    and QUIT each time, on both sides. Messages are sent one at a time on it; a connection the
    server closed while it was idle is replaced once, and one that failed in any other way is
    dropped, so the next message opens a new one.
    """

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
        self._smtp: smtplib.SMTP | None = None
        self._lock = threading.Lock()

    def build(self, message: Outgoing) -> Message:
        display = " ".join((message.name or "").split())  # no line breaks into a header
        try:
            Address(display_name=display, addr_spec=message.address)  # parses, and refuses what it cannot
        except Exception:  # the parser's defects and errors: an address no server would take
            raise Rejected("invalid_address") from None
        if not message.address.isascii():
            return self._build_international(message, display)
        # The compat32 classes: the same message as EmailMessage builds, for a fifth of the CPU.
        email = MIMEText(message.body, "plain", "utf-8")
        email["From"] = formataddr(parseaddr(self.mail_from), charset="utf-8")
        email["To"] = formataddr((display, message.address), charset="utf-8")
        email["Subject"] = Header(message.subject, "utf-8") if not message.subject.isascii() else message.subject
        self._common_headers(email, message)
        return email

    def _build_international(self, message: Outgoing, display: str) -> EmailMessage:
        """An address beyond ASCII needs SMTPUTF8, which only the newer e-mail classes send."""
        email = EmailMessage()
        email["To"] = Address(display_name=display, addr_spec=message.address)
        email["From"] = self.mail_from
        email["Subject"] = message.subject
        email.set_content(message.body)  # drops every Content-* header set before it
        self._common_headers(email, message)
        return email

    @staticmethod
    def _common_headers(email: Message, message: Outgoing) -> None:
        email["Message-ID"] = message.message_id
        email["Date"] = format_datetime(datetime.now(UTC))
        email["Auto-Submitted"] = "auto-generated"
        email["Content-Language"] = message.locale

    async def send(self, message: Outgoing) -> str:
        email = self.build(message)
        await asyncio.to_thread(self._deliver, email)
        return message.message_id

    def close(self) -> None:
        with self._lock:
            self._drop(quit=True)

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
            except BaseException:
                smtp.close()
                raise
            self._smtp = smtp
        return self._smtp

    def _drop(self, *, quit: bool = False) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(Exception):
                if quit:
                    smtp.quit()
            smtp.close()

    def _deliver(self, email: Message) -> None:
        with self._lock:
            try:
                reused = self._smtp is not None
                try:
                    self._connection().send_message(email)
                except smtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    self._drop()  # closed by the server while idle: once more, on a new connection
                    self._connection().send_message(email)
            except smtplib.SMTPRecipientsRefused as exc:  # the connection stays usable (smtplib sent RSET)
                codes = [code for code, _ in exc.recipients.values()]
                if codes and all(400 <= code < 500 for code in codes):
                    raise Transient(f"smtp_{codes[0]}") from None
                raise Rejected(f"smtp_{codes[0] if codes else 550}") from None
            except smtplib.SMTPDataError as exc:  # the same
                if exc.smtp_code >= 500:
                    raise Rejected(f"smtp_{exc.smtp_code}") from None
                raise Transient(f"smtp_{exc.smtp_code}") from None
            except smtplib.SMTPNotSupportedError:
                raise Rejected("smtputf8_not_supported") from None
            except smtplib.SMTPResponseException as exc:
                # Greeting, HELO, sender or login refused: the server or our settings, not this message.
                self._drop()
                if isinstance(exc, smtplib.SMTPConnectError) or exc.smtp_code == 421:  # "service not available"
                    raise Unavailable("smtp", f"smtp_{exc.smtp_code}") from None
                raise Transient(f"smtp_{exc.smtp_code}") from None
            except (OSError, smtplib.SMTPException) as exc:  # refused, unreachable, timed out, disconnected
                self._drop()
                raise Unavailable("smtp", type(exc).__name__) from None


class SandboxChannel:
    """SMS or push without a provider: accepts every message; the notification row is the record."""

    def __init__(self, channel: Channel | str) -> None:
        self.channel = Channel(channel).value

    async def send(self, message: Outgoing) -> str:
        return f"sandbox-{self.channel}-{uuid.uuid4().hex[:12]}"

    def close(self) -> None:
        pass


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
