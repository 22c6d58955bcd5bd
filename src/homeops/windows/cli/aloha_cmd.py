"""``aloha health|run|stop``: the Aloha GUI-automation apps on the VM."""

from __future__ import annotations

import typer


def group() -> typer.Typer:
    """The ``aloha`` command group."""
    return typer.Typer(help="The Aloha server and client on the VM.", no_args_is_help=True)
