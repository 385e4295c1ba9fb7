"""``make bench``: the load benchmark of CONTRACT §8.

What it does, in this order:
1. A system: the one already running at the standard ports (``make run``) when ``orders`` answers
   there, else one of its own (a RabbitMQ node from ``rabbitmq-server`` unless ``--amqp-url``, the
   five services on free ports, a temporary folder), stopped again at the end. ``--start`` always
   starts one.
2. Demo stock large enough for the run (``POST /v1/stock/receipts`` of a bench SKU at every
   warehouse).
3. **The ceiling**: a raw aio-pika publisher and consumer on the same broker, durable quorum
   queue, persistent messages, publisher confirms (many in flight), as fast as they go →
   broker messages/s, and the CPU one message costs the broker and the client there (the floor
   under what an order's messages cost the system).
4. **Messages per order**: a few orders with a tap on both exchanges; for each order, the
   messages (events and commands, by CloudEvents ``subject``) published up to its ``paid``.
5. **Phase saturation**: as fast as the system takes them (closed loop: a window of orders in
   flight between ``POST`` and ``paid``; a new one whenever one is paid). **Phase fixed**, after
   it: orders at a fixed offered rate, half the saturation's paid rate unless ``--rate`` sets one
   (open loop: a POST every 1/rate s whatever the answers), so its latency is that of a system
   at half load.

Latency is measured from events, not by polling: a queue of the bench's own bound to
``oms.events``/``order.status_changed`` records when each order's ``paid`` and ``shipped`` reach a
subscriber, minus the time its ``POST`` was sent (HdrHistogram, microsecond precision). So it
includes the outbox relay of the status event. ``shipped`` is the first of ``shipped``,
``in_transit`` or ``delivered`` (a carrier's scans may overtake each other); it includes the
simulated carrier's pick-up step (``SHIPPING_SIMULATION_STEP_SECONDS``, 1 s by default).

Rates count the ``paid``/``shipped`` events that arrive within the phase's window, ÷ its length.
CPU seconds per order: each service process's and the broker's CPU time from the phase's start
until its orders are delivered (psutil, processes found by their listening ports) ÷ orders paid in
the phase. Each phase is drained to ``delivered`` before the next starts.

Output: a table on the terminal, ``bench/results/<timestamp>.json`` (CONTRACT §8 keys and more)
and ``<timestamp>.png`` beside it (latency to ``paid`` over time and its percentile curve).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psutil
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from events.names import COMMANDS_EXCHANGE, EVENTS_EXCHANGE
from events.topology import QUEUES
from omstools.rabbit import RabbitNode, rabbitmq_installed
from omstools.system import DEFAULT_PORTS, SERVICES, System

GATEWAY = {"Authorization": "Bearer dev-gateway-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
SKU = "SKU-BENCH-MUG"
WAREHOUSES = ("SH", "BJ", "FRA", "NYC")
# A carrier may report a parcel in transit (or delivered) before its pick-up scan reaches us: the
# order then skips `shipped`. Either way the parcel has left; that moment is its `shipped`.
LEFT_THE_WAREHOUSE = {"shipped", "in_transit", "delivered"}
PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}
LATENCY_MAX_US = 600_000_000  # 10 minutes
IDLE_CPU = 0.15  # CPU-seconds per second, all processes together: an idle system uses about 0.04

console = Console(stderr=True)


def say(text: str) -> None:
    console.print(f"[bench] {text}", highlight=False)


# ---- the order the load generator places --------------------------------------------------------
def order_body(n: int) -> dict[str, Any]:
    """A small order near Shanghai, paid with the sandbox token that always succeeds."""
    return {
        "customer": {
            "id": f"bench-{n % 1000}",
            "name": "Bench Customer",
            "email": f"bench{n % 1000}@example.com",
            "locale": "en",
        },
        "shipping_address": {
            "name": "Bench Customer",
            "line1": "1 Century Ave",
            "city": "Shanghai",
            "postal_code": "200120",
            "country": "CN",
            "latitude": 31.23,
            "longitude": 121.50,
        },
        "items": [{"sku": SKU, "quantity": 1, "unit_price": "19.90"}],
        "currency": "CNY",
        "payment": {"method": "card", "token": "tok_ok"},
        "channel": "web",
    }


# ---- what the bench watches ----------------------------------------------------------------------
@dataclass
class Placed:
    phase: str
    sent_at: float  # perf_counter when the POST was sent
    paid_at: float | None = None
    shipped_at: float | None = None
    cancelled: str | None = None
    delivered_at: float | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # paid or cancelled

    async def wait_settled(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), max(0.0, timeout))


@dataclass
class Tracker:
    """Orders by id, filled from the POST answers and the ``order.status_changed`` events."""

    orders: dict[str, Placed] = field(default_factory=dict)
    early: dict[str, list[tuple[str, float, str | None]]] = field(default_factory=dict)
    paid_events: list[tuple[float, str]] = field(default_factory=list)
    shipped_events: list[tuple[float, str]] = field(default_factory=list)

    def placed(self, order_id: str, placed: Placed) -> None:
        self.orders[order_id] = placed
        for status, at, reason in self.early.pop(order_id, []):  # an event that beat the answer
            self._apply(order_id, placed, status, at, reason)

    def status(self, order_id: str, status: str, at: float, reason: str | None) -> None:
        placed = self.orders.get(order_id)
        if placed is None:
            self.early.setdefault(order_id, []).append((status, at, reason))
            return
        self._apply(order_id, placed, status, at, reason)

    def _apply(self, order_id: str, placed: Placed, status: str, at: float, reason: str | None) -> None:
        if status == "paid" and placed.paid_at is None:
            placed.paid_at = at
            self.paid_events.append((at, placed.phase))
            placed.settled.set()
        elif status in LEFT_THE_WAREHOUSE and placed.shipped_at is None:
            placed.shipped_at = at
            self.shipped_events.append((at, placed.phase))
        if status == "delivered" and placed.delivered_at is None:
            placed.delivered_at = at
        if status == "cancelled":
            placed.cancelled = reason or "unknown"
            placed.settled.set()

    def of(self, phase: str) -> list[Placed]:
        return [p for p in self.orders.values() if p.phase == phase]


async def watch_status(
    connection: aio_pika.abc.AbstractConnection, tracker: Tracker
) -> aio_pika.abc.AbstractQueue:
    """A queue of our own (exclusive, gone with the connection) on every order status change."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
    q = await channel.declare_queue(exclusive=True, auto_delete=True)
    await q.bind(exchange, routing_key="order.status_changed")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        at = time.perf_counter()
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data = json.loads(message.body)["data"]
            tracker.status(data["order_id"], data["to_status"], at, data.get("reason"))

    await q.consume(on_message, no_ack=True)  # a watcher's own queue: nothing to redeliver
    return q


# ---- the broker's ceiling ------------------------------------------------------------------------
async def ceiling(amqp_url: str, seconds: float, size: int = 300, in_flight: int = 256) -> dict[str, Any]:
    """Persistent messages through a durable quorum queue, publisher confirms, one publisher and
    one consumer (each on its own connection), as fast as they go. Messages/s consumed."""
    name = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    pub_conn = await aio_pika.connect(amqp_url)
    sub_conn = await aio_pika.connect(amqp_url)
    try:
        pub = await pub_conn.channel(publisher_confirms=True)
        sub = await sub_conn.channel()
        await sub.set_qos(prefetch_count=in_flight)
        queue = await sub.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        consumed = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal consumed
            consumed += 1
            await message.ack()

        tag = await queue.consume(on_message)
        body = b"x" * size
        gate = asyncio.Semaphore(in_flight)
        stop_at = time.perf_counter() + seconds
        pending: set[asyncio.Task] = set()

        async def publish_one() -> None:
            try:
                await pub.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=name,
                    mandatory=True,
                )
            finally:
                gate.release()

        start = time.perf_counter()
        while time.perf_counter() < stop_at:
            await gate.acquire()
            task = asyncio.create_task(publish_one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        elapsed, through = time.perf_counter() - start, consumed
        await asyncio.gather(*pending, return_exceptions=True)
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return {
            "broker_msgs_per_s": round(through / elapsed, 1),
            "seconds": round(elapsed, 1),
            "messages": through,
            "message_bytes": size,
            "in_flight": in_flight,
            "queue": "quorum, durable",
            "delivery": "persistent, publisher confirms, manual ack",
        }
    finally:
        await pub_conn.close()
        await sub_conn.close()


# ---- messages one order costs up to `paid` -------------------------------------------------------
async def messages_per_order(
    connection: aio_pika.abc.AbstractConnection,
    client: httpx.AsyncClient,
    tracker: Tracker,
    orders: int,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Places ``orders`` orders one at a time with a tap on both exchanges, and counts for each the
    messages with its id as ``subject`` that were published before its ``paid`` reached us."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    seen: list[tuple[float, str | None, str]] = []
    # events: a topic exchange, every key; commands: a direct one, each key a service consumes
    taps = {
        EVENTS_EXCHANGE: ["#"],
        COMMANDS_EXCHANGE: sorted(q.routing_key for q in QUEUES if q.exchange == COMMANDS_EXCHANGE),
    }

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        at = time.perf_counter()
        with contextlib.suppress(ValueError, KeyError, TypeError):
            envelope = json.loads(message.body)
            seen.append((at, envelope.get("subject") or envelope.get("correlationid"), envelope["type"]))

    for exchange_name, keys in taps.items():
        exchange = await channel.get_exchange(exchange_name, ensure=False)
        tap = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in keys:
            await tap.bind(exchange, routing_key=key)
        await tap.consume(on_message, no_ack=True)

    counts: list[int] = []
    kinds: Counter[str] = Counter()
    for n in range(orders):
        order_id = await place(client, tracker, "calibration", n)
        assert order_id is not None, "a calibration order was refused"
        placed = tracker.orders[order_id]
        await placed.wait_settled(timeout)
        if placed.paid_at is None:
            raise RuntimeError(
                f"calibration order {order_id} was not paid: {placed.cancelled or 'timed out'}"
            )
        paid_at = placed.paid_at
        await asyncio.sleep(0.05)  # messages are consumed from two queues: let the slower one catch up
        mine = [t for at, subject, t in seen if subject == order_id and at <= paid_at + 0.05]
        counts.append(len(mine))
        kinds.update(t.removeprefix("oms.").removesuffix(".v1") for t in mine)
    await channel.close()
    return {
        "messages_per_order": round(sum(counts) / len(counts), 2),
        "orders": len(counts),
        "by_type": {k: round(v / len(counts), 2) for k, v in sorted(kinds.items())},
    }


# ---- placing orders ------------------------------------------------------------------------------
_numbers = itertools.count()


async def place(
    client: httpx.AsyncClient,
    tracker: Tracker,
    phase: str,
    n: int | None = None,
    errors: Counter[str] | None = None,
    *,
    wait_when_refused: bool = False,
) -> str | None:
    """POST one order; its id, or None (counted in ``errors``) when it was not accepted. A ``503``
    (admission control) is waited out for its ``Retry-After`` when ``wait_when_refused``, as a
    gateway would."""
    n = next(_numbers) if n is None else n
    sent = time.perf_counter()
    try:
        r = await client.post(
            "/v1/orders",
            json=order_body(n),
            headers={**GATEWAY, "Idempotency-Key": f"bench-{uuid.uuid4().hex}"},
        )
    except httpx.HTTPError as exc:
        if errors is None:
            raise
        errors[f"http_{type(exc).__name__}"] += 1
        return None
    if r.status_code != 202:
        if errors is None:
            raise RuntimeError(f"POST /v1/orders answered {r.status_code}: {r.text[:300]}")
        errors[f"http_{r.status_code}"] += 1
        if r.status_code == 503 and wait_when_refused:
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        return None
    order_id = r.json()["id"]
    tracker.placed(order_id, Placed(phase, sent))
    return order_id


@dataclass
class PhaseRun:
    name: str
    started: float
    ended: float
    offered_per_s: float | None
    errors: Counter[str]
    cpu: dict[str, float]


async def fixed_phase(
    client: httpx.AsyncClient, tracker: Tracker, rate: float, seconds: float, progress: Progress
) -> PhaseRun:
    errors: Counter[str] = Counter()
    total = int(rate * seconds)
    task = progress.add_task(f"fixed {rate:g}/s", total=total)
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(place(client, tracker, "fixed", errors=errors))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        t.add_done_callback(lambda _t: progress.advance(task))
    ended = max(time.perf_counter(), start + seconds)
    await asyncio.gather(*tasks)
    return PhaseRun("fixed", start, ended, rate, errors, {})


async def saturation_phase(
    client: httpx.AsyncClient, tracker: Tracker, seconds: float, window: int, progress: Progress
) -> PhaseRun:
    errors: Counter[str] = Counter()
    task = progress.add_task(f"saturation ({window} in flight)", total=seconds)
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            order_id = await place(client, tracker, "saturation", errors=errors, wait_when_refused=True)
            if order_id is None:
                await asyncio.sleep(0.05)
                continue
            await tracker.orders[order_id].wait_settled(stop_at - time.perf_counter())

    async def ticker() -> None:
        while (now := time.perf_counter()) < stop_at:
            progress.update(task, completed=now - start)
            await asyncio.sleep(0.25)
        progress.update(task, completed=seconds)

    await asyncio.gather(ticker(), *(worker() for _ in range(window)))
    return PhaseRun("saturation", start, stop_at, None, errors, {})


async def drain(tracker: Tracker, phase: str, until: str, timeout: float) -> None:
    """Wait (at most ``timeout``) for every order of ``phase`` to reach ``until`` or be cancelled.
    Phases are drained to ``delivered``, so the next phase starts on a quiet system and each
    phase's CPU is its own orders' whole life."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        waiting = [
            oid
            for oid, p in tracker.orders.items()
            if p.phase == phase and not p.cancelled and getattr(p, f"{until}_at") is None
        ]
        if not waiting:
            return
        await asyncio.sleep(0.1)
    say(f"{len(waiting)} {phase} orders not {until} after {timeout:g} s, e.g. {', '.join(waiting[:3])}")


async def quiet(
    connection: aio_pika.abc.AbstractConnection,
    procs: dict[str, psutil.Process],
    timeout: float,
    calm_seconds: float = 3.0,
) -> None:
    """Wait (at most ``timeout``) until the system has nothing left to do: every queue empty and the
    processes idle for ``calm_seconds``. A drained phase can still leave work behind (the refund of
    a capture that came after the saga gave up, its e-mail): it belongs to that phase, not the next."""
    channel = await connection.channel()
    deadline = time.perf_counter() + timeout
    calm_since: float | None = None
    before, at = cpu_times(procs), time.perf_counter()
    busy: dict[str, float] = {}
    ready: dict[str, int] = {}
    try:
        while time.perf_counter() < deadline:
            await asyncio.sleep(1.0)
            cpu, now = cpu_times(procs), time.perf_counter()
            busy = {name: (cpu[name] - before[name]) / (now - at) for name in cpu if name in before}
            before, at = cpu, now
            ready = {}
            for spec in QUEUES:
                # A robust channel answers a passive declare with the queue object it made the first
                # time: declare() asks the broker again, for the count of now.
                counted = await (await channel.declare_queue(spec.name, passive=True)).declare()
                if counted.message_count:
                    ready[spec.name] = counted.message_count
            if ready or sum(busy.values()) > IDLE_CPU:
                calm_since = None
            elif calm_since is None:
                calm_since = now
            elif now - calm_since >= calm_seconds:
                return
        cpu_text = ", ".join(f"{name} {value:.2f}" for name, value in sorted(busy.items()))
        say(
            f"the system was still busy after {timeout:g} s: messages waiting {ready or 'none'}; CPU-s/s {cpu_text}"
        )
    finally:
        await channel.close()


# ---- figures -------------------------------------------------------------------------------------
def histogram(values_s: list[float]) -> HdrHistogram:
    h = HdrHistogram(1, LATENCY_MAX_US, 3)
    for v in values_s:
        h.record_value(max(1, min(LATENCY_MAX_US, int(v * 1_000_000))))
    return h


def latency_ms(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {k: None for k in (*PERCENTILES, "max")}  # type: ignore[misc]
    h = histogram(values_s)
    out = {k: round(h.get_value_at_percentile(p) / 1000, 1) for k, p in PERCENTILES.items()}
    out["max"] = round(h.get_max_value() / 1000, 1)
    return out


def phase_figures(run: PhaseRun, tracker: Tracker) -> dict[str, Any]:
    orders = tracker.of(run.name)
    length = run.ended - run.started
    paid_in = sum(
        1 for at, phase in tracker.paid_events if phase == run.name and run.started <= at <= run.ended
    )
    shipped_in = sum(
        1 for at, phase in tracker.shipped_events if phase == run.name and run.started <= at <= run.ended
    )
    paid = [p.paid_at - p.sent_at for p in orders if p.paid_at is not None]
    shipped = [p.shipped_at - p.sent_at for p in orders if p.shipped_at is not None]
    errors = Counter(run.errors)
    for p in orders:
        if p.cancelled:
            errors[f"cancelled_{p.cancelled}"] += 1
        elif p.paid_at is None:
            errors["not_paid_in_time"] += 1
        elif p.shipped_at is None:
            errors["not_shipped_in_time"] += 1
        elif p.delivered_at is None:
            errors["not_delivered_in_time"] += 1
    paid_total = max(1, len(paid))
    return {
        "offered_per_s": run.offered_per_s,
        "duration_s": round(length, 1),
        "placed": len(orders),
        "paid_per_s": round(paid_in / length, 1),
        "shipped_per_s": round(shipped_in / length, 1),
        "latency_ms": {"paid": latency_ms(paid), "shipped": latency_ms(shipped)},
        "errors": dict(errors),
        "cpu_s_per_order": {name: round(s / paid_total, 4) for name, s in run.cpu.items()},
        "cpu_s_per_order_total": round(sum(run.cpu.values()) / paid_total, 4),
    }


def cpu_times(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[name] = t.user + t.system
    return out


def cpu_delta(procs: dict[str, psutil.Process], before: dict[str, float]) -> dict[str, float]:
    after = cpu_times(procs)
    return {name: after[name] - before[name] for name in before if name in after}


def listening_process(port: int) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return psutil.Process(c.pid)
    return None


# ---- the system under test -----------------------------------------------------------------------
@dataclass
class Target:
    urls: dict[str, str]
    amqp_url: str
    what: str
    procs: dict[str, psutil.Process]
    stop: list[Any] = field(default_factory=list)


def running_system() -> Target | None:
    ports = {svc: int(os.environ.get(f"{svc.upper()}_HTTP_PORT", DEFAULT_PORTS[svc])) for svc in SERVICES}
    try:
        if httpx.get(f"http://127.0.0.1:{ports['orders']}/readyz", timeout=2).status_code != 200:
            return None
    except httpx.HTTPError:
        return None
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    procs = {svc: p for svc, port in ports.items() if (p := listening_process(port))}
    amqp_port = httpx.URL(amqp_url.replace("amqp://", "http://", 1)).port or 5672
    if (broker := listening_process(amqp_port)) is not None:
        procs["rabbitmq"] = broker
    return Target(
        {svc: f"http://127.0.0.1:{port}" for svc, port in ports.items()},
        amqp_url,
        "the system already running (make run)",
        procs,
    )


def start_system(
    amqp_url: str | None, step_seconds: str, keep: bool, card_processor: str = "stripe"
) -> Target:
    folder = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    stops: list[Any] = [lambda: say(f"kept {folder}") if keep else shutil.rmtree(folder, ignore_errors=True)]
    node = None
    try:
        if amqp_url is None:
            if not rabbitmq_installed():
                raise SystemExit(
                    "no rabbitmq-server: install it (apt-get install rabbitmq-server) or pass --amqp-url"
                )
            say("starting a RabbitMQ node of its own")
            node = RabbitNode(folder / "rabbitmq", management=False)
            stops.append(node.stop)
            node.start()
            amqp_url = node.url
        system = System.on_free_ports(
            folder / "oms",
            amqp_url,
            env={
                "OMS_ENV": "local",
                "LOG_JSON": "true",
                "SHIPPING_CARRIER_SIMULATION": "true",
                "SHIPPING_SIMULATION_STEP_SECONDS": step_seconds,
            },
            report=lambda line: say(line),
            card_processor=card_processor,
        )
        stops.append(system.stop)
        say("starting the five services (migrate, seed, start)")
        system.up(timeout=180)
    except BaseException:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()
        raise
    procs = {svc: psutil.Process(pid) for svc in SERVICES if (pid := system.pid(svc))}
    if node is not None and (beam := node.beam_pid()):
        procs["rabbitmq"] = psutil.Process(beam)
    elif (
        broker := listening_process(httpx.URL(amqp_url.replace("amqp://", "http://", 1)).port or 5672)
    ) is not None:
        procs["rabbitmq"] = broker  # a broker given by --amqp-url, when it runs on this machine
    return Target(
        {svc: system.url(svc) for svc in SERVICES},
        amqp_url,
        f"a system started by the bench (cards: {card_processor})",
        procs,
        stops,
    )


async def load_stock(inventory_url: str, units: int) -> None:
    async with httpx.AsyncClient(base_url=inventory_url, timeout=30) as client:
        for warehouse in WAREHOUSES:
            r = await client.post(
                "/v1/stock/receipts",
                headers=ADMIN,
                json={"warehouse": warehouse, "sku": SKU, "quantity": units},
            )
            r.raise_for_status()


async def broker_version(connection: aio_pika.abc.AbstractConnection) -> str:
    with contextlib.suppress(Exception):
        props = connection.transport.connection.server_properties  # type: ignore[union-attr]
        product, version = props.get("product", "RabbitMQ"), props.get("version", "?")
        return (
            f"{product.decode() if isinstance(product, bytes) else product} "
            f"{version.decode() if isinstance(version, bytes) else version}"
        )
    return "RabbitMQ (version unknown)"


# ---- output --------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> Table:
    t = Table(
        title=f"OMS benchmark {result['started_at']} — {result['machine']['cpus']} CPUs, "
        f"{result['machine']['broker']}, everything on one machine"
    )
    t.add_column("phase")
    for col in (
        "placed",
        "paid/s",
        "shipped/s",
        "paid p50",
        "p95",
        "p99",
        "max",
        "shipped p50",
        "p99",
        "CPU ms/order",
        "errors",
    ):
        t.add_column(col, justify="right")
    for name, ph in result["phases"].items():
        lp, ls = ph["latency_ms"]["paid"], ph["latency_ms"]["shipped"]
        label = f"{name} ({ph['offered_per_s']:g}/s offered)" if ph["offered_per_s"] else name
        t.add_row(
            label,
            str(ph["placed"]),
            f"{ph['paid_per_s']:.1f}",
            f"{ph['shipped_per_s']:.1f}",
            *(_ms(lp[k]) for k in ("p50", "p95", "p99", "max")),
            _ms(ls["p50"]),
            _ms(ls["p99"]),
            f"{ph['cpu_s_per_order_total'] * 1000:.1f}",
            ", ".join(f"{k}: {v}" for k, v in ph["errors"].items()) or "0",
        )
    return t


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f} ms"


def summary_lines(result: dict[str, Any]) -> list[str]:
    sat = result["phases"]["saturation"]
    return [
        "broker ceiling (raw aio-pika, quorum, persistent, confirms):"
        f" {result['ceiling']['broker_msgs_per_s']:.0f} msgs/s",
        f"messages per order up to paid: {result['messages_per_order']:g}",
        f"efficiency: {sat['paid_per_s']:.1f} orders/s × {result['messages_per_order']:g} ÷ "
        f"{result['ceiling']['broker_msgs_per_s']:.0f} = {result['efficiency'] * 100:.1f} %",
        f"CPU ms per order at saturation: {result['cpu_ms_per_order']['total']:.1f}: "
        + ", ".join(
            f"{k} {v:.1f}"
            for k, v in sorted(result["cpu_ms_per_order"]["by_process"].items(), key=lambda kv: -kv[1])
        ),
    ]


def plot(path: Path, tracker: Tracker, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    t0 = min((p.sent_at for p in tracker.orders.values()), default=0.0)
    colors = {"fixed": "tab:blue", "saturation": "tab:orange"}
    for phase, color in colors.items():
        paid = [(p.sent_at, p.paid_at) for p in tracker.of(phase) if p.paid_at is not None]
        left.scatter(
            [sent - t0 for sent, _ in paid],
            [(at - sent) * 1000 for sent, at in paid],
            s=3,
            color=color,
            label=phase,
        )
        values = sorted((at - sent) * 1000 for sent, at in paid)
        if values:
            h = histogram([v / 1000 for v in values])
            ps = [50, 75, 90, 95, 99, 99.9, 100]
            right.plot(
                [str(p) for p in ps],
                [h.get_value_at_percentile(p) / 1000 for p in ps],
                marker="o",
                color=color,
                label=phase,
            )
    left.set(title="POST → paid, per order", xlabel="seconds into the run", ylabel="ms", yscale="log")
    right.set(title="POST → paid, percentiles", xlabel="percentile", ylabel="ms", yscale="log")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"OMS bench {result['started_at']} ({result['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- main ----------------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    started_at = datetime.now(UTC).replace(microsecond=0)
    target = None if args.start else running_system()
    if target is None:
        target = start_system(args.amqp_url, args.carrier_step, args.keep, args.card_processor)
    say(f"system: {target.what}; orders at {target.urls['orders']}")
    tracker = Tracker()
    try:
        units = int(max(args.rate or 0, 200) * args.fixed_seconds + 400 * args.saturation_seconds + 1000)
        await load_stock(target.urls["inventory"], units)
        say(f"stock: {units} units of {SKU} at each of {', '.join(WAREHOUSES)}")
        connection = await aio_pika.connect_robust(target.amqp_url)
        broker = await broker_version(connection)
        say(f"ceiling: raw aio-pika through a quorum queue for {args.ceiling_seconds:g} s")
        ceiling_procs = {"client": psutil.Process()}
        if "rabbitmq" in target.procs:
            ceiling_procs["rabbitmq"] = target.procs["rabbitmq"]
        cpu0 = cpu_times(ceiling_procs)
        ceiling_result = await ceiling(target.amqp_url, args.ceiling_seconds)
        moved = ceiling_result["messages"]
        ceiling_result["cpu_ms_per_msg"] = {
            name: round(seconds * 1000 / max(moved, 1), 3)
            for name, seconds in cpu_delta(ceiling_procs, cpu0).items()
        }
        say(
            f"ceiling: {ceiling_result['broker_msgs_per_s']:.0f} msgs/s, CPU ms per message: "
            + ", ".join(f"{k} {v:g}" for k, v in ceiling_result["cpu_ms_per_msg"].items())
        )
        await watch_status(connection, tracker)
        limits = httpx.Limits(max_connections=args.window + 50, max_keepalive_connections=args.window + 50)
        async with httpx.AsyncClient(base_url=target.urls["orders"], timeout=30, limits=limits) as client:
            calibration = await messages_per_order(connection, client, tracker, args.calibration_orders)
            say(f"messages per order up to paid: {calibration['messages_per_order']:g}")
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            ) as progress:
                cpu0 = cpu_times(target.procs)
                saturation = await saturation_phase(
                    client, tracker, args.saturation_seconds, args.window, progress
                )
                await drain(tracker, "saturation", "delivered", args.drain_seconds)
                await quiet(connection, target.procs, args.drain_seconds)
                saturation.cpu = cpu_delta(target.procs, cpu0)
                # half the saturation's paid rate (CONTRACT §8), 0.5/s at least
                rate = args.rate or max(0.5, phase_figures(saturation, tracker)["paid_per_s"] / 2)
                cpu0 = cpu_times(target.procs)
                fixed = await fixed_phase(client, tracker, rate, args.fixed_seconds, progress)
                await drain(tracker, "fixed", "delivered", args.drain_seconds)
                await quiet(connection, target.procs, args.drain_seconds)
                fixed.cpu = cpu_delta(target.procs, cpu0)
        await connection.close()
    finally:
        for stop in reversed(target.stop):
            with contextlib.suppress(Exception):
                stop()

    phases = {"saturation": phase_figures(saturation, tracker), "fixed": phase_figures(fixed, tracker)}
    ceiling_rate = ceiling_result["broker_msgs_per_s"]
    efficiency = phases["saturation"]["paid_per_s"] * calibration["messages_per_order"] / ceiling_rate
    result = {
        "started_at": started_at.isoformat(),
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "broker": broker,
            "platform": platform.platform(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "system": target.what,
        "ceiling": ceiling_result,
        "messages_per_order": calibration["messages_per_order"],
        "messages_per_order_by_type": calibration["by_type"],
        "phases": phases,
        "efficiency": round(efficiency, 3),
        "cpu_ms_per_order": {
            "total": round(phases["saturation"]["cpu_s_per_order_total"] * 1000, 1),
            "by_process": {
                name: round(v * 1000, 1) for name, v in phases["saturation"]["cpu_s_per_order"].items()
            },
        },
        "method": {
            "latency": "order.status_changed events on oms.events, arrival at the bench minus POST sent (HdrHistogram)",
            "rates": "paid/shipped events arriving within the phase window ÷ its length",
            "fixed": "open loop at offered_per_s",
            "saturation": f"closed loop, {args.window} orders in flight between POST and paid",
            "cpu": "psutil CPU time (user+system) of each process from the phase's start until its orders "
            "were delivered and the system was quiet again (queues empty, processes idle) ÷ its orders paid",
            "carrier_step_s": float(args.carrier_step) if target.stop else None,
        },
        "args": {k: v for k, v in vars(args).items() if k not in ("out",)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(args.out / f"{stamp}.png", tracker, result)
    result["_paths"] = [str(json_path), str(args.out / f"{stamp}.png")]
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make bench BENCH_ARGS=...", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="offered orders/s in the fixed phase (half the saturation's paid rate)",
    )
    p.add_argument("--fixed-seconds", type=float, default=30.0)
    p.add_argument("--saturation-seconds", type=float, default=30.0)
    p.add_argument("--ceiling-seconds", type=float, default=10.0)
    p.add_argument("--window", type=int, default=64, help="orders in flight at saturation (64)")
    p.add_argument("--calibration-orders", type=int, default=10)
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=600.0,
        help="wait at most this for a phase's orders to be delivered",
    )
    p.add_argument(
        "--carrier-step", default="1.0", help="simulated carrier step, s (a system the bench starts)"
    )
    p.add_argument(
        "--start", action="store_true", help="start a system even if one runs at the standard ports"
    )
    p.add_argument(
        "--amqp-url",
        default=None,
        help="with --start or no running system: this broker, not a node of its own",
    )
    p.add_argument(
        "--card-processor",
        choices=("stripe", "sandbox"),
        default=os.environ.get("OMS_CARD_PROCESSOR", "stripe"),
        help="a system the bench starts: cards through the stripe SDK to its stand-in (as make run), "
        "or to the in-process sandbox (no provider process beside the system)",
    )
    p.add_argument("--keep", action="store_true", help="keep the started system's folder (databases, logs)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument(
        "--quick", action="store_true", help="a few seconds of each (make test checks the bench runs)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.fixed_seconds, args.saturation_seconds = 2.0, 2.0
        args.ceiling_seconds, args.window, args.calibration_orders, args.drain_seconds = 1.0, 8, 2, 120.0
        args.carrier_step = "0.2"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = asyncio.run(run(args))
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(table(result))
    for line in summary_lines(result):
        out.print(line, highlight=False)
    out.print("written: " + ", ".join(result.pop("_paths")), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
