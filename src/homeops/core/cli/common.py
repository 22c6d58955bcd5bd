"""Shared CLI plumbing: global options found anywhere on the line, settings loading, output."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from homeops.core.config import Loaded
    from homeops.core.settings import CoreSettings

JSON_HELP = "Print machine-readable JSON on stdout."


@dataclass(frozen=True)
class GlobalOptions:
    """Options accepted before or after the subcommand: ``--config PATH`` and ``--debug``."""

    config: Path | None = None
    debug: bool = False


def split_global_options(argv: Sequence[str]) -> tuple[GlobalOptions, list[str]]:
    """Pull ``--config PATH``/``--config=PATH`` and ``--debug`` out of ``argv`` wherever they are.

    Click only accepts group options before the subcommand; users (and the seeds' scripts)
    put ``--config`` after it too. Everything after ``--`` is left alone. A ``--config``
    without a value is left in place so Typer reports the usage error.
    """
    config: Path | None = None
    debug = False
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--debug":
            debug = True
        elif arg.startswith("--config="):
            config = Path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            config = Path(argv[i + 1])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return GlobalOptions(config, debug), rest


def options(ctx: typer.Context) -> GlobalOptions:
    """The invocation's global options (set by ``main``), found from any nested context."""
    root = ctx.find_root()
    obj = root.obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def load_core(ctx: typer.Context) -> Loaded[CoreSettings]:
    """Load the core settings from defaults, ``--config``/``HOMEOPS_CONFIG`` and env."""
    from homeops.core import logging as hlog
    from homeops.core.config import load_settings
    from homeops.core.settings import CORE_SPEC

    opts = options(ctx)
    loaded = load_settings(CORE_SPEC, environ=os.environ, config_path=opts.config)
    hlog.configure(debug=opts.debug, level=loaded.settings.log.level)
    return loaded


def print_json(data: Any) -> None:  # noqa: ANN401
    """Write ``data`` as indented JSON to stdout (the payload channel)."""
    import json

    # allow_nan=False: NaN/Infinity are not JSON; refuse rather than print what jq rejects.
    sys.stdout.write(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def print_text(text: str) -> None:
    """Write payload text to stdout."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain aligned columns (no colour codes: stdout is often piped)."""
    cells = [[str(h).upper() for h in headers]] + [
        ["-" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def duration_flag(flag: str, value: str) -> float:
    """Seconds in a duration flag such as ``--interval 30s``; exit 2 unless positive."""
    from homeops.core.durations import parse_duration
    from homeops.core.errors import UsageError

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{flag}: must be greater than 0")
    return seconds
