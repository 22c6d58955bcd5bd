"""Paths from settings and the environment: ``~`` expansion and the default state dir.

Kept free of pydantic so a command that only needs to know where the job store is (``jobs
list`` with no config file) can answer without importing the settings models.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from homeops.core.errors import ConfigError, quote_input


def expand_path(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with a leading ``~`` or ``~/`` replaced by ``$HOME``; ValueError if unusable.

    An empty path would silently mean the current directory (an artifact root of "" once
    let a sweep delete photos/ and src/ there), so it is refused. ``~user`` is refused rather
    than looked up: nothing else in a settings file depends on the passwd database.
    """
    if not text.strip():
        raise ValueError("empty path (leave the setting out to use the default)")
    if text != "~" and not text.startswith("~/"):
        if text.startswith("~"):
            raise ValueError(f"{text!r}: only ~ and ~/... are expanded, not ~user")
        return text
    home = environ.get("HOME")
    if not home:
        try:
            home = str(Path.home())
        except RuntimeError:
            raise ValueError(f"{text!r}: cannot expand ~: no home directory") from None
    if not os.path.isabs(home):
        raise ValueError(f"{text!r}: cannot expand ~: HOME={home!r} is not absolute")
    # Joined, not concatenated: HOME=/ must give /x, not //x.
    return os.path.join(home, text[2:]) if text != "~" else home


def absolute_path(text: str) -> str:
    """``text`` made absolute against the current directory now; ValueError if it is gone.

    Settings are made absolute when they are loaded: a relative state dir or artifact root
    kept relative would name another directory in every process started elsewhere (a unit,
    a worker spawned by the supervisor, a shell in another directory).
    """
    if os.path.isabs(text):
        return text
    try:
        cwd = os.getcwd()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        message = f"{text!r} is relative and the current directory is gone ({reason})"
        raise ValueError(message) from None
    return os.path.join(cwd, text)


def resolve_path(text: str, environ: Mapping[str, str]) -> str:
    """A path setting as it is used: ``~`` expanded (:func:`expand_path`), then absolute."""
    return absolute_path(expand_path(text, environ))


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a directory setting, or None: only "exists and is not a
    directory" is decided here; a missing path is created (or reported) where it is used."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISDIR(mode) else "not a directory"


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a file setting, or None: a directory is refused; a missing file
    is not (it may be created when used, as known_hosts by accept-new or a metrics file)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return "is a directory" if stat.S_ISDIR(mode) else None


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$HOMEOPS_STATE_DIR``, else ``$XDG_STATE_HOME/homeops``, else ``~/.local/state/homeops``.

    A leading ``~`` in ``$HOMEOPS_STATE_DIR`` is expanded (a literal ``./~`` directory is never
    what was meant) and a relative one is made absolute. ``$HOMEOPS_STATE_DIR`` naming
    something that is not a directory is a :class:`ConfigError` naming the variable: this is
    also the path ``jobs list`` takes without loading the settings.
    """
    explicit = environ.get("HOMEOPS_STATE_DIR")
    if explicit:
        try:
            path = Path(resolve_path(explicit, environ))
        except ValueError:
            # load_settings reads the same variable as the state_dir field and reports it
            # as a ConfigError naming the variable; a default must not raise first.
            return Path(explicit)
        problem = directory_problem(path)
        if problem is not None:
            # The same words the state_dir field's own check gives.
            reason = f"{problem} (got {quote_input(str(path))})"
            raise ConfigError("HOMEOPS_STATE_DIR", "state_dir", reason)
        return path
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "homeops"
    home = environ.get("HOME") or str(Path.home())
    # A relative HOME in a directory that is gone: nothing better to offer than it.
    with contextlib.suppress(ValueError):
        home = absolute_path(home)
    return Path(home) / ".local" / "state" / "homeops"
