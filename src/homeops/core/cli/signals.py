"""Signal handling shared by the long-running commands (``jobs worker``, ``supervise``).

Handlers go in before any slow start-up step (opening a locked database can take seconds),
so a SIGTERM at any moment means "stop cleanly", never the default kill, and they stay until
the last clean-up step (final metrics block, closing the store) is done. They are not left
as SIG_IGN afterwards: children inherit ignored signals, and a later `process.run` could then
not stop its child with SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from homeops.core.logging import get_logger

_log = get_logger("core.cli")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to ``on_signal(signum)`` in the running loop; returns a remover."""
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, int(sig))

    def remove() -> None:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)

    return remove


def log_signal(signum: int, what: str) -> None:
    """One line saying which signal arrived and what it does now."""
    _log.info("signal", what, signal=signal.Signals(signum).name)
