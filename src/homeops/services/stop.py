"""A stop request (SIGINT/SIGTERM at the terminal) shared by the backup and restore flows,
and the one way a step waits for its work or the request, whichever comes first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

T = TypeVar("T")


class StopRequest:
    """Ask a running flow to stop (the CLI sets it with the signal's name): the running
    step is killed; what the flow must finish (clean-up, a swap under way) still runs."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        """Stop, because of ``reason`` (``SIGINT``); only the first reason is kept."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once a stop is asked for."""
        await self._event.wait()


async def guard(
    awaitable: Awaitable[T],
    stop: StopRequest | None,
    interrupted: Callable[[str], BaseException],
) -> T:
    """Await ``awaitable``; a stop request cancels it (the process seam kills the process
    group before the cancellation ends) and raises ``interrupted(reason)``."""
    if stop is None:
        return await awaitable
    if stop.requested:
        if isinstance(awaitable, Coroutine):
            awaitable.close()
        raise interrupted(stop.reason or "a stop request")
    task = asyncio.ensure_future(awaitable)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise interrupted(stop.reason or "a stop request")
    return task.result()
