"""The e-mail channel against a real SMTP server (aiosmtpd on a free port)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from chassis.broker import Unavailable
from notifications.channels import Outgoing, Rejected, SmtpEmail, Transient, build_channels
from notifications.db import Notification
from notifications.handlers import handle_register_recipient, on_order_status_changed

from .test_handlers import register, status_changed

REFUSED = "nobody@example.com"
GREYLISTED = "later@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd handler: keeps every message; refuses one address for good and one for now."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Any] = []
        self.peers: list[Any] = []  # the client's (host, port): one per connection

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd's name)
        if address == REFUSED:
            return f"550 5.1.1 <{address}>: user unknown"
        if address == GREYLISTED:
            return "451 4.7.1 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.peers.append(session.peer)
        self.envelopes.append(envelope)
        self.messages.append(BytesParser(policy=policy.default).parsebytes(envelope.original_content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def outgoing(address: str = "lin@example.com", **overrides: Any) -> Outgoing:
    fields = {
        "channel": "email",
        "address": address,
        "name": "林美",
        "subject": "您的订单 ord-1 已发货",
        "body": "林美，您好：\n\n您的订单已交给承运商。\n",
        "locale": "zh-CN",
        "message_id": "<abc123@oms.local>",
    }
    return Outgoing(**{**fields, **overrides})


def adapter(port: int) -> SmtpEmail:
    return SmtpEmail(host="127.0.0.1", port=port, timeout=5, mail_from="OMS <orders@oms.local>")


async def test_a_chinese_customer_receives_the_email_with_a_chinese_subject(smtp, sessions, settings):
    controller, inbox = smtp
    s = settings.model_copy(update={"smtp_port": controller.port})
    await handle_register_recipient(register(locale="zh-CN"), sessions)
    event = status_changed("shipped")
    await on_order_status_changed(event, sessions, build_channels(s), s)

    [mail] = inbox.messages
    assert mail["Subject"] == "您的订单 ord-1 已发货"
    assert mail["To"].addresses[0].addr_spec == "lin@example.com"
    assert mail["To"].addresses[0].display_name == "Lin Mei"
    assert mail["From"].addresses[0].addr_spec == "orders@oms.local"
    assert mail["Content-Language"] == "zh-CN"
    assert "ord-1" in mail.get_content() and "您的订单已交给承运商" in mail.get_content()
    async with sessions() as session:
        row = await session.scalar(select(Notification))
    assert row.status == "sent" and mail["Message-ID"] == row.message_id
    assert inbox.envelopes[0].mail_from == "orders@oms.local"
    assert inbox.envelopes[0].rcpt_tos == ["lin@example.com"]


async def test_a_resend_carries_the_same_message_id(smtp):
    controller, inbox = smtp
    email = adapter(controller.port)
    await email.send(outgoing())
    await email.send(outgoing())
    assert [m["Message-ID"] for m in inbox.messages] == ["<abc123@oms.local>"] * 2


async def test_an_address_the_server_refuses_for_good_is_rejected_without_echoing_it(smtp):
    controller, _ = smtp
    with pytest.raises(Rejected) as refused:
        await adapter(controller.port).send(outgoing(REFUSED))
    assert str(refused.value) == "smtp_550" and REFUSED not in repr(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


async def test_a_temporary_refusal_is_transient_and_a_server_that_is_down_is_unavailable(smtp):
    controller, _ = smtp
    with pytest.raises(Transient, match="smtp_451"):
        await adapter(controller.port).send(outgoing(GREYLISTED))
    with pytest.raises(Unavailable) as down:
        await adapter(free_port()).send(outgoing())
    assert (down.value.dependency, down.value.reason) == ("smtp", "ConnectionRefusedError")


async def test_an_address_no_server_would_take_is_rejected_before_sending(smtp):
    controller, inbox = smtp
    for bad in ("not-an-address", "a b@example.com", "x@"):
        with pytest.raises(Rejected, match="invalid_address"):
            await adapter(controller.port).send(outgoing(bad))
    assert inbox.messages == []


async def test_messages_share_one_connection_and_a_dropped_one_is_replaced():
    inbox, port = Inbox(), free_port()
    first = Controller(inbox, hostname="127.0.0.1", port=port)
    first.start()
    email = adapter(port)
    try:
        for n in range(3):
            await email.send(outgoing(message_id=f"<m{n}@oms.local>"))
    finally:
        first.stop()  # the server goes away with the idle connection, and comes back
    assert len(inbox.messages) == 3 and len(set(inbox.peers)) == 1

    again = Controller(inbox, hostname="127.0.0.1", port=port)
    again.start()
    try:
        await email.send(outgoing(message_id="<after@oms.local>"))
    finally:
        email.close()
        again.stop()
    assert [m["Message-ID"] for m in inbox.messages][-1] == "<after@oms.local>"
    assert len(set(inbox.peers)) == 2


async def test_a_refused_recipient_leaves_the_connection_usable(smtp):
    controller, inbox = smtp
    email = adapter(controller.port)
    with pytest.raises(Rejected):
        await email.send(outgoing(REFUSED))
    await email.send(outgoing())
    assert len(inbox.messages) == 1
    email.close()


async def test_an_address_beyond_ascii_goes_out_with_smtputf8(smtp):
    controller, inbox = smtp
    await adapter(controller.port).send(outgoing("lin@例子.中国"))
    [envelope] = inbox.envelopes
    assert envelope.rcpt_tos == ["lin@例子.中国"] and envelope.smtp_utf8
    assert "To: 林美 <lin@例子.中国>".encode() in envelope.original_content


async def test_mail_goes_out_from_the_event_loop_without_a_thread_per_message(smtp):
    controller, inbox = smtp
    email = adapter(controller.port)
    before = {t.ident for t in threading.enumerate()}
    for n in range(3):
        await email.send(outgoing(message_id=f"<t{n}@oms.local>"))
    assert {t.ident for t in threading.enumerate()} <= before
    assert len(inbox.messages) == 3 and len(set(inbox.peers)) == 1
    email.close()
