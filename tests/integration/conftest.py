"""The whole OMS for the integration tests: the five service processes, migrated and seeded, on
free ports, against the session's real broker (see the root conftest), with a local SMTP sink.

Started once per test session and stopped at its end, every process by its PID. Provider
timeouts are short here (8 s) so the failure paths run quickly. At its end, every log line,
every event published in the session and every dead letter of the system's own messages is
scanned for payment tokens and personal data (tests/personal_data.py): finding one fails the run.
The carrier simulation is
switched by the ``simulated_carrier`` / ``manual_carrier`` fixtures (shipping is restarted when the
mode changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import httpx
import pytest
from personal_data import Finding, scan, scan_logs

from events import topology
from events.names import EVENTS_EXCHANGE
from omstools.smtp_sink import Mailbox
from omstools.system import SMTP, System

TEST_ENV = {
    "OMS_ENV": "test",
    "ORDERS_STEP_TIMEOUT_SECONDS": "10",
    "ORDERS_DEADLINE_POLL_SECONDS": "0.2",
    "PAYMENTS_PROVIDER_TIMEOUT_SECONDS": "8",
    "PAYMENTS_LATE_CAPTURE_SECONDS": "5",
    "SHIPPING_CARRIER_SIMULATION": "false",
    "SHIPPING_SIMULATION_STEP_SECONDS": "0.2",
}


class EventTap:
    """A durable queue bound to every event, read at the end of the session: what was published."""

    def __init__(self, url: str) -> None:
        self.url, self.queue = url, f"test.personal-data-tap.{uuid.uuid4().hex[:8]}"

    async def _channel(self) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
        connection = await aio_pika.connect(self.url)
        return connection, await connection.channel()

    def start(self) -> None:
        async def bind() -> None:
            connection, channel = await self._channel()
            async with connection:
                await topology.declare(channel)  # as every service does at start: the exchange is there
                queue = await channel.declare_queue(self.queue, durable=True)
                await queue.bind(EVENTS_EXCHANGE, routing_key="#")

        asyncio.run(bind())

    def drain(self) -> list[str]:
        """Every event the queue holds, as text; the queue is deleted."""

        async def read() -> list[str]:
            connection, channel = await self._channel()
            bodies = []
            async with connection:
                await channel.set_qos(prefetch_count=1000)
                queue = await channel.declare_queue(self.queue, durable=True)
                waiting = queue.declaration_result.message_count  # the system is stopped: no more come
                if waiting:
                    with contextlib.suppress(TimeoutError):  # a quiet 30 s: nothing more will come
                        async with queue.iterator(no_ack=True, timeout=30) as messages:
                            async for message in messages:
                                bodies.append(message.body.decode("utf-8", "replace"))
                                if len(bodies) == waiting:
                                    break
                await queue.delete(if_unused=False, if_empty=False)
            return bodies

        return asyncio.run(read())


def _own_dead_letters(database: str) -> list[str]:
    """Dead letters of messages the system itself sent (``source`` oms/…), not those a test planted."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT body FROM dead_letter WHERE body_encoding = 'utf-8'").fetchall()
    own = []
    for (body,) in rows:
        try:
            source = json.loads(body).get("source", "")
        except (ValueError, AttributeError):
            continue
        if isinstance(source, str) and source.startswith("oms/"):
            own.append(body)
    return own


def personal_data_left(system: System, events: list[str]) -> list[Finding]:
    found = scan_logs(system.logs_dir, skip=[SMTP])  # the SMTP sink plays the customers' mailbox
    found += scan("event", events)
    database = system.var_dir / "orders.db"
    if database.exists():
        found += scan("dead letter", _own_dead_letters(str(database)))
    return found


@pytest.fixture(scope="session")
def oms(rabbit, tmp_path_factory) -> Iterator[System]:
    system = System.on_free_ports(tmp_path_factory.mktemp("oms"), rabbit.url, env=dict(TEST_ENV))
    system.carrier = "manual"
    tap = EventTap(rabbit.url)
    events: list[str] = []
    try:
        tap.start()
        system.up(timeout=180)
        yield system
    finally:
        system.stop()
        events = tap.drain()
    found = personal_data_left(system, events)
    assert not found, (
        f"{len(found)} payment tokens or personal data written where none may be:\n"
        + "\n".join(str(f) for f in found[:20])
    )


def _carrier(oms: System, mode: str) -> None:
    if oms.carrier != mode:
        oms.restart(
            "shipping", env={"SHIPPING_CARRIER_SIMULATION": "true" if mode == "simulated" else "false"}
        )
        oms.carrier = mode


@pytest.fixture
def simulated_carrier(oms: System) -> None:
    """The simulated carrier walks every parcel to delivered by itself."""
    _carrier(oms, "simulated")


@pytest.fixture
def manual_carrier(oms: System) -> None:
    """Parcels stay where they are until the test posts carrier events."""
    _carrier(oms, "manual")


async def _client(oms: System, svc: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=oms.url(svc), timeout=30) as client:
        yield client


@pytest.fixture
async def orders(oms):
    async for c in _client(oms, "orders"):
        yield c


@pytest.fixture
async def inventory(oms):
    async for c in _client(oms, "inventory"):
        yield c


@pytest.fixture
async def payments(oms):
    async for c in _client(oms, "payments"):
        yield c


@pytest.fixture
async def shipping(oms):
    async for c in _client(oms, "shipping"):
        yield c


@pytest.fixture
async def clients(oms):
    pool = {svc: httpx.AsyncClient(base_url=oms.url(svc), timeout=30) for svc in oms.services}
    yield pool
    for client in pool.values():
        await client.aclose()


@pytest.fixture
def mailbox(oms) -> Mailbox:
    return Mailbox(oms.mail_dir)


def pytest_terminal_summary(terminalreporter) -> None:
    """The fault scenarios' counts (placed, final, lost, duplicated), for the record."""
    from integration.faults import SCORES

    if SCORES:
        terminalreporter.section("fault scenarios")
        for line in SCORES:
            terminalreporter.write_line(line)
