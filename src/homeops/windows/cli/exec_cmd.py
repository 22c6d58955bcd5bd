"""``windows exec``: one command on the VM."""

from __future__ import annotations

import typer


def group() -> typer.Typer:
    """The ``windows`` command group."""
    return typer.Typer(help="Commands on the Windows VM over SSH.", no_args_is_help=True)
