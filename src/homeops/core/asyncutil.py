"""Small asyncio helpers shared by the long-running loops (supervisor, metrics emitter)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]
"""An injectable ``asyncio.sleep``: tests pass a recorder so nothing waits for real."""


async def sleep_or_stop(sleep: Sleep, delay: float, stop: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds unless ``stop`` is set first; True when stopped."""
    if stop.is_set():
        return True
    sleeper = asyncio.ensure_future(sleep(delay))
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waiter):
            if not task.done():
                task.cancel()
        for task in (sleeper, waiter):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return stop.is_set()
