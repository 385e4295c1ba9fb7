"""A helper for the tests that race two transactions (importable: ``tests`` is on pytest's path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Meeting:
    """Callers wait for each other: each one, once through a call wrapped with :meth:`after`,
    waits until ``parties`` callers got that far, or until ``timeout`` passes.

    Wrapping the reads of what two transactions are about to change makes both read before
    either writes. Where a lock keeps the second from reading, the first goes on after the
    deadline, and the two run one after the other, as they should."""

    def __init__(self, parties: int = 2, timeout: float = 2.0) -> None:
        self._parties, self._timeout = parties, timeout
        self._arrived, self._everyone = 0, asyncio.Event()

    def after(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        async def call_then_meet(*args: Any, **kwargs: Any) -> T:
            result = await call(*args, **kwargs)
            self._arrived += 1
            if self._arrived >= self._parties:
                self._everyone.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._everyone.wait(), timeout=self._timeout)
            return result

        return call_then_meet
