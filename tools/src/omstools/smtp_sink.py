"""A local SMTP sink for dev runs and tests: accepts every message, keeps each as an ``.eml`` file.

``python -m omstools.smtp_sink --port 8025 --dir .var/mail`` listens on 127.0.0.1 and writes one
file per message into the folder: written under a temporary name and renamed into place, so a
reader never sees half a message. Nothing is relayed anywhere.

Reading them back (tests, people)::

    for mail in read_messages(".var/mail"):
        print(mail.to, mail.subject, mail.body)

    mailbox = Mailbox(".var/mail")
    mails = await mailbox.to("lin@example.com")
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

_counter = itertools.count()


def _write_atomically(folder: Path, content: bytes) -> Path:
    """Write ``content`` as a new ``.eml`` in ``folder``; names sort in arrival order."""
    name = f"{time.time_ns():020d}-{os.getpid()}-{next(_counter):06d}"
    tmp = folder / f".{name}.tmp"
    final = folder / f"{name}.eml"
    with tmp.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


class EmlWriter:
    """aiosmtpd handler: every message goes to disk, with its envelope as X-MailFrom / X-RcptTo."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        head = f"X-MailFrom: {envelope.mail_from}\r\nX-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
        await asyncio.to_thread(_write_atomically, self.folder, head.encode("utf-8") + content)
        return "250 Message accepted for delivery"


class SmtpSink:
    """The sink in this process (a background thread); ``start()`` returns once it accepts connections."""

    def __init__(self, folder: str | os.PathLike[str], port: int = 8025, host: str = "127.0.0.1") -> None:
        self.folder = Path(folder)
        self.host = host
        self.port = port
        self._controller = Controller(EmlWriter(self.folder), hostname=host, port=port, enable_SMTPUTF8=True)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Mail:
    path: Path
    sender: str
    to: list[str]
    subject: str
    body: str
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _text_of(message: EmailMessage) -> tuple[str, str | None]:
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    html_text = html.get_content() if html is not None else None
    if html_text is not None:
        html_text = html_text.replace("\r\n", "\n")
    if plain is not None:
        return plain.get_content().replace("\r\n", "\n"), html_text
    return html_text or "", html_text


def parse_eml(path: Path) -> Mail:
    message: EmailMessage = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    recipients: list[str] = []
    for header in ("X-RcptTo", "To", "Cc"):
        for _, address in getaddresses(message.get_all(header, [])):
            if address and address.lower() not in (r.lower() for r in recipients):
                recipients.append(address)
    sender = message.get("X-MailFrom") or message.get("From") or ""
    body, html = _text_of(message)
    return Mail(
        path=path,
        sender=str(sender),
        to=recipients,
        subject=str(message.get("Subject", "")),
        body=body,
        html=html,
        headers={k: str(v) for k, v in message.items()},
    )


def read_messages(folder: str | os.PathLike[str], to: str | None = None) -> list[Mail]:
    """Every message in ``folder``, oldest first; only those addressed to ``to`` when given."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mails = [parse_eml(p) for p in sorted(folder.glob("*.eml"))]
    if to is not None:
        mails = [m for m in mails if to.lower() in (r.lower() for r in m.to)]
    return mails


class Mailbox:
    """The sink's folder as tests use it: ``await mailbox.to(address)``, ``mailbox.all()``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def all(self) -> list[Mail]:
        return read_messages(self.folder)

    async def to(self, address: str) -> list[Mail]:
        return await asyncio.to_thread(read_messages, self.folder, address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omstools.smtp_sink", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dir", default=".var/mail", help="folder the .eml files go to")
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    sink = SmtpSink(args.dir, port=args.port, host=args.host).start()
    print(f"SMTP sink on {args.host}:{args.port}, writing to {Path(args.dir).resolve()}", flush=True)
    try:
        done.wait()
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
