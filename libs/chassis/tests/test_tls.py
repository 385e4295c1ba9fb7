"""TLS settings reach the connections: libpq's parameters become asyncpg's ssl argument, the
AMQP CA and client certificate go on the amqps:// URL that every connection opens."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from chassis.settings import ServiceSettings
from chassis.tls import postgres_connect

PG = "postgresql+asyncpg://orders:pw@db.internal:5432/orders"


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    """A self-signed certificate and key, as a CA and as a client certificate."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=oms-test",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder


def test_postgres_tls_settings_become_a_verifying_context(ca):
    settings = ServiceSettings(
        database_url=PG,
        database_sslmode="verify-full",
        database_ssl_ca=str(ca / "cert.pem"),
        database_ssl_cert=str(ca / "cert.pem"),
        database_ssl_key=str(ca / "key.pem"),
    )
    url, args = postgres_connect(settings.database_url)
    assert url == PG, "asyncpg gets no libpq parameter it would refuse"
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "oms-test"),),)]


@pytest.mark.parametrize(
    ("query", "verify", "hostname"),
    [
        ("sslmode=require", ssl.CERT_NONE, False),
        ("sslmode=verify-ca&sslrootcert={ca}", ssl.CERT_REQUIRED, False),
    ],
)
def test_postgres_sslmodes(ca, query, verify, hostname):
    _, args = postgres_connect(f"{PG}?{query.format(ca=ca / 'cert.pem')}")
    assert (args["ssl"].verify_mode, args["ssl"].check_hostname) == (verify, hostname)


def test_no_tls_parameters_leave_the_url_alone():
    assert postgres_connect(PG) == (PG, {})
    assert postgres_connect(f"{PG}?sslmode=disable")[1] == {"ssl": False}
    assert (
        ServiceSettings(database_url="sqlite+aiosqlite:///x.db", database_sslmode="require").database_url
        == "sqlite+aiosqlite:///x.db"
    )


def test_amqp_tls_goes_on_the_amqps_url():
    settings = ServiceSettings(
        amqp_url="amqps://oms:pw@mq:5671/oms",
        amqp_ssl_ca="/etc/oms/ca.pem",
        amqp_ssl_cert="/etc/oms/client.pem",
        amqp_ssl_key="/etc/oms/client.key",
    )
    assert settings.amqp_url == (
        "amqps://oms:pw@mq:5671/oms?cafile=%2Fetc%2Foms%2Fca.pem"
        "&certfile=%2Fetc%2Foms%2Fclient.pem&keyfile=%2Fetc%2Foms%2Fclient.key"
    )
    with pytest.raises(ValidationError, match="amqps"):
        ServiceSettings(amqp_url="amqp://oms:pw@mq:5672/", amqp_ssl_ca="/etc/oms/ca.pem")
