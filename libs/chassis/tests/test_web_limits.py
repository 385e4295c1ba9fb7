"""What every service's HTTP door refuses before a route runs: a body over the limit (413, by its
Content-Length or while a chunked one is read), and the API documents are not served."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import Body, FastAPI

from chassis.settings import ServiceSettings
from chassis.web import PROBLEM, install


def app(limit: int) -> tuple[FastAPI, list[Any]]:
    api = FastAPI()
    install(api, "test")
    api.state.runtime = SimpleNamespace(settings=ServiceSettings(max_body_bytes=limit))
    seen: list[Any] = []

    @api.post("/things")
    async def things(body: dict[str, Any] = Body()) -> dict[str, int]:
        seen.append(body)
        return {"keys": len(body)}

    return api, seen


async def client(api: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test")


async def test_a_body_over_the_limit_is_413_and_never_reaches_the_route():
    api, seen = app(limit=100)
    async with await client(api) as c:
        assert (await c.post("/things", json={"a": "x" * 50})).status_code == 200
        r = await c.post("/things", json={"a": "x" * 200})
        assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["type"].endswith("/body-too-large")

        async def chunks():  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b'{"a": "' + b"x" * 20 + b'"}'

        streamed = await c.post("/things", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["type"].endswith("/body-too-large")
    assert seen == [{"a": "x" * 50}]


async def test_the_default_limit_is_one_mebibyte():
    assert ServiceSettings().max_body_bytes == 1024 * 1024
    api, _ = app(limit=ServiceSettings().max_body_bytes)
    async with await client(api) as c:
        assert (await c.post("/things", json={"a": "x" * 1_000_000})).status_code == 200
        assert (await c.post("/things", json={"a": "x" * 1_100_000})).status_code == 413


async def test_the_api_documents_are_not_served():
    api, _ = app(limit=100)
    async with await client(api) as c:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert (await c.get(path)).status_code == 404, path
    assert "/things" in api.openapi()["paths"], "still generated, for docs/openapi/"
