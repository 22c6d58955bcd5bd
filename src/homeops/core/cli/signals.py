"""Signal handling shared by the long-running commands (``jobs worker``, ``supervise``).

Handlers go in before any slow start-up step (opening a locked database can take seconds),
so a SIGTERM at any moment means "stop cleanly", never the default kill. Once the event loop
is gone, the few remaining steps of the process ignore further signals instead of dying
halfway through writing a final metrics block.
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
        ignore_from_now_on()

    return remove


def ignore_from_now_on() -> None:
    """After the loop's handlers are gone, a late signal must not kill the process mid-exit."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def log_signal(signum: int, what: str) -> None:
    """One line saying which signal arrived and what it does now."""
    _log.info("signal", what, signal=signal.Signals(signum).name)
