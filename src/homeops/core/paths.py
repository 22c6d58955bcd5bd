"""Paths from settings and the environment: ``~`` expansion and the default state dir.

Kept free of pydantic so a command that only needs to know where the job store is (``jobs
list`` with no config file) can answer without importing the settings models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


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


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$HOMEOPS_STATE_DIR``, else ``$XDG_STATE_HOME/homeops``, else ``~/.local/state/homeops``.

    A leading ``~`` in ``$HOMEOPS_STATE_DIR`` is expanded (a literal ``./~`` directory is never
    what was meant).
    """
    explicit = environ.get("HOMEOPS_STATE_DIR")
    if explicit:
        try:
            return Path(expand_path(explicit, environ))
        except ValueError:
            # load_settings reads the same variable as the state_dir field and reports it
            # as a ConfigError naming the variable; a default must not raise first.
            return Path(explicit)
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "homeops"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "homeops"
