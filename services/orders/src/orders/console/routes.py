"""The console's pages (CONTRACT §9): sign-in, dashboard, orders, an order, dead letters, stock;
and what an admin does from them. Server-rendered (Jinja2); the dashboard's tables are refreshed
by htmx and its charts by console.js, both polling, so the page updates without a reload.

Every action goes where the API's goes: the order service's functions for an order (those of
``POST /v1/orders/{id}/cancel``, ``PATCH .../shipping-address``, ``POST .../attention/resolve``),
with the admin as the actor and their reason as the note in the order's history; the dead-letter
API itself; payments' and inventory's HTTP APIs (with the configured admin key) for refunds and
stock, the admin named in the reason they record.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select

from chassis.deadletters import dead_letter
from chassis.logs import get_logger
from chassis.web import validation_errors
from events.orders import Address
from events.types import Channel, OrderStatus
from orders import ops, service
from orders.console import auth, queries
from orders.console.mask import mask_body
from orders.console.text import language, translator
from orders.saga import Refused

log = get_logger("orders.console")
router = APIRouter(prefix="/ops", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))

Reason = Annotated[str, Form(max_length=500)]
Csrf = Annotated[str, Form()]
DONE = {
    "cancel": "Cancel requested.",
    "refund": "Refund requested.",
    "address": "Address changed.",
    "resolve": "Marked as handled.",
    "replay": "Replayed.",
    "discard": "Discarded.",
    "receipt": "Stock received.",
    "count": "Count recorded.",
}
OPEN = ("submitted", "confirmed", "paid", "picking")  # until shipped: cancel, change the address
HEADERS = {
    "Cache-Control": "no-store",
    # Scripts and forms of the console's own origin only; never inside another site's frame (an
    # admin's button clicked through a page on top of it).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def render(
    request: Request, name: str, session: auth.Session | None, status: int = 200, **context: Any
) -> HTMLResponse:
    lang = language(request.headers.get("accept-language"))
    done = DONE.get(request.query_params.get("done", ""))
    return templates.TemplateResponse(
        request,
        name,
        {"t": translator(lang), "lang": lang, "session": session, "notice": done, **context},
        status_code=status,
        headers=HEADERS,
    )


def _rt(request: Request) -> Any:
    return request.app.state.runtime


def _safe_next(value: str | None) -> str:
    """Only a path of the console itself: never another site (an open redirect)."""
    if value and value.startswith("/ops") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ops"


# --- signing in and out -------------------------------------------------------------------------


def sign_in_page(request: Request, *, error: str | None = None, status: int = 200) -> HTMLResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return render(
        request,
        "sign_in.html",
        None,
        status,
        error=error,
        next=_safe_next(request.query_params.get("next") or here),
    )


def _sign_in_guard(request: Request) -> auth.SignInGuard:
    """The app's one guard, made on the first sign-in from its settings."""
    state = request.app.state
    if not hasattr(state, "sign_in_guard"):
        state.sign_in_guard = auth.SignInGuard(_rt(request).settings.console_sign_in_failures)
    guard: auth.SignInGuard = state.sign_in_guard
    return guard


@router.post("/sign-in")
async def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=500)] = "",
    next: Annotated[str, Form()] = "/ops",
) -> Response:
    if not auth.same_origin(request):
        raise auth.Forbidden
    guard = _sign_in_guard(request)
    address = request.client.host if request.client else "unknown"
    if (wait := guard.retry_after(address)) is not None:
        log.warning("console.sign_in_refused", reason="too_many_failures", retry_after=wait)
        page = sign_in_page(request, error="Too many failed sign-ins. Try again later.", status=429)
        page.headers["Retry-After"] = str(wait)
        return page
    try:
        caller, value = auth.sign_in(_rt(request).settings, api_key)
    except auth.SignedOut:
        guard.failed(address)
        return sign_in_page(request, error="Unknown API key.", status=401)
    except auth.Forbidden:
        guard.failed(address)
        return sign_in_page(request, error="This key may not use the console.", status=403)
    log.info("console.signed_in", actor=caller.name, role=str(caller.role))
    response = RedirectResponse(_safe_next(next), status_code=303)
    auth.set_cookie(request, response, value)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, csrf_token: Csrf = "") -> Response:
    session = auth.current(request)
    auth.check_csrf(request, session, csrf_token)
    response = RedirectResponse("/ops", status_code=303)
    auth.clear_cookie(request, response)
    return response


# --- dashboard ------------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def dashboard(request: Request) -> HTMLResponse:
    session = auth.current(request)
    summary = await ops.summary(_rt(request), request.app.state.admission)
    return render(request, "dashboard.html", session, page="dashboard", s=summary)


@router.get("/fragments/dashboard", response_class=HTMLResponse)
async def dashboard_tables(request: Request) -> HTMLResponse:
    session = auth.current(request)
    summary = await ops.summary(_rt(request), request.app.state.admission)
    return render(request, "_dashboard_tables.html", session, s=summary)


@router.get("/charts.json")
async def chart_data(request: Request) -> JSONResponse:
    auth.current(request)
    async with _rt(request).sessions() as session:
        data = await queries.charts(session)
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


# --- orders ---------------------------------------------------------------------------------------


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


@router.get("/orders", response_class=HTMLResponse)
async def orders_page(
    request: Request,
    q: str = "",
    status: str = "",
    channel: str = "",
    created_from: str = "",
    created_to: str = "",
) -> HTMLResponse:
    session = auth.current(request)
    s = queries.Search(
        q=q[:300],
        status=status if status in set(OrderStatus) else "",
        channel=channel if channel in set(Channel) else "",
        day_from=_day(created_from),
        day_to=_day(created_to),
    )
    async with _rt(request).sessions() as db:
        found = await queries.search(db, s)
    return render(
        request,
        "orders.html",
        session,
        page="orders",
        search=s,
        found=found,
        statuses=list(OrderStatus),
        channels=list(Channel),
    )


async def _get_json(url: str, key: str) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient(timeout=3) as client:
            r = await client.get(url, headers={"Authorization": f"Bearer {key}"})
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def _order_page(
    request: Request,
    session: auth.Session,
    order_id: str,
    *,
    error: str | None = None,
    errors: list[dict[str, str]] | None = None,
    status: int = 200,
) -> HTMLResponse:
    rt = _rt(request)
    async with rt.sessions() as db:
        order = await service.read_one(db, order_id)
        messages = await queries.saga_messages(db, order_id) if order is not None else []
    if order is None:
        return render(request, "not_found.html", session, 404, page="orders")
    payment = await _get_json(
        f"{rt.settings.payments_url}/v1/payments/{quote(order_id)}", rt.settings.ops_api_key
    )
    refundable = order.payment_amount - order.refunded_amount
    return render(
        request,
        "order.html",
        session,
        status,
        page="orders",
        order=order,
        messages=messages,
        payment=payment,
        error=error,
        errors=errors or [],
        can_change=order.status in OPEN,
        can_refund=refundable > 0,
        refundable=refundable,
    )


@router.get("/orders/{order_id}", response_class=HTMLResponse)
async def order_page(request: Request, order_id: str) -> HTMLResponse:
    return await _order_page(request, auth.current(request), order_id)


def _admin(request: Request, csrf_token: str) -> auth.Session:
    session = auth.current(request)
    auth.check_csrf(request, session, csrf_token)
    if not session.admin:
        raise auth.Forbidden
    return session


def _reason_missing(reason: str) -> list[dict[str, str]]:
    if reason.strip():
        return []
    return [{"field": "reason", "message": "say why", "type": "missing"}]


async def _act(
    request: Request, session: auth.Session, order_id: str, action: str, reason: str, change: Any
) -> Response:
    """One order action through the service function the API calls, with the admin as its actor
    and their reason as its note in the order's history; back to the order page."""
    if errors := _reason_missing(reason):
        return await _order_page(request, session, order_id, error="Reason", errors=errors, status=422)
    rt = _rt(request)
    try:
        order = await change(
            rt.sessions, order_id, actor=session.caller.name, note=reason.strip(), settings=rt.settings
        )
    except Refused as exc:
        return await _order_page(request, session, order_id, error=str(exc), status=409)
    if order is None:
        return await _order_page(request, session, order_id, status=404)
    log.info("console.order_action", action=action, order_id=order_id, actor=session.caller.name)
    return RedirectResponse(f"/ops/orders/{quote(order_id)}?done={action}", status_code=303)


@router.post("/orders/{order_id}/cancel")
async def cancel(request: Request, order_id: str, reason: Reason = "", csrf_token: Csrf = "") -> Response:
    session = _admin(request, csrf_token)
    return await _act(request, session, order_id, "cancel", reason, service.cancel)


@router.post("/orders/{order_id}/resolve")
async def resolve(request: Request, order_id: str, reason: Reason = "", csrf_token: Csrf = "") -> Response:
    session = _admin(request, csrf_token)
    return await _act(request, session, order_id, "resolve", reason, service.resolve_attention)


@router.post("/orders/{order_id}/address")
async def change_address(
    request: Request, order_id: str, reason: Reason = "", csrf_token: Csrf = ""
) -> Response:
    session = _admin(request, csrf_token)
    form = await request.form()
    fields = ("name", "line1", "line2", "city", "region", "postal_code", "country")
    given = {f: (str(form.get(f, "")).strip() or None) for f in fields}
    try:
        address = Address.model_validate({**given, "country": (given["country"] or "").upper()})
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        return await _order_page(
            request, session, order_id, error=", ".join(e["field"] for e in errors), errors=errors, status=422
        )
    return await _act(
        request, session, order_id, "address", reason, partial(service.change_address, address=address)
    )


async def _post_admin(url: str, key: str, body: dict[str, Any]) -> tuple[int, str]:
    """A call to another service's admin API: its status and, when refused, its detail."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        return 503, f"not reachable: {type(exc).__name__}"
    if r.status_code < 300:
        return r.status_code, ""
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    return r.status_code, str(detail)


def _acted(actor: str, reason: str, limit: int = 200) -> str:
    return f"{actor}: {reason.strip()}"[:limit]


@router.post("/orders/{order_id}/refund")
async def refund(
    request: Request,
    order_id: str,
    reason: Reason = "",
    amount: Annotated[str, Form()] = "",
    csrf_token: Csrf = "",
) -> Response:
    session = _admin(request, csrf_token)
    errors = _reason_missing(reason)
    try:
        value = Decimal(amount.strip()) if amount.strip() else None
        if value is not None and (value <= 0 or value != value.quantize(Decimal("0.01"))):
            raise InvalidOperation
    except InvalidOperation:
        errors.append(
            {
                "field": "amount",
                "message": "a positive amount with at most two decimals",
                "type": "value_error",
            }
        )
    if errors:
        return await _order_page(
            request, session, order_id, error=", ".join(e["field"] for e in errors), errors=errors, status=422
        )
    rt = _rt(request)
    body: dict[str, Any] = {"reason": _acted(session.caller.name, reason)}
    if value is not None:
        body["amount"] = format(value, "f")
    status, detail = await _post_admin(
        f"{rt.settings.payments_url}/v1/payments/{quote(order_id)}/refunds", rt.settings.admin_api_key, body
    )
    if status >= 300:
        return await _order_page(
            request, session, order_id, error=detail, status=status if status < 500 else 502
        )
    log.info("console.order_action", action="refund", order_id=order_id, actor=session.caller.name)
    return RedirectResponse(f"/ops/orders/{quote(order_id)}?done=refund", status_code=303)


# --- dead letters ---------------------------------------------------------------------------------


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    session = auth.current(request)
    async with _rt(request).sessions() as db:
        rows = (
            (
                await db.execute(
                    select(dead_letter)
                    .where(dead_letter.c.status == "parked")
                    .order_by(dead_letter.c.dead_at.desc())
                    .limit(100)
                )
            )
            .mappings()
            .all()
        )
    letters = [{**r, "masked": mask_body(r["body"], r["body_encoding"])} for r in rows]
    return render(
        request, "dead_letters.html", session, status, page="dead-letters", letters=letters, error=error
    )


@router.post("/dead-letters/{letter_id}/{action}")
async def dead_letter_action(
    request: Request, letter_id: str, action: str, csrf_token: Csrf = ""
) -> Response:
    """Through the dead-letter API itself (chassis.deadletters), called in-process with the
    configured admin key: the console does exactly what ``POST /v1/dead-letters/{id}/replay`` does."""
    session = _admin(request, csrf_token)
    if action not in ("replay", "discard"):
        return Response(status_code=404)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=request.app), base_url="http://orders"
    ) as own:
        r = await own.post(
            f"/v1/dead-letters/{quote(letter_id)}/{action}",
            headers={"Authorization": f"Bearer {_rt(request).settings.admin_api_key}"},
        )
    if r.status_code >= 300:
        return await dead_letters(request, error=r.json().get("detail", r.text), status=r.status_code)
    log.info("console.dead_letter_action", action=action, dead_letter=letter_id, actor=session.caller.name)
    return RedirectResponse(f"/ops/dead-letters?done={action}", status_code=303)


# --- stock ----------------------------------------------------------------------------------------


@router.get("/stock", response_class=HTMLResponse)
async def stock_page(
    request: Request, sku: str = "", error: str | None = None, status: int = 200
) -> HTMLResponse:
    session = auth.current(request)
    rt = _rt(request)
    key, url = rt.settings.ops_api_key, rt.settings.inventory_url
    low = await _get_json(f"{url}/v1/stock/low", key)
    level = await _get_json(f"{url}/v1/stock/{quote(sku.strip())}", key) if sku.strip() else None
    warehouses = await _get_json(f"{url}/v1/warehouses", key)
    return render(
        request,
        "stock.html",
        session,
        status,
        page="stock",
        low=None if low is None else low["items"],
        sku=sku.strip(),
        level=level,
        error=error,
        warehouses=[w["code"] for w in (warehouses or {}).get("items", []) if "code" in w],
    )


@router.post("/stock/{kind}")
async def stock_change(
    request: Request,
    kind: str,
    warehouse: Annotated[str, Form()] = "",
    sku: Annotated[str, Form()] = "",
    quantity: Annotated[str, Form()] = "",
    reason: Reason = "",
    csrf_token: Csrf = "",
) -> Response:
    session = _admin(request, csrf_token)
    rt = _rt(request)
    if kind == "receipts":
        path, body = "receipts", {"warehouse": warehouse, "sku": sku.strip(), "quantity": quantity}
    elif kind == "counts":
        if not reason.strip():
            return await stock_page(request, sku=sku, error="reason: say why", status=422)
        path, body = (
            "adjustments",
            {
                "warehouse": warehouse,
                "sku": sku.strip(),
                "on_hand": quantity,
                "reason": _acted(session.caller.name, reason),
            },
        )
    else:
        return Response(status_code=404)
    status, detail = await _post_admin(
        f"{rt.settings.inventory_url}/v1/stock/{path}", rt.settings.admin_api_key, body
    )
    if status >= 300:
        return await stock_page(request, sku=sku, error=detail, status=status if status < 500 else 502)
    log.info("console.stock_action", action=path, sku=sku.strip(), actor=session.caller.name)
    done = "receipt" if kind == "receipts" else "count"
    return RedirectResponse(f"/ops/stock?sku={quote(sku.strip())}&done={done}", status_code=303)


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


templates.env.filters["json"] = dump
