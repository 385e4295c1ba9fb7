"""The whole OMS for the integration tests: the five service processes, migrated and seeded, on
free ports, against the session's real broker (see the root conftest), with a local SMTP sink.

Started once per test session and stopped at its end, every process by its PID. Provider
timeouts are short here (8 s) so the failure paths run quickly. The carrier simulation is
switched by the ``simulated_carrier`` / ``manual_carrier`` fixtures (shipping is restarted when the
mode changes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from omstools.smtp_sink import Mailbox
from omstools.system import System

TEST_ENV = {
    "OMS_ENV": "test",
    "ORDERS_STEP_TIMEOUT_SECONDS": "10",
    "ORDERS_DEADLINE_POLL_SECONDS": "0.2",
    "PAYMENTS_PROVIDER_TIMEOUT_SECONDS": "8",
    "PAYMENTS_LATE_CAPTURE_SECONDS": "5",
    "SHIPPING_CARRIER_SIMULATION": "false",
    "SHIPPING_SIMULATION_STEP_SECONDS": "0.2",
}


@pytest.fixture(scope="session")
def oms(rabbit, tmp_path_factory) -> Iterator[System]:
    system = System.on_free_ports(tmp_path_factory.mktemp("oms"), rabbit.url, env=dict(TEST_ENV))
    system.carrier = "manual"
    try:
        system.up(timeout=180)
        yield system
    finally:
        system.stop()


def _carrier(oms: System, mode: str) -> None:
    if oms.carrier != mode:
        oms.restart("shipping", env={"SHIPPING_CARRIER_SIMULATION": "true" if mode == "simulated" else "false"})
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
