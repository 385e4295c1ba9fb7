"""The simulated carrier of local runs: every ``simulation_step_seconds`` it moves each due,
not cancelled parcel one step on (created → picked_up → in_transit → out_for_delivery →
delivered), through the same code as a real carrier's report. Its schedule is in the database
(``next_step_at``), so it carries on after a restart and never moves a parcel twice per step.
Every replica of the service runs it: a tick locks the parcels it moves (``parcels.due``, ``FOR
UPDATE SKIP LOCKED`` on PostgreSQL), so two replicas never move the same one."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.logs import get_logger
from chassis.tasks import background
from events.types import ShipmentStatus as St
from shipping import domain, parcels

log = get_logger(__name__)


async def tick(sessions: async_sessionmaker, step_seconds: float, batch: int = 200) -> int:
    moved = 0
    async with sessions.begin() as session:
        for shipment in await parcels.due(session, datetime.now(UTC), batch):
            status = domain.next_step(St(shipment.status))
            if status is None:
                await parcels.unschedule(session, shipment)
                continue
            if await parcels.report(
                session, shipment, status, datetime.now(UTC), "simulated", step_seconds=step_seconds
            ):
                moved += 1
    return moved


async def run(sessions: async_sessionmaker, step_seconds: float) -> None:
    while True:
        try:
            await tick(sessions, step_seconds)
        except Exception as exc:
            log.warning("carrier_simulation.failed", error=repr(exc))
        await asyncio.sleep(min(step_seconds, 1.0) / 2)


def simulation(
    sessions: async_sessionmaker, step_seconds: float, enabled: bool
) -> contextlib.AbstractAsyncContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return background(run(sessions, step_seconds), name="carrier-simulation")
