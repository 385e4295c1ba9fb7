"""The scan that guards the integration logs, events and dead letters finds what it must: a
planted line of each kind fails it, masked lines do not; the service logs' own masking passes."""

from __future__ import annotations

import pytest
from personal_data import scan, scan_logs

from chassis.logs import mask

PLANTED = [
    ("card token", 'capture failed token="tok_visa_4242"'),
    ("e-mail address", "recipient lin@example.com not reachable"),
    ("phone number", "sms to +8613800000000 failed"),
    ("phone number", "sms to +86 138 0000 0000 failed"),
    ("street address", "parcel for 1 Century Ave, Shanghai"),
]

CLEAN = [
    "recipient l***@example.com not reachable",
    "payment token_hint=tok_*** status=captured",
    "at 2026-12-02T11:00:00+08:00 order ord_0f3a total=79.80",
    "amqp://guest:guest@127.0.0.1:5672/ reconnected",
]


@pytest.mark.parametrize(("kind", "line"), PLANTED)
def test_a_planted_line_is_found_and_fails_the_scan(tmp_path, kind, line):
    (tmp_path / "orders.log").write_text("\n".join([*CLEAN, line]) + "\n")
    found = scan_logs(tmp_path)
    assert [(f.kind, f.where) for f in found] == [(kind, f"{tmp_path / 'orders.log'}:{len(CLEAN) + 1}")]


def test_clean_lines_and_skipped_logs_pass(tmp_path):
    (tmp_path / "orders.log").write_text("\n".join(CLEAN) + "\n")
    (tmp_path / "smtp-sink.log").write_text("mail to lin@example.com\n")
    assert scan_logs(tmp_path, skip=["smtp-sink"]) == []


@pytest.mark.parametrize(("kind", "line"), PLANTED)
def test_the_service_logs_masking_leaves_nothing_for_the_scan(kind, line):
    assert scan("masked", [mask(line)]) == [], mask(line)
