"""Fixtures every test tier shares: a real RabbitMQ broker for the whole session.

Where the broker comes from, in order: ``AMQP_URL`` when set; a node started from the local
``rabbitmq-server`` on free ports in a temporary folder (stopped again at the end); a
testcontainers RabbitMQ when a Docker engine answers. Else the tests that need it fail with a
message that says what to install.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

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
