"""``playwright install|health|run``: the Playwright server on the VM."""

from __future__ import annotations

import typer


def group() -> typer.Typer:
    """The ``playwright`` command group."""
    return typer.Typer(help="The Playwright browser server on the VM.", no_args_is_help=True)
