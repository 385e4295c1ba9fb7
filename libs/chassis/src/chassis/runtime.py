"""What a service process holds while it runs: engine, sessions, broker, outbox relay, metrics.

Built and torn down in the service's lifespan (nothing exists at import time), so tests build
their own with their own settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aio_pika
from faststream.rabbit import RabbitBroker, RabbitRouter
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chassis.batch import Batcher
from chassis.broker import make_broker
from chassis.db import make_engine, make_sessionmaker
from chassis.logs import get_logger, setup_logging
from chassis.outbox import OutboxRelay
from chassis.settings import ServiceSettings
from chassis.telemetry import setup_tracing, spans_recorded
from events import topology

log = get_logger("chassis.runtime")


async def declare_topology(amqp_url: str, *, unrouted_tap: bool = False) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        await topology.declare(await connection.channel(), unrouted_tap=unrouted_tap)
    finally:
        await connection.close()


@dataclass
class ServiceRuntime:
    settings: ServiceSettings
    routers: Iterable[RabbitRouter] = ()
    context: dict[str, Any] = field(default_factory=dict)

    registry: CollectorRegistry = field(init=False)
    engine: AsyncEngine = field(init=False)
    sessions: async_sessionmaker[AsyncSession] = field(init=False)
    broker: RabbitBroker = field(init=False)
    relay: OutboxRelay = field(init=False)
    batcher: Batcher | None = field(init=False, default=None)
    started: bool = field(init=False, default=False)
    stopping: bool = field(init=False, default=False)
    """Set when the service begins to stop: handlers waiting out an outage let their message go."""

    @property
    def service(self) -> str:
        return self.settings.service

    async def __aenter__(self) -> ServiceRuntime:
        s = self.settings
        setup_logging(s.service, json=s.log_json, level=s.log_level)
        setup_tracing(s.service)
        self.registry = CollectorRegistry()
        self.engine = make_engine(s.database_url)
        self.sessions = make_sessionmaker(
            self.engine,
            on_outbox_commit=lambda rows: self.relay.wake(rows),
            fail_commit_rate=s.fault_fail_commit_rate,
        )
        self.relay = OutboxRelay(
            self.sessions,
            s.amqp_url,
            service=s.service,
            batch=s.outbox_batch,
            poll_seconds=s.outbox_poll_seconds,
            inbox_retention=timedelta(days=s.inbox_retention_days),
            # batches carry the marks; the relay marks on its own only when none came for a while
            mark_seconds=0.5 if s.batch_size > 1 else 0.05,
        )
        self.broker = make_broker(
            s.amqp_url,
            service=s.service,
            prefetch=s.prefetch,
            registry=self.registry,
            trace_messages=spans_recorded(),
        )
        self.batcher = (
            Batcher(
                self.sessions,
                size=s.batch_size,
                linger_seconds=s.batch_linger_ms / 1000,
                publish=self.relay.publish,
                mark_in=self.relay.mark_in,
                marked=self.relay.marked,
                handled=self.broker.context.get("oms_messages_handled"),
                registry=self.registry,
            )
            if s.batch_size > 1
            else None
        )
        for router in self.routers:
            self.broker.include_router(router)
        self.broker.context.set_global("sessions", self.sessions)
        self.broker.context.set_global("settings", s)
        self.broker.context.set_global("runtime", self)
        self.broker.context.set_global("oms_batcher", self.batcher)
        for key, value in self.context.items():
            self.broker.context.set_global(key, value)
        backlog = Gauge(
            "oms_outbox_backlog", "Outbox messages not yet confirmed by the broker", registry=self.registry
        )
        backlog.set_function(lambda: self._backlog)
        self._backlog = 0

        await self._connect_broker()
        await self.relay.start()
        self.started = True
        log.info("service.started", port=s.http_port)
        return self

    async def _connect_broker(self) -> None:
        """Declare the topology and start consuming; wait for the broker rather than crash-loop."""
        delay = 0.5
        while True:
            try:
                if self.settings.declare_topology:
                    await declare_topology(self.settings.amqp_url, unrouted_tap=self.settings.unrouted_tap)
                await self.broker.start()
                return
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker.unreachable", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def __aexit__(self, *exc: object) -> None:
        self.stopping = True
        with contextlib.suppress(Exception):
            await self.broker.stop()
        await self.relay.stop()
        await self.engine.dispose()
        log.info("service.stopped")

    async def database_ok(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def waiting_for(self) -> list[str]:
        """The dependencies (``database``, ``smtp``, …) that handlers are waiting for right now: the
        service takes no new work from them until they are back (``chassis.broker``)."""
        outages = self.broker.context.get("oms_outages") if self.started else None
        return outages.waiting() if outages is not None else []

    async def broker_ok(self) -> bool:
        try:
            return bool(await self.broker.ping(timeout=1.0)) and self.relay.connected
        except Exception:
            return False

    async def refresh_backlog(self) -> int:
        with contextlib.suppress(Exception):
            self._backlog = await self.relay.backlog()
        return self._backlog
