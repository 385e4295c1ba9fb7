"""Console sessions: an ops or admin key, typed once into the sign-in form, becomes a signed,
expiring cookie; every form carries the session's CSRF token.

The cookie holds no key: only an HMAC of its configured hash (so a key taken out of
configuration ends its sessions at the next request) and the CSRF token, signed with the configured secret and dated
(itsdangerous), ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS, for ``/ops`` only.
A POST must also come from the console's own origin when the browser says where it comes from.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import limits
from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from chassis import keys
from chassis.settings import Role
from chassis.web import Caller

COOKIE = "oms_console"
PATH = "/ops"
CONSOLE_ROLES = (Role.OPS, Role.ADMIN)


class SignedOut(Exception):
    """No valid session: the page answers with the sign-in form."""


class Forbidden(Exception):
    """A session (or sign-in) that may not do this: 403."""


def _serializer(settings: Any) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.session_secret, salt="oms-console-session")


def _fingerprint(settings: Any, entry: keys.ApiKey) -> str:
    return hmac.new(settings.session_secret.encode(), entry.sha256.encode(), hashlib.sha256).hexdigest()[:32]


class Session:
    """Who is signed in, and the token their forms must send back."""

    def __init__(self, caller: Caller, csrf: str) -> None:
        self.caller, self.csrf = caller, csrf

    @property
    def admin(self) -> bool:
        return self.caller.role is Role.ADMIN


def sign_in(settings: Any, key: str) -> tuple[Caller, str]:
    """The caller and the cookie value for a key; SignedOut for an unknown key, Forbidden for a
    key whose role may not use the console (a gateway's)."""
    entry = keys.find(settings.api_keys, key) if key.strip() else None
    if entry is None:
        raise SignedOut
    if entry.role not in CONSOLE_ROLES:
        raise Forbidden
    value = _serializer(settings).dumps({"k": _fingerprint(settings, entry), "c": secrets.token_urlsafe(24)})
    return Caller(name=entry.name, role=entry.role), value


def current(request: Request) -> Session:
    """The request's session, or SignedOut (no cookie, a bad signature, expired, or a key that is
    no longer configured)."""
    settings = request.app.state.runtime.settings
    raw = request.cookies.get(COOKIE)
    if not raw:
        raise SignedOut
    try:
        data = _serializer(settings).loads(raw, max_age=settings.console_session_minutes * 60)
    except BadSignature as exc:  # SignatureExpired is one
        raise SignedOut from exc
    for entry in settings.api_keys:
        if (
            hmac.compare_digest(_fingerprint(settings, entry), str(data.get("k", "")))
            and entry.role in CONSOLE_ROLES
        ):
            return Session(Caller(name=entry.name, role=entry.role), str(data.get("c", "")))
    raise SignedOut


def set_cookie(request: Request, response: Response, value: str) -> None:
    settings = request.app.state.runtime.settings
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(settings.console_session_minutes * 60),
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (Origin, else Referer)."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return claimed is None
    scheme, _, rest = claimed.partition("://")
    host = rest.split("/", 1)[0]
    return scheme == request.url.scheme and host == request.headers.get("host", "")


def check_csrf(request: Request, session: Session, token: str | None) -> None:
    """Forbidden unless the form (or the X-CSRF-Token header) carries the session's token and the
    request comes from the console's origin."""
    sent = token or request.headers.get("x-csrf-token") or ""
    if not same_origin(request) or not session.csrf or not hmac.compare_digest(sent, session.csrf):
        raise Forbidden


class SignInGuard:
    """Failed sign-ins per client address, in a moving window (``console_sign_in_failures``): an
    address that used its share is answered ``429`` before its key is even looked at."""

    def __init__(self, rule: str) -> None:
        self._rule = limits.parse(rule)
        self._failures = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())

    def retry_after(self, address: str) -> int | None:
        """Seconds until the address may try again; None while it may."""
        if self._failures.test(self._rule, "console-sign-in", address):
            return None
        reset = self._failures.get_window_stats(self._rule, "console-sign-in", address).reset_time
        return max(1, int(reset - time.time()) + 1)

    def failed(self, address: str) -> None:
        self._failures.hit(self._rule, "console-sign-in", address)
