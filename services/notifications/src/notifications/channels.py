"""Channel adapters: one interface, ``await adapter.send(outgoing) -> provider reference``.

E-mail goes to an SMTP server as bytes, on an asyncio connection kept open (aiosmtplib: no thread
per message). SMS and push have no provider here: their sandbox adapters accept every message, and
the notification row in the database is the record of what was "sent". A real provider adapter
would offer the same call.

Adapters raise ``chassis.broker.Unavailable`` when the channel's server cannot be reached (refused,
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
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.policy import SMTPUTF8
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any, Protocol

import aiosmtplib

from chassis.broker import Unavailable
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
        self._sender = parseaddr(mail_from)[1]
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

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
        subject: Any = Header(message.subject, "utf-8") if not message.subject.isascii() else message.subject
        email["Subject"] = subject  # a non-ASCII subject is encoded as a Header (RFC 2047)
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
        international = isinstance(email, EmailMessage)
        data = email.as_bytes(policy=SMTPUTF8) if international else email.as_bytes()
        await self._deliver(message.address, data, ["SMTPUTF8"] if international else [])
        return message.message_id

    def close(self) -> None:
        self._drop()

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is None or not self._smtp.is_connected:
            smtp = aiosmtplib.SMTP(
                hostname=self.host,
                port=self.port,
                timeout=self.timeout,
                start_tls=self.starttls,
                use_tls=False,
            )
            await smtp.connect()
            try:
                if self.username:
                    await smtp.login(self.username, self.password or "")
            except BaseException:
                smtp.close()
                raise
            self._smtp = smtp
        return self._smtp

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(Exception):
                smtp.close()

    async def _deliver(self, to: str, data: bytes, options: list[str]) -> None:
        async with self._lock:
            try:
                reused = self._smtp is not None and self._smtp.is_connected
                try:
                    await (await self._connection()).sendmail(self._sender, [to], data, mail_options=options)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    self._drop()  # closed by the server while idle: once more, on a new connection
                    await (await self._connection()).sendmail(self._sender, [to], data, mail_options=options)
            except (
                aiosmtplib.SMTPRecipientsRefused
            ) as exc:  # the connection stays usable (the client sent RSET)
                codes = [refused.code for refused in exc.recipients]
                if codes and all(400 <= code < 500 for code in codes):
                    raise Transient(f"smtp_{codes[0]}") from None
                raise Rejected(f"smtp_{codes[0] if codes else 550}") from None
            except aiosmtplib.SMTPDataError as exc:  # the same
                if exc.code >= 500:
                    raise Rejected(f"smtp_{exc.code}") from None
                raise Transient(f"smtp_{exc.code}") from None
            except aiosmtplib.SMTPNotSupported:
                raise Rejected("smtputf8_not_supported") from None
            except aiosmtplib.SMTPResponseException as exc:
                # Greeting, HELO, sender or login refused: the server or our settings, not this message.
                self._drop()
                if isinstance(exc, aiosmtplib.SMTPConnectError) or exc.code == 421:  # "service not available"
                    raise Unavailable("smtp", f"smtp_{exc.code}") from None
                raise Transient(f"smtp_{exc.code}") from None
            except (
                OSError,
                aiosmtplib.SMTPException,
            ) as exc:  # refused, unreachable, timed out, disconnected
                self._drop()
                raise Unavailable("smtp", _reason(exc)) from None


def _reason(exc: BaseException) -> str:
    """The kind of a connection failure, as the standard library names it: aiosmtplib wraps the
    OS error (``ConnectionRefusedError`` says more in a log than ``SMTPConnectError``)."""
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if isinstance(cause, OSError) else type(exc).__name__


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
