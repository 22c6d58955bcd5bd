"""``jobs``: the core's job commands, with the seed's ``enqueue --type T --cmd …`` form."""

from __future__ import annotations

import typer


def group() -> typer.Typer:
    """The core's ``jobs`` group (same store as ``homeops jobs``)."""
    from homeops.core.cli import commands

    return commands.jobs_group(worker=False)
