"""Fixtures every test tier shares: a real RabbitMQ broker for the whole session, and a real
PostgreSQL server for the tests that are about it (``postgres_database``: a fresh database each).

Where the broker comes from, in order: ``AMQP_URL`` when set; a node started from the local
``rabbitmq-server`` on free ports in a temporary folder (stopped again at the end); a
testcontainers RabbitMQ when a Docker engine answers. Else the tests that need it fail with a
message that says what to install.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from omstools.postgres import PostgresServer, bindir
from omstools.rabbit import RabbitNode, rabbitmq_installed


@dataclass
class Broker:
    url: str
    node: RabbitNode | None = None  # set when the suite started the node itself (fault tests need it)
    management_url: str | None = None


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def rabbit() -> Iterator[Broker]:
    if os.environ.get("AMQP_URL"):
        yield Broker(os.environ["AMQP_URL"])
        return
    if rabbitmq_installed():
        home = tempfile.mkdtemp(prefix="oms-test-rabbit-")
        node = RabbitNode(home).start()
        try:
            yield Broker(node.url, node=node, management_url=node.management_url)
        finally:
            node.stop()
            shutil.rmtree(home, ignore_errors=True)
        return
    if _docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            params = container.get_connection_params()
            yield Broker(f"amqp://guest:guest@{params.host}:{params.port}/")
        return
    pytest.fail("no RabbitMQ: set AMQP_URL, install rabbitmq-server (apt-get), or run a Docker engine")


@contextlib.contextmanager
def own_vhost(rabbit: Broker) -> Iterator[str]:
    """The URL of a virtual host of its own on the suite's node (no other consumer, such as the
    integration tests' services, can take its messages), deleted afterwards."""
    assert rabbit.node is not None, "only on a node the suite runs"
    vhost = f"test-{uuid.uuid4().hex[:8]}"
    rabbit.node.ctl("add_vhost", vhost)
    rabbit.node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield rabbit.url.rstrip("/") + "/" + vhost
    finally:
        rabbit.node.ctl("delete_vhost", vhost, check=False)


@pytest.fixture(scope="session")
def new_vhost(rabbit: Broker) -> Callable[[], contextlib.AbstractContextManager[str]] | None:
    """``with new_vhost() as url``: :func:`own_vhost`; None when the suite does not run the node."""
    return functools.partial(own_vhost, rabbit) if rabbit.node is not None else None


@pytest.fixture
def amqp_url(rabbit: Broker) -> Iterator[str]:
    """A virtual host of this test's own when the suite runs the node; the broker's default one
    otherwise."""
    if rabbit.node is None:
        yield rabbit.url
        return
    with own_vhost(rabbit) as url:
        yield url


# ---- PostgreSQL, for the tests that are about it ------------------------------------------------
@dataclass
class Postgres:
    url: str  # a maintenance connection: postgresql+asyncpg://user@host:port/postgres

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """``OMS_TEST_POSTGRES_URL`` when set; else a server started from the local PostgreSQL on a free
    port in a temporary folder (stopped again by its PID); else a testcontainers one."""
    if os.environ.get("OMS_TEST_POSTGRES_URL"):
        yield Postgres(os.environ["OMS_TEST_POSTGRES_URL"])
        return
    if bindir() is not None:
        home = Path(tempfile.mkdtemp(prefix="oms-test-pg-"))
        server = PostgresServer(home).start()
        try:
            yield Postgres(server.url)
        finally:
            server.stop()
            shutil.rmtree(home, ignore_errors=True)
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="asyncpg") as container:
            yield Postgres(container.get_connection_url())
        return
    pytest.fail(
        "no PostgreSQL: set OMS_TEST_POSTGRES_URL, install postgresql (apt-get), or run a Docker engine"
    )


def _admin(postgres: Postgres, sql: str) -> None:
    """One statement on the maintenance database, from a loop of its own (usable by sync fixtures)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(postgres.url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result(timeout=60)


@contextlib.contextmanager
def fresh_database(postgres: Postgres) -> Iterator[str]:
    """The URL of a fresh, empty database; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    _admin(postgres, f'CREATE DATABASE "{name}"')
    try:
        yield postgres.database_url(name)
    finally:
        _admin(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def new_database(postgres: Postgres) -> Callable[[], contextlib.AbstractContextManager[str]]:
    """``with new_database() as url``: :func:`fresh_database`, for fixtures of a wider scope."""
    return functools.partial(fresh_database, postgres)


@pytest.fixture
def postgres_database(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database of this test's own."""
    with fresh_database(postgres) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def any_database_url(request, tmp_path) -> str:
    """A fresh database of the test's own: on SQLite, then (run again) on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/service.db"
    return request.getfixturevalue("postgres_database")
