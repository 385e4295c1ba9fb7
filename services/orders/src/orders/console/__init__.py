"""The ops console (CONTRACT §9): web pages for people, served by the orders service at ``/ops``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from orders.console import auth, routes

STATIC = Path(__file__).with_name("static")


def install(app: FastAPI) -> None:
    """The console's routes, its static files (htmx, Chart.js, its own script and style) and the
    answers to a request without a session (the sign-in form) or beyond its role (403)."""
    app.include_router(routes.router)
    app.mount("/ops/static", StaticFiles(directory=STATIC), name="console-static")

    @app.exception_handler(auth.SignedOut)
    async def _signed_out(request: Request, _exc: auth.SignedOut) -> Response:
        if (
            request.method == "GET"
            and "hx-request" not in request.headers
            and not request.url.path.endswith(".json")
        ):
            return routes.sign_in_page(request, status=200 if request.url.path == "/ops" else 401)
        response = HTMLResponse("signed out", status_code=401, headers={"HX-Redirect": "/ops"})
        auth.clear_cookie(request, response)
        return response

    @app.exception_handler(auth.Forbidden)
    async def _forbidden(request: Request, _exc: auth.Forbidden) -> Response:
        try:
            session = auth.current(request)
        except auth.SignedOut:
            session = None
        return routes.render(request, "forbidden.html", session, 403)
