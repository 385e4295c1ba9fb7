"""docs/openapi/*.json are the API documents the services' apps really make."""

from __future__ import annotations

import json

import pytest

from omstools.openapi import FOLDER, SERVICES, build


@pytest.mark.parametrize("service", SERVICES)
def test_the_committed_openapi_document_is_up_to_date(service):
    path = FOLDER / f"{service}.json"
    assert path.exists(), "run `make openapi`"
    assert json.loads(path.read_text()) == build(service), f"{path} is out of date: run `make openapi`"
