"""A RabbitMQ node of our own, crashed with kill -9 and started again, keeps what it confirmed:
persistent messages in durable queues (classic and quorum) survive; the node is reachable again
on the same port."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from omstools.rabbit import BrokerUnavailable, RabbitNode, port_open, rabbitmq_installed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not rabbitmq_installed(), reason="rabbitmq-server is not installed (make test installs it)"
    ),
]

QUEUES = {
    "tools-test.classic": {},
    "tools-test.quorum": {"x-queue-type": "quorum"},
}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RabbitNode]:
    home = tmp_path / "rabbit"
    node = RabbitNode(home, management=False)
    try:
        yield node.start()
    finally:
        node.stop()
        shutil.rmtree(home, ignore_errors=True)


async def publish(url: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for name, arguments in QUEUES.items():
            await channel.declare_queue(name, durable=True, arguments=arguments)
            for body in bodies:
                # returns only when the broker confirmed it
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name
                )
    finally:
        await connection.close()


async def drain(url: str) -> dict[str, list[bytes]]:
    connection = await aio_pika.connect(url)
    got: dict[str, list[bytes]] = {}
    try:
        channel = await connection.channel()
        for name, arguments in QUEUES.items():
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            got[name] = []
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                got[name].append(message.body)
                await message.ack()
    finally:
        await connection.close()
    return got


async def quorum_queues_registered(node: RabbitNode, timeout: float = 30.0) -> None:
    """Wait until Ra has written the quorum queues into its names table on disk.

    Ra saves that table (a dets file) about a second after a quorum queue is declared; a node
    killed before then comes back with the queue as a follower of nothing (term 0, no log): it
    never gets a leader, ``basic.get`` hangs and publishes to it are nacked. Seen on 3.10.8 / Ra
    2.2.0. A real broker crash that soon after a declaration is the same, and out of our hands.
    """
    names = node.home / "mnesia" / node.name / "quorum" / node.name / "names.dets"
    wanted = [
        name.encode() for name, arguments in QUEUES.items() if arguments.get("x-queue-type") == "quorum"
    ]
    deadline = time.monotonic() + timeout
    while not (names.exists() and all(w in names.read_bytes() for w in wanted)):
        assert time.monotonic() < deadline, f"quorum queues not in {names} after {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_killed_node_started_again_keeps_persistent_messages_in_durable_queues(node):
    bodies = [f"order-{n}".encode() for n in range(50)]
    await publish(node.url, bodies)
    await quorum_queues_registered(node)
    beam = node.beam_pid()
    assert beam

    node.kill()
    assert not port_open(node.amqp_port), "the node is down"
    node.start()
    assert node.beam_pid() != beam, "a new Erlang VM"

    assert await drain(node.url) == {name: bodies for name in QUEUES}
    assert await drain(node.url) == {name: [] for name in QUEUES}, "each message once"


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_a_node_that_does_not_come_up_in_time_leaves_no_process_behind(tmp_path: Path):
    node = RabbitNode(tmp_path / "rabbit", management=False)
    with pytest.raises(BrokerUnavailable):
        node.start(timeout=0.5)  # a node takes seconds to boot: the caller gives up first
    epmd_port = f"-port {node.epmd_port}".split()
    assert _processes_naming(node.name) == [], "the Erlang VM and its wrapper are stopped"
    assert not [
        pid
        for pid in _processes_naming("epmd")
        if all(part.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() for part in epmd_port)
    ], "the node's own epmd is stopped"
