"""What the consume policy writes about an error: its kind and place, never the input's values."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from chassis.broker import Unavailable, describe, wait_delay


class Contact(BaseModel):
    email: int
    phone: int


def test_a_validation_error_is_described_by_field_and_kind_without_the_values():
    with pytest.raises(ValidationError) as caught:
        Contact.model_validate({"email": "jane.doe@example.com", "phone": "+44 20 7946 0958"})
    described = describe(caught.value)
    assert described["fields"] == ["email", "phone"] and described["error_types"] == ["int_parsing"]
    assert "jane.doe" not in json.dumps(described) and "7946" not in json.dumps(described)


def test_undecodable_bodies_are_described_without_their_content():
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads('{"email": jane.doe@example.com}')
    assert "jane.doe" not in json.dumps(describe(caught.value))
    with pytest.raises(UnicodeDecodeError) as bad:
        b"\xffjane.doe@example.com".decode()
    assert "jane.doe" not in json.dumps(describe(bad.value))


def test_an_outage_is_waited_out_with_a_capped_doubling_pause():
    assert [wait_delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert wait_delay(10_000) == 10.0
    assert describe(Unavailable("smtp", "ConnectionRefusedError")) == {
        "error": "Unavailable: smtp",
        "reason": "ConnectionRefusedError",
    }
