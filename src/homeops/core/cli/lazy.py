"""A command group whose domain sub-apps are imported and built only when invoked.

``homeops --help`` lists every domain from its record's one-line summary; ``homeops win
...`` imports and converts only the windows sub-app. Without this each command would pay for
importing and converting every domain's Typer tree (Typer converts a whole app at once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import typer
from typer.core import TyperGroup

SubApp = tuple[str, Callable[[], typer.Typer]]
"""A lazily built sub-app: its one-line summary and its factory."""


def lazy_group_class(lazy: Mapping[str, SubApp]) -> type[TyperGroup]:
    """A :class:`TyperGroup` subclass that adds ``lazy``'s groups, built on first use."""

    class LazyGroup(TyperGroup):
        lazy_names = tuple(lazy)

        def list_commands(self, ctx: Any) -> list[str]:  # noqa: ANN401 - typer's vendored click
            eager = super().list_commands(ctx)
            return [*eager, *(name for name in lazy if name not in eager)]

        def get_command(self, ctx: Any, cmd_name: str) -> Any:  # noqa: ANN401
            if cmd_name in lazy and cmd_name not in self.commands:
                _, factory = lazy[cmd_name]
                # get_group, not get_command: a one-command sub-app must stay a group.
                command = typer.main.get_group(factory())
                command.name = cmd_name
                self.commands[cmd_name] = command
            return super().get_command(ctx, cmd_name)

        def format_commands(self, ctx: Any, formatter: Any) -> None:  # noqa: ANN401
            rows: list[tuple[str, str]] = []
            names = self.list_commands(ctx)
            limit = formatter.width - 6 - max((len(n) for n in names), default=0)
            for name in names:
                if name in lazy and name not in self.commands:
                    rows.append((name, lazy[name][0]))  # the summary: nothing is imported
                    continue
                command = super().get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit)))
            if rows:
                with formatter.section("Commands"):
                    formatter.write_dl(rows)

    return LazyGroup
