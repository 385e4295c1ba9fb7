"""A service's background loops (saga deadlines, the simulated carrier, retention), each run for
the lifespan of the process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from chassis.logs import get_logger

log = get_logger("chassis.tasks")


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, Any], *, name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``work`` as a task while the block lasts; at its end the task is cancelled and awaited."""
    task = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def every(
    seconds: float, job: Callable[[], Awaitable[Any]], *, name: str
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[Any]]:
    """Run ``job`` at once and then every ``seconds`` while the block lasts (retention purges); a
    round that fails is logged and the next one tries again."""

    async def rounds() -> None:
        while True:
            try:
                await job()
            except Exception as exc:
                log.warning("background.round_failed", task=name, error=type(exc).__name__)
            await asyncio.sleep(seconds)

    return background(rounds(), name=name)
