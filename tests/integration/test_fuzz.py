"""The HTTP APIs of orders, inventory and shipping under a fuzzer (schemathesis), against the
running system: every operation of their committed OpenAPI documents, valid and invalid input.
No answer may be a 5xx, every answer must match the document (status, content type, body), and
no error may carry a stack trace or personal data."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from integration.helpers import ADMIN
from personal_data import scan
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from omstools.openapi import FOLDER

pytestmark = pytest.mark.integration

# About 25 operations: some 350 requests in all, a minute or two on the shared machine.
FUZZ = settings(
    max_examples=14,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
NOT_THE_API = r"^/(healthz|readyz|metrics)$"  # probes, not part of the documented API


@schemathesis.check
def no_stack_trace_or_personal_data(ctx, response, case) -> bool | None:
    """An error body says what was wrong, never how the code failed nor whom it was about."""
    if response.status_code < 400:
        return None
    text = response.text
    assert "Traceback" not in text and 'File "' not in text, f"a stack trace in a {response.status_code}"
    found = scan("error body", [text])
    assert not found, f"personal data in a {response.status_code}: {found[0]}"
    return True


CHECKS = [
    not_a_server_error,
    content_type_conformance,
    response_schema_conformance,
    no_stack_trace_or_personal_data,
]


def _schema(service: str):
    return schemathesis.openapi.from_path(FOLDER / f"{service}.json").exclude(path_regex=NOT_THE_API)


orders_api, inventory_api, shipping_api = (_schema(s) for s in ("orders", "inventory", "shipping"))


@orders_api.parametrize()
@FUZZ
def test_the_orders_api_under_a_fuzzer(case, oms):
    case.call_and_validate(base_url=oms.url("orders"), headers=ADMIN, checks=CHECKS, timeout=30)


@inventory_api.parametrize()
@FUZZ
def test_the_inventory_api_under_a_fuzzer(case, oms):
    case.call_and_validate(base_url=oms.url("inventory"), headers=ADMIN, checks=CHECKS, timeout=30)


@shipping_api.parametrize()
@FUZZ
def test_the_shipping_api_under_a_fuzzer(case, oms):
    case.call_and_validate(base_url=oms.url("shipping"), headers=ADMIN, checks=CHECKS, timeout=30)
