"""A scan for personal data and payment tokens where none may be (CONTRACT §3, §6): log lines,
events on the bus, dead letters of the system's own messages. Its patterns are its own, broader
than the masking in chassis.logs, so that a form the masking misses is found here."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PATTERNS = {
    "card token": re.compile(r"\btok_[A-Za-z0-9]"),
    "e-mail address": re.compile(r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "phone number": re.compile(r"\+[1-9][0-9][0-9 ()-]{5,16}[0-9]"),
    "street address": re.compile(
        r"\b[0-9]{1,6}\s+(?:[A-Z][a-z]+\s+){1,4}(?:Ave|Avenue|St|Street|Rd|Road|Blvd|Lane|Ln|Way|Drive|Dr|Place)\b"
    ),
}


@dataclass(frozen=True)
class Finding:
    where: str
    kind: str
    line: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.line[:300]}"


def scan(where: str, lines: Iterable[str]) -> list[Finding]:
    found = []
    for n, line in enumerate(lines, 1):
        for kind, pattern in PATTERNS.items():
            if pattern.search(line):
                found.append(Finding(f"{where}:{n}", kind, line.strip()))
    return found


def scan_logs(folder: Path, *, skip: Iterable[str] = ()) -> list[Finding]:
    """Every ``*.log`` under ``folder`` but those named in ``skip`` (stand-ins for the outside
    world, such as the customers' mailbox)."""
    found = []
    for path in sorted(folder.glob("*.log")):
        if path.stem in set(skip):
            continue
        with path.open(errors="replace") as lines:
            found += scan(str(path), lines)
    return found
