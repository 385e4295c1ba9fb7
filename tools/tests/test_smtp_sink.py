"""The SMTP sink really receives what smtplib sends and keeps one .eml per message."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from omstools.rabbit import free_port, port_open
from omstools.smtp_sink import Mailbox, SmtpSink, read_messages


def order_mail(to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "OMS <orders@oms.example>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    if html:
        message.add_alternative(html, subtype="html")
    return message


@pytest.fixture
def sink(tmp_path: Path):
    with SmtpSink(tmp_path / "mail", port=free_port()) as sink:
        yield sink


def test_a_message_sent_with_smtplib_is_written_and_read_back(sink):
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.send_message(
            order_mail(
                "Lin Mei <lin@example.com>", "您的订单已确认", "订单 o-123 已确认。", "<p>订单 o-123</p>"
            )
        )

    files = list(sink.folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".eml", files
    [mail] = read_messages(sink.folder)
    assert mail.to == ["lin@example.com"]
    assert mail.sender == "orders@oms.example"
    assert mail.subject == "您的订单已确认"
    assert mail.body == "订单 o-123 已确认。\n"
    assert mail.html == "<p>订单 o-123</p>\n"


def test_one_file_per_message_in_arrival_order_and_filtered_by_recipient(sink):
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        for n in range(5):
            to = "a@example.com" if n % 2 == 0 else "b@example.com"
            smtp.send_message(order_mail(to, f"message {n}", f"body {n}"))
        # an envelope recipient that is not in the headers (Bcc) counts as a recipient
        smtp.sendmail(
            "orders@oms.example", ["hidden@example.com"], order_mail("a@example.com", "bcc", "x").as_bytes()
        )

    assert [m.subject for m in read_messages(sink.folder)] == [*(f"message {n}" for n in range(5)), "bcc"]
    assert [m.subject for m in read_messages(sink.folder, to="B@example.com")] == ["message 1", "message 3"]
    assert [m.subject for m in read_messages(sink.folder, to="hidden@example.com")] == ["bcc"]
    assert not list(sink.folder.glob(".*.tmp")), "no temporary files left behind"


async def test_the_mailbox_answers_tests_asynchronously(sink):
    mailbox = Mailbox(sink.folder)
    assert await mailbox.to("lin@example.com") == []
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.send_message(order_mail("lin@example.com", "shipped", "on its way"))
    [mail] = await mailbox.to("lin@example.com")
    assert mail.body == "on its way\n" and len(mailbox.all()) == 1


def test_a_missing_folder_has_no_messages(tmp_path):
    assert read_messages(tmp_path / "nothing-here") == []


def test_runs_as_a_program_and_stops_on_sigterm(tmp_path):
    port, folder = free_port(), tmp_path / "mail"
    process = subprocess.Popen(
        [sys.executable, "-m", "omstools.smtp_sink", "--port", str(port), "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_open(port):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the sink did not listen in time"
            time.sleep(0.05)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.send_message(order_mail("lin@example.com", "placed", "thanks"))
        assert [m.subject for m in read_messages(folder)] == ["placed"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert f"SMTP sink on 127.0.0.1:{port}" in output
