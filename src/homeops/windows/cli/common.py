"""What the windows commands share: the domain's settings, one SSH pool to the VM, asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from homeops.core.runner import SshRunner
    from homeops.windows.settings import WindowsSettings

T = TypeVar("T")


def windows_settings(ctx: typer.Context) -> WindowsSettings:
    """This invocation's windows settings (file, environment), loaded once by the core."""
    from homeops.core.cli.common import domain_context

    settings: WindowsSettings = domain_context(ctx).settings("windows")
    return settings


@contextlib.asynccontextmanager
async def vm_runner(settings: WindowsSettings) -> AsyncIterator[SshRunner]:
    """A runner on the VM over a pool of its own, closed (remote kills awaited) on exit."""
    from homeops.windows.target import vm_runner as open_runner

    async with open_runner(settings.windows) as runner:
        yield runner


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine to its end."""
    return asyncio.run(coro)


@contextlib.contextmanager
def json_errors(as_json: bool) -> Iterator[dict[str, Any]]:
    """With ``--json``, a command failing with a known error still prints one JSON object.

    The body fills the yielded dict with what it knew when it failed (the host, the report
    so far); a :class:`~homeops.core.errors.HomeopsError` then prints that plus ``ok``
    (false), ``error`` (the one-line message) and ``exit_code``, and goes on up: the error
    line on stderr and the exit code stay the console's (``run_app``).
    """
    from homeops.core.errors import HomeopsError

    extra: dict[str, Any] = {}
    try:
        yield extra
    except HomeopsError as exc:
        if as_json:
            from homeops.core.cli.common import error_line, print_json

            data = {"ok": False, **extra}
            data.update(ok=False, error=error_line(str(exc)), exit_code=int(exc.exit_code))
            # stdout gone (closed, a reader that left): the error line on stderr still tells.
            with contextlib.suppress(HomeopsError, OSError):
                print_json(data)
        raise
