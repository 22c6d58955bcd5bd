"""Turning an argv into the command line a target's remote shell runs (pure, no I/O).

sshd hands a command *string* to the login shell, so an argv must be quoted for that
shell. A POSIX login shell gets :func:`shlex.join`. Windows OpenSSH runs commands through
its default shell, cmd.exe unless DefaultShell is set (CONTRACTS.md §1); cmd.exe has no
quoting that survives every character, so the argv becomes a PowerShell script sent as
``powershell -NoProfile -NonInteractive -EncodedCommand <base64 of UTF-16LE>``: the
encoded part is only ``[A-Za-z0-9+/=]``, which no quoting layer (cmd.exe, PowerShell as
DefaultShell, or a POSIX shell in between) changes.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from typing import Final, Literal, assert_never

RemoteShell = Literal["posix", "powershell"]

# PowerShell reads these four as single quotes too, not only U+0027: a literal one inside a
# single-quoted string must be doubled like ', or it ends the string (tokenizer's IsSingleQuote).
_PS_SINGLE_QUOTES: Final = frozenset("'\u2018\u2019\u201a\u201b")
POWERSHELL_PREFIX: Final = ("powershell", "-NoProfile", "-NonInteractive", "-EncodedCommand")


def posix_command(argv: Sequence[str]) -> str:
    """``argv`` as one POSIX sh command line: each word single-quoted where needed."""
    _require_argv(argv)
    return shlex.join(argv)


def powershell_literal(value: str) -> str:
    """``value`` as a PowerShell single-quoted string: nothing inside is expanded."""
    # Single-quoted strings expand nothing ($, `, $( ) stay literal) and may span lines;
    # the only special characters are the quotes themselves, written twice.
    return "'" + "".join(c + c if c in _PS_SINGLE_QUOTES else c for c in value) + "'"


def powershell_script(argv: Sequence[str]) -> str:
    """A PowerShell script that calls ``argv[0]`` with the other words as its arguments.

    The call operator ``&`` takes the command name as a string, so ``argv[0]`` may be a
    cmdlet, a function or a program path with spaces. The script's exit status is the
    program's (``$LASTEXITCODE``), or for a cmdlet 0 when it succeeded and 1 when not.
    """
    _require_argv(argv)
    words = " ".join(powershell_literal(a) for a in argv)
    # $? is read at once: any later statement would reset it. A fresh -NoProfile session
    # starts with $LASTEXITCODE unset, so it is set only if a native program ran.
    return (
        f"& {words}\n"
        "$homeopsOk = $?\n"
        "if ($null -ne $LASTEXITCODE) { exit $LASTEXITCODE }\n"
        "if ($homeopsOk) { exit 0 }\n"
        "exit 1\n"
    )


def encode_powershell(script: str) -> str:
    """The command line that runs ``script`` as ``powershell -EncodedCommand``."""
    if not script.strip():
        # An empty encoded part would leave -EncodedCommand without its argument.
        raise ValueError("script must not be empty")
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return " ".join([*POWERSHELL_PREFIX, encoded])


def decode_powershell(command: str) -> str:
    """The script inside a command line built by :func:`encode_powershell` (for tests, logs)."""
    *prefix, encoded = command.split(" ")
    if tuple(prefix) != POWERSHELL_PREFIX:
        raise ValueError(f"not an encoded PowerShell command: {command[:60]!r}")
    return base64.b64decode(encoded, validate=True).decode("utf-16-le")


def powershell_command(argv: Sequence[str]) -> str:
    """``argv`` as a command line for Windows OpenSSH's default shell (cmd.exe or PowerShell)."""
    return encode_powershell(powershell_script(argv))


def remote_command(argv: Sequence[str], shell: RemoteShell) -> str:
    """``argv`` quoted for ``shell``, the target's login shell."""
    match shell:
        case "posix":
            return posix_command(argv)
        case "powershell":
            return powershell_command(argv)
        case _:
            assert_never(shell)


def _require_argv(argv: Sequence[str]) -> None:
    if isinstance(argv, str):
        # A string is a Sequence[str] too: quoting it would run its first character.
        raise TypeError("argv must be a list of words, not a string (use run_raw for a line)")
    if not argv:
        raise ValueError("argv must not be empty")
