"""What the svc commands share: the domain's settings, the renderer, asyncio.

Imported when the commands are registered (``--help`` of any svc command): asyncio (~30 ms)
is imported by the command that runs a flow, not here."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from homeops.services.settings import SvcSettings

T = TypeVar("T")

REPO_HELP = "Repository: local or remote."


def svc_settings(ctx: typer.Context) -> SvcSettings:
    """This invocation's services settings (file, environment), loaded once by the core."""
    from homeops.core.cli.common import domain_context

    settings: SvcSettings = domain_context(ctx).settings("services")
    return settings


def config_source(ctx: typer.Context) -> str:
    """The file the services settings came from (for messages), or "defaults"."""
    from homeops.core.cli.common import domain_context

    config = domain_context(ctx).config
    path = config.domain("services").config_path if config is not None else None
    return str(path) if path is not None else "defaults"


def env_sources(ctx: typer.Context) -> dict[str, str]:
    """The services settings set by an environment variable: dotted key (as in
    services.json) -> the variable, so that an error about one names the variable, not a
    config file that does not hold it."""
    from homeops.core.cli.common import domain_context

    config = domain_context(ctx).config
    if config is None:
        return {}
    found = {}
    for key, source in config.domain("services").sources.items():
        kind, _, name = source.partition(":")
        if kind == "env":
            found[key.removeprefix("services.")] = name
    return found


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a flow to completion on a fresh event loop."""
    import asyncio

    return asyncio.run(coro)
