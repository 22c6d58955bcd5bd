"""The exception hierarchy; each class carries the process exit code the CLI maps it to.

Exit codes follow the win-automation seed and are shared by every domain:
0 ok, 1 operational failure, 2 usage/config error, 3 dependency unavailable, 4 timeout.
Only CLI code turns these into ``sys.exit``; everything below raises.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Final

# How much of a value given by the user an error message quotes: enough to recognise it,
# never a 100,000-character argument echoed whole into a one-line message.
QUOTE_LIMIT: Final = 80
# A file path or dotted field named by a ConfigError is cut only past this.
PART_LIMIT: Final = 1024


class ExitCode(IntEnum):
    """Process exit codes used by every homeops command."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    UNAVAILABLE = 3
    TIMEOUT = 4


class HomeopsError(Exception):
    """Base of every error homeops raises on purpose; ``exit_code`` says how the CLI exits."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class OperationalError(HomeopsError):
    """Something was tried and failed (a remote command, a build, a backup): exit 1."""

    exit_code = ExitCode.FAILURE


class UsageError(HomeopsError):
    """Bad flags, arguments or identifiers given by the user: exit 2."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A config file, value or environment variable is wrong: exit 2.

    ``source`` is the file path or variable name, ``field`` the dotted field path.
    """

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        # Cut only when absurd: a real path (a /nix/store one) is longer than a quoted value.
        parts = [shorten(p, PART_LIMIT) for p in (source, field) if p]
        super().__init__("config error: " + ": ".join([*parts, reason]))


class DependencyUnavailable(HomeopsError):
    """A peer (a host, a tool, a server) cannot be reached or used: exit 3."""

    exit_code = ExitCode.UNAVAILABLE


class ToolMissing(DependencyUnavailable):
    """An executable is not on PATH."""


class SshUnavailable(DependencyUnavailable):
    """SSH connection could not be established (refused, unreachable, reset, connect timeout)."""


class SshAuthError(DependencyUnavailable):
    """The server refused our credentials. Never retried."""


class HostKeyError(DependencyUnavailable):
    """The server's host key is unknown or does not match known_hosts. Never retried."""


class HttpUnavailable(DependencyUnavailable):
    """An HTTP peer could not be reached or kept answering 502/503/504."""


class HomeopsTimeout(HomeopsError):
    """An operation ran past its deadline (and was killed): exit 4."""

    exit_code = ExitCode.TIMEOUT


class JobCancelled(HomeopsError):
    """A job was cancelled while running."""

    exit_code = ExitCode.FAILURE


def json_type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages read by people who wrote
    JSON, not Python: null, boolean, number, string, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text``, or its first ``limit`` characters and ``... (N chars)`` when longer.

    ASCII dots, not an ellipsis: the CLI escapes anything else in an error line.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


def quote_input(value: object, render: Callable[[object], str] = repr) -> str:
    """A value the user gave, quoted for an error message (``repr``, or ``json.dumps`` for
    JSON readers) and cut to its first :data:`QUOTE_LIMIT` characters when longer."""
    if isinstance(value, str) and len(value) > QUOTE_LIMIT:
        return f"{render(value[:QUOTE_LIMIT])}... ({len(value)} chars)"
    return shorten(render(value), QUOTE_LIMIT + 2)
