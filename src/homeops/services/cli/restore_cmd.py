"""Placeholder of the module that registers its svc commands (filled in by its issue-8 step)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    del app
