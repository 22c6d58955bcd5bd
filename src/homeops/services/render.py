"""How `svc` shows results and progress: one interface, three renderers.

The flows never print: they return data and report progress through a :class:`Renderer`.
:class:`RichRenderer` is for a terminal (a live progress bar on stderr, tables on stdout),
:class:`PlainRenderer` for pipes and logs (plain tables; progress as an occasional line on
stderr), :class:`JsonRenderer` for ``--json`` (one JSON document on stdout, no progress).
Seed 002 plans a Textual UI next: it would be a fourth implementation of this protocol.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol


def _lines(text: str) -> str:
    """A result for a terminal: each line's control characters escaped (file names from a
    backup, a --target path, restic's words), the line breaks kept."""
    from homeops.core.cli.common import printable

    return "\n".join(printable(line) for line in text.split("\n"))


class Renderer(Protocol):
    """What the services commands need from their output."""

    def result(self, data: Any, text: Callable[[], str]) -> None:  # noqa: ANN401 - JSON data
        """The command's result: ``data`` as JSON, or ``text()`` for people."""

    def progress(self, key: str, fraction: float | None, message: str) -> None:
        """Work on ``key`` (a service) is ``fraction`` done (None: unknown)."""

    def finish(self, key: str, message: str) -> None:
        """Work on ``key`` ended; ``message`` says how."""

    def close(self) -> None:
        """Stop any live display (called once, also on errors)."""


class JsonRenderer:
    """``--json``: the result as one JSON document; progress is not shown."""

    def result(self, data: Any, text: Callable[[], str]) -> None:  # noqa: ANN401
        from homeops.core.cli.common import print_json

        del text
        print_json(data)

    def progress(self, key: str, fraction: float | None, message: str) -> None:
        del key, fraction, message

    def finish(self, key: str, message: str) -> None:
        del key, message

    def close(self) -> None:
        pass


class PlainRenderer:
    """Not a terminal: plain text results; progress at most every ``every_s`` per key, on
    stderr, so a log of a timer-run backup shows it is alive without a line per status."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def result(self, data: Any, text: Callable[[], str]) -> None:  # noqa: ANN401
        from homeops.core.cli.common import print_text

        del data
        print_text(_lines(text()))

    def progress(self, key: str, fraction: float | None, message: str) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return
        self._last[key] = now
        done = "" if fraction is None else f" {fraction * 100:.0f}%"
        sys.stderr.write(f"{key}:{done} {_lines(message)}\n")

    def finish(self, key: str, message: str) -> None:
        self._last.pop(key, None)
        sys.stderr.write(f"{key}: {_lines(message)}\n")

    def close(self) -> None:
        pass


class RichRenderer:
    """A terminal: a live progress bar per key on stderr, rich tables on stdout."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._out = Console()
        # markup=False: a message carries paths (``restoring ... into /srv/[x]``) that Rich
        # would read as markup, and a stray "[/]" would end the command with MarkupError.
        self._bars = Progress(
            TextColumn("{task.fields[key]}", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%", markup=False),
            TimeElapsedColumn(),
            TextColumn("{task.description}", markup=False),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._started = False

    def result(self, data: Any, text: Callable[[], str]) -> None:  # noqa: ANN401
        del data
        self._out.print(_lines(text()), highlight=False, markup=False)

    def progress(self, key: str, fraction: float | None, message: str) -> None:
        if not self._started:
            self._bars.start()
            self._started = True
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = self._bars.add_task(message, total=1.0, key=key)
        self._bars.update(task, completed=fraction or 0.0, description=_lines(message))

    def finish(self, key: str, message: str) -> None:
        task = self._tasks.get(key)
        if task is not None:
            self._bars.update(task, completed=1.0, description=_lines(message))

    def close(self) -> None:
        if self._started:
            self._bars.stop()
            self._started = False


def renderer_for(as_json: bool, *, stream: Any = None) -> Renderer:  # noqa: ANN401
    """JSON with ``--json``; Rich when stdout and stderr are a terminal; plain otherwise."""
    if as_json:
        return JsonRenderer()
    out = stream if stream is not None else sys.stdout
    if out.isatty() and sys.stderr.isatty():
        return RichRenderer()
    return PlainRenderer()


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The core's plain table (one look for every command)."""
    from homeops.core.cli.common import table

    return table(headers, rows)
