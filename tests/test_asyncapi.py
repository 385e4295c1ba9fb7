"""docs/asyncapi.json describes the messages the services really consume and publish."""

from __future__ import annotations

import json

from omstools.asyncapi import DOCUMENT, build, messages


def test_the_committed_asyncapi_document_is_up_to_date():
    assert DOCUMENT.exists(), "run `make asyncapi`"
    assert json.loads(DOCUMENT.read_text()) == build(), (
        "docs/asyncapi.json is out of date: run `make asyncapi`"
    )


def test_every_event_and_command_is_documented():
    document = DOCUMENT.read_text()
    for message in messages():
        assert message.ce_type() in document, message.__name__
