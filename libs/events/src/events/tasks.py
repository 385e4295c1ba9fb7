"""A service's background loops (saga deadlines, the simulated carrier, retention), each run for
the lifespan of the process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, Any], *, name: str) -> AsyncIterator[asyncio.Task]:
    """Run ``work`` as a task while the block lasts; at its end the task is cancelled and awaited."""
    task = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
