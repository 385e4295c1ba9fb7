"""The request middleware every service installs: a span joined to the caller's trace, a problem
answer for what a route did not handle, and metrics by route template."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from chassis.telemetry import current_trace_id, setup_tracing
from chassis.web import PROBLEM, install

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def app() -> FastAPI:
    setup_tracing("test")
    api = FastAPI()
    install(api, "test")

    @api.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str | None]:
        return {"thing": thing_id, "trace_id": current_trace_id()}

    @api.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    return api


def served(method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return REGISTRY.get_sample_value("oms_http_requests_total", labels) or 0.0


async def test_a_request_joins_the_callers_trace_and_is_counted_by_route():
    before = served("GET", "/things/{thing_id}", 200)
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/things/t-1", headers={"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"})
    assert r.status_code == 200
    assert r.json() == {"thing": "t-1", "trace_id": CALLER_TRACE}
    assert served("GET", "/things/{thing_id}", 200) == before + 1


async def test_what_a_route_did_not_handle_is_a_problem_500_and_counted():
    before = served("GET", "/broken", 500)
    transport = httpx.ASGITransport(app=app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/broken")
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith("/internal") and "a bug" not in r.text
    assert served("GET", "/broken", 500) == before + 1


async def test_an_unknown_path_is_counted_as_unmatched():
    before = served("GET", "unmatched", 404)
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/nowhere")
    assert r.status_code == 404
    assert served("GET", "unmatched", 404) == before + 1


class _Runtime:
    """A runtime whose database and broker answer, and whose handlers may be waiting out an outage."""

    started = True

    def __init__(self, waiting: list[str]) -> None:
        self.waiting = waiting

    async def database_ok(self) -> bool:
        return True

    async def broker_ok(self) -> bool:
        return True

    def waiting_for(self) -> list[str]:
        return self.waiting


async def test_a_service_waiting_out_an_outage_is_not_ready():
    api = app()
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        api.state.runtime = _Runtime(["smtp"])
        waiting = await client.get("/readyz")
        api.state.runtime = _Runtime([])
        ready = await client.get("/readyz")
    assert waiting.status_code == 503
    assert waiting.json()["checks"] == {"database": True, "broker": True, "dependencies": False}
    assert waiting.json()["waiting_for"] == ["smtp"]
    assert ready.status_code == 200 and ready.json()["checks"]["dependencies"] is True
