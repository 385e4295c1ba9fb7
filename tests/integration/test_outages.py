"""A dependency down for a minute under a stream of orders (issue 14): the handlers that need it
wait it out (chassis.broker), nothing is dead-lettered, and once it is back everything is done,
each thing once. Each scenario prints its score: placed, delivered, cancelled, lost, twice.

The outage lasts 60 s, twice the ~31 s in which the delivery limit used to dead-letter every
message in flight; the streams are small and slow, so each test takes little more than the outage.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from integration.conftest import TEST_ENV
from integration.faults import SCORES, Stream, dead_letters, settle
from integration.helpers import OPS, eventually, new_sku, receive

from notifications.templates import TEMPLATES
from omstools.rabbit import free_port
from omstools.smtp_sink import parse_eml
from omstools.system import SERVICES, SMTP, System
from omstools.verify import verify

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 60.0
ORDERS = 35
RATE = 2.0  # orders per second: the stream runs through most of the outage


async def _stocked_sku(inventory_url: str) -> str:
    sku = new_sku()
    async with httpx.AsyncClient(base_url=inventory_url, timeout=30) as inventory:
        for warehouse in ("SH", "BJ"):
            await receive(inventory, warehouse, sku, 1000)
    return sku


async def _orders(orders_url: str, customer: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=orders_url, timeout=30) as client:
        r = await client.get("/v1/orders", params={"customer_id": customer, "limit": 200}, headers=OPS)
        r.raise_for_status()
        return r.json()["items"]


async def _ready(url: str) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        try:
            r = await client.get("/readyz")
        except httpx.TransportError:
            return {"status": "unreachable"}
        return r.json()


async def _score(scenario: str, stream: Stream, orders_url: str, **extra: int) -> dict[str, int]:
    """Wait until every order is final; record and return placed, delivered, cancelled, lost, twice."""
    settled = await settle(stream)
    orders = await _orders(orders_url, stream.customer)
    counts = {
        "placed": settled.placed,
        "delivered": sum(o["status"] == "delivered" for o in orders),
        "cancelled": sum(o["status"] == "cancelled" for o in orders),
        "lost": settled.lost,
        "twice": settled.duplicated,
        **extra,
    }
    SCORES.append(f"{scenario}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def _urls(oms) -> dict[str, str]:
    return {s: oms.url(s) for s in ("orders", "inventory", "payments", "shipping")}


_SUBJECTS = [
    (re.compile(re.escape(subject).replace(re.escape("$order_id"), r"(?P<order>\S+)") + "$"), template)
    for template, locales in TEMPLATES.items()
    for subject, _ in locales.values()
]


class MailCount:
    """How many e-mails each (order, status) got, the status read back from the subject; each file
    of the sink's folder is parsed once."""

    def __init__(self, mailbox, order_ids: set[str]) -> None:
        self.mailbox, self.order_ids = mailbox, order_ids
        self.seen: dict[str, tuple[str, str] | None] = {}

    def __call__(self) -> collections.Counter[tuple[str, str]]:
        for path in sorted(self.mailbox.folder.glob("*.eml")):
            if path.name not in self.seen:
                self.seen[path.name] = self._status_of(parse_eml(path).subject)
        return collections.Counter(k for k in self.seen.values() if k is not None)

    def _status_of(self, subject: str) -> tuple[str, str] | None:
        for pattern, template in _SUBJECTS:
            match = pattern.match(subject)
            if match and match["order"] in self.order_ids:
                return match["order"], template.removeprefix("order.")
        return None


@pytest.mark.timeout(420)  # the outage is 60 s of it
@pytest.mark.usefixtures("simulated_carrier")
async def test_the_smtp_server_down_for_a_minute_sends_every_email_once_when_it_is_back(oms, mailbox):
    sku = await _stocked_sku(oms.url("inventory"))
    parked_before = {d["id"] for d in await dead_letters(oms.url("orders"))}
    stream = Stream(oms.url("orders"), sku, ORDERS, rate=RATE, customer=f"cust-smtp-{uuid.uuid4().hex[:8]}")

    await asyncio.to_thread(oms.stop_service, SMTP)
    down_at = asyncio.get_running_loop().time()
    try:
        placing = asyncio.create_task(stream.run())
        waiting = await eventually(
            lambda: _ready(oms.url("notifications")),
            lambda r: "smtp" in r.get("waiting_for", []),
            timeout=OUTAGE_SECONDS,
            what="notifications not ready, waiting for the SMTP server",
        )
        assert waiting["checks"]["dependencies"] is False
        await placing
        await asyncio.sleep(
            max(0.0, OUTAGE_SECONDS - (asyncio.get_running_loop().time() - down_at))
        )  # the outage
    finally:
        await asyncio.to_thread(oms.start_smtp)

    score = await _score("SMTP server down 60 s", stream, oms.url("orders"))
    assert score["placed"] == ORDERS and score["lost"] == 0 and score["twice"] == 0, score
    assert score["cancelled"] == 0 and score["delivered"] == ORDERS, score
    parked = [d for d in await dead_letters(oms.url("orders")) if d["id"] not in parked_before]
    assert parked == [], f"{len(parked)} messages dead-lettered by the outage, e.g. {parked[0]['queue']}"

    orders = await _orders(oms.url("orders"), stream.customer)
    expected = {(o["id"], h["status"]) for o in orders for h in (await _history(oms, o["id"]))}
    count = MailCount(mailbox, {o["id"] for o in orders})
    sent = await eventually(
        lambda: asyncio.to_thread(count),
        lambda s: set(s) >= expected,
        timeout=90,
        what="an e-mail for every status of every order",
    )
    twice = {k: n for k, n in sent.items() if n > 1}
    assert not twice and set(sent) == expected, (twice, set(sent) ^ expected)
    SCORES.append(
        f"SMTP server down 60 s: e-mails expected={len(expected)} sent={sum(sent.values())} twice={len(twice)}"
    )

    await eventually(  # the last waiting handler notices at its next attempt (back-off up to 10 s)
        lambda: _ready(oms.url("notifications")),
        lambda r: r["status"] == "ready",
        timeout=30,
        what="notifications ready again once the SMTP server is back",
    )
    report = await verify(_urls(oms), settle=60)
    assert report.ok, report.render()


async def _history(oms, order_id: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=oms.url("orders"), timeout=30) as client:
        r = await client.get(f"/v1/orders/{order_id}", headers=OPS)
        r.raise_for_status()
        return r.json()["history"]


class OwnPostgres:
    """A PostgreSQL server of this module's own, in a temporary folder, that a test may stop (a fast
    shutdown, by its PID) and start again on the same port and data."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if not found:
            pytest.skip("needs the local PostgreSQL binaries (apt-get install postgresql)")
        self.bindir = found[-1].parent
        self.home = Path(tempfile.mkdtemp(prefix="oms-outage-pg-"))
        self.user = (
            next((u for u in ("postgres", "nobody") if _user_exists(u)), None) if os.geteuid() == 0 else None
        )
        if self.user:
            shutil.chown(self.home, self.user)
        self.data, self.port = self.home / "data", free_port()
        self.process: subprocess.Popen | None = None
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "oms",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            user=self.user,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://oms@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        with open(self.home / "server.log", "ab") as server_log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.home),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
                user=self.user,
                stdout=subprocess.DEVNULL,
                stderr=server_log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            ).returncode
            != 0
        ):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not start: {(self.home / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: sessions are cut off
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(f"postgresql://oms@127.0.0.1:{self.port}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def on_own_postgres(new_vhost, tmp_path_factory) -> Iterator[tuple[System, OwnPostgres]]:
    """The whole system on a PostgreSQL server of its own (a database per service) and a virtual
    host of its own, with the carrier simulated."""
    if new_vhost is None:
        pytest.skip(
            "a second system needs a broker the suite runs (a virtual host of its own): AMQP_URL is set"
        )
    server = OwnPostgres()
    try:
        server.start()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own, outside the test's
            urls = {svc: pool.submit(asyncio.run, server.create_database(svc)).result(60) for svc in SERVICES}
        env = {
            **TEST_ENV,
            "SHIPPING_CARRIER_SIMULATION": "true",
            # The saga's own deadlines are not what this test is about: long, as they are by default.
            "ORDERS_PAYMENT_TIMEOUT_SECONDS": "600",
            "ORDERS_STEP_TIMEOUT_SECONDS": "600",
            **{f"{svc.upper()}_DATABASE_URL": url for svc, url in urls.items()},
        }
        with new_vhost() as amqp_url:
            oms = System.on_free_ports(tmp_path_factory.mktemp("oms-outage-pg"), amqp_url, env=env)
            try:
                oms.up(timeout=180)
                yield oms, server
            finally:
                oms.stop()
    finally:
        server.remove()


@pytest.mark.timeout(480)  # the system started on PostgreSQL, and the 60 s outage
async def test_postgresql_down_for_a_minute_delays_orders_and_loses_none(on_own_postgres):
    oms, server = on_own_postgres
    sku = await _stocked_sku(oms.url("inventory"))
    stream = Stream(oms.url("orders"), sku, ORDERS, rate=RATE, customer=f"cust-pg-{uuid.uuid4().hex[:8]}")
    placing = asyncio.create_task(stream.run(give_up_after=OUTAGE_SECONDS + 60))
    try:
        await eventually(
            _now(lambda: len(stream.placed)), lambda n: n >= 8, timeout=60, what="orders under way"
        )
        await asyncio.to_thread(server.stop)
        down_at = asyncio.get_running_loop().time()
        try:
            # The orders in flight: some service's handler is waiting for its database.
            ready = await eventually(
                lambda: _readiness(oms),
                lambda r: any("database" in v.get("waiting_for", []) for v in r.values()),
                timeout=OUTAGE_SECONDS,
                what="a service waiting for its database",
            )
            assert all(v.get("checks", {}).get("database") is False for v in ready.values()), ready
            await asyncio.sleep(
                max(0.0, OUTAGE_SECONDS - (asyncio.get_running_loop().time() - down_at))
            )  # the outage
        finally:
            await asyncio.to_thread(server.start)
    finally:
        await placing

    score = await _score("PostgreSQL down 60 s", stream, oms.url("orders"))
    assert not stream.given_up, stream.given_up
    assert score["placed"] == ORDERS and score["lost"] == 0 and score["twice"] == 0, score
    assert score["cancelled"] == 0 and score["delivered"] == ORDERS, score
    assert await dead_letters(oms.url("orders")) == [], "nothing is dead-lettered by an outage"
    await asyncio.to_thread(oms.wait_ready, None, 60)
    report = await verify(_urls(oms), settle=60)
    assert report.ok, report.render()


async def _readiness(oms) -> dict[str, dict]:
    return {svc: await _ready(oms.url(svc)) for svc in SERVICES}


def _now(read):
    async def probe():
        return read()

    return probe
