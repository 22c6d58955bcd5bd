"""What the windows commands share: the domain's settings, one SSH pool to the VM, asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import typer

# The core's since every --json command needs it; still importable from here.
from homeops.core.cli.common import json_errors

__all__ = ["json_errors", "run_async", "vm_runner", "windows_settings"]

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
