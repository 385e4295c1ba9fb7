"""TLS to PostgreSQL and RabbitMQ, configured where the connection is: its URL.

PostgreSQL takes libpq's parameters on ``DATABASE_URL``: ``sslmode`` (``disable``, ``prefer``,
``require``, ``verify-ca``, ``verify-full``), ``sslrootcert`` (the CA), ``sslcert`` and ``sslkey``
(a client certificate). asyncpg takes none of them from SQLAlchemy's URL, so ``postgres_connect``
turns them into the ``ssl`` argument it does take (an ``ssl.SSLContext``). RabbitMQ takes an
``amqps://`` URL with ``cafile``, ``certfile`` and ``keyfile`` (aiormq builds the context), so every
connection a service opens (the broker, the outbox relay, the topology, the dashboard) uses it.
The settings ``DATABASE_SSLMODE``/``DATABASE_SSL_CA``/… and ``AMQP_SSL_CA``/… add these to the URLs
(``with_database_tls``, ``with_amqp_tls``).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import make_url

PG_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _with_query(url: str, extra: dict[str, str | None]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: v for k, v in extra.items() if v})
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_database_tls(
    url: str, *, sslmode: str | None, ca: str | None, cert: str | None, key: str | None
) -> str:
    if not url.startswith("postgresql") or not any((sslmode, ca, cert, key)):
        return url
    return _with_query(url, {"sslmode": sslmode, "sslrootcert": ca, "sslcert": cert, "sslkey": key})


def with_amqp_tls(url: str, *, ca: str | None, cert: str | None, key: str | None) -> str:
    if not any((ca, cert, key)):
        return url
    if url.startswith("amqp://"):
        raise ValueError("AMQP_SSL_* need an amqps:// AMQP_URL")
    return _with_query(url, {"cafile": ca, "certfile": cert, "keyfile": key})


def postgres_context(
    sslmode: str, *, ca: str | None, cert: str | None, key: str | None
) -> ssl.SSLContext | bool | str:
    """asyncpg's ``ssl`` argument for libpq's ``sslmode`` and files."""
    if sslmode not in SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}")
    if sslmode == "disable":
        return False
    if sslmode in ("allow", "prefer") and not (ca or cert):
        return sslmode
    context = ssl.create_default_context(cafile=ca)
    if sslmode in ("allow", "prefer", "require") and not ca:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # encrypted, not verified
    else:  # a CA given, or verify-ca / verify-full: the server's certificate must chain to it
        context.check_hostname = sslmode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
    if cert:
        context.load_cert_chain(cert, key)
    return context


def postgres_connect(url: str) -> tuple[str, dict[str, Any]]:
    """The URL without libpq's TLS parameters, and the connect arguments that carry them."""
    parsed = make_url(url)
    params = {k: str(parsed.query[k]) for k in PG_PARAMS if k in parsed.query}
    if not params:
        return url, {}
    stripped = parsed.difference_update_query(PG_PARAMS)
    sslmode = params.get("sslmode") or ("verify-full" if "sslrootcert" in params else "prefer")
    tls = postgres_context(
        sslmode, ca=params.get("sslrootcert"), cert=params.get("sslcert"), key=params.get("sslkey")
    )
    return stripped.render_as_string(hide_password=False), {"ssl": tls}
