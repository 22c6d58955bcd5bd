"""One command seam for local and remote: the :class:`Runner` protocol and its two runners.

Domain code builds an argv with a pure function and hands it to a Runner; whether it runs
here (:class:`LocalRunner`, over :mod:`homeops.core.process`) or on a host
(:class:`SshRunner`, over :class:`homeops.core.ssh.SshPool`) is the caller's choice, and the
answer has one shape, :class:`CommandResult`. Tests drive domain code through the recording
fake in ``tests/fakes/runner.py`` and assert the exact argv at this seam.

Importing this module imports neither asyncssh nor anything heavy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from homeops.core import process
from homeops.core.errors import OperationalError, UsageError
from homeops.core.logging import mask
from homeops.core.output import CapturedOutput
from homeops.core.ssh.shell import remote_command

if TYPE_CHECKING:
    from homeops.core.ssh.model import SshTarget
    from homeops.core.ssh.pool import SshPool

# How much of stderr a failure message quotes: enough for the error line and its context.
STDERR_TAIL_LINES: Final = 3
STDERR_TAIL_CHARS: Final = 400


def stderr_tail(stderr: bytes) -> str:
    """The last few non-empty lines of ``stderr``, decoded leniently, secrets masked."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    tail = " | ".join(lines[-STDERR_TAIL_LINES:])
    if len(tail) > STDERR_TAIL_CHARS:
        tail = "…" + tail[-STDERR_TAIL_CHARS:]
    return mask(tail) if tail else "no stderr"


class CommandFailed(OperationalError):
    """A command ran and exited non-zero while the caller asked for ``check=True``: exit 1.

    ``argv`` is what ran (a raw command line is a one-word argv), ``host`` the SSH
    destination or None for a local command, ``tail`` the end of its stderr (masked).
    """

    def __init__(
        self, argv: tuple[str, ...], exit_status: int, tail: str, host: str | None = None
    ) -> None:
        self.argv = argv
        self.exit_status = exit_status
        self.tail = tail
        self.host = host
        where = f"ssh {host}: " if host else ""
        super().__init__(f"{where}{process.display_argv(argv)}: exit {exit_status}: {tail}")


@dataclass(frozen=True)
class CommandResult(CapturedOutput):
    """A finished command, local or remote.

    ``argv`` is what the caller asked to run (for :meth:`SshRunner.run_raw` the command line
    as a one-word argv), ``exit_status`` its status (remote: 128 + signal number when killed
    by one, 255 when the server sent none; local: negative signal number, as Python reports
    it), ``stdout``/``stderr`` the bytes it wrote, ``duration`` seconds, ``host`` the SSH
    destination (``user@host:port``) or None when it ran here.
    """

    argv: tuple[str, ...]
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration: float
    host: str | None = None

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.exit_status == 0

    def lines(self) -> list[str]:
        """stdout as UTF-8 lines, line endings (``\\n`` or Windows' ``\\r\\n``) removed."""
        return self.stdout_text.splitlines()

    def check(self) -> CommandResult:
        """This result if it succeeded, else :class:`CommandFailed` naming argv and stderr."""
        if not self.ok:
            raise CommandFailed(self.argv, self.exit_status, stderr_tail(self.stderr), self.host)
        return self


class Runner(Protocol):
    """Runs an argv somewhere and returns what it did.

    ``timeout`` (seconds) bounds the whole call; past it the command is killed and
    :class:`~homeops.core.errors.HomeopsTimeout` (exit 4) raised. ``stdin`` is sent and then
    closed (a str as UTF-8); without it the command reads an empty stdin. With ``check`` a
    non-zero exit raises :class:`CommandFailed` (exit 1); without, it is in the result.
    """

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | str | None = None,
        check: bool = False,
    ) -> CommandResult: ...


class RawRunner(Runner, Protocol):
    """A Runner on a host with a shell, that also runs a command line as the user wrote it."""

    async def run_raw(
        self,
        command: str,
        *,
        timeout: float,
        stdin: bytes | str | None = None,
        check: bool = False,
    ) -> CommandResult: ...


class LocalRunner:
    """The Runner for this machine, over :func:`homeops.core.process.run_bytes`.

    ``cwd`` and ``env`` apply to every command (``env`` replaces the environment).
    """

    def __init__(
        self,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._cwd = cwd
        self._env = env

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``argv`` here (see :class:`Runner`); a missing program is ``ToolMissing`` (3)."""
        if isinstance(argv, str):
            raise TypeError("argv must be a list of words, not a string")
        check_call(argv, timeout)
        raw = await process.run_bytes(
            argv, timeout=timeout, cwd=self._cwd, env=self._env, stdin=stdin
        )
        result = CommandResult(
            raw.argv, raw.returncode, raw.stdout, raw.stderr, raw.duration_ms / 1000
        )
        return result.check() if check else result


def check_call(words: Sequence[str], timeout: float) -> None:
    """:class:`UsageError` for a call no runner can make faithfully.

    A NUL cannot cross exec(2) (Python raises a bare ValueError) nor an SSH command line
    (sshd cuts the line there, leaving an unterminated quote); a NaN or infinite timeout
    would never fire, or report "timed out after nans".
    """
    for i, word in enumerate(words):
        if "\0" in word:
            raise UsageError(f"argument {i} of the command contains a NUL character")
    if not math.isfinite(timeout) or timeout <= 0:
        raise UsageError(f"timeout must be a finite number of seconds above 0, got {timeout!r}")


class SshRunner:
    """The Runner for one SSH target, over a shared :class:`~homeops.core.ssh.SshPool`.

    :meth:`run` quotes the argv for ``target.remote_shell`` (:mod:`homeops.core.ssh.shell`);
    :meth:`run_raw` sends a command line unchanged, for a command the user typed. Timeouts,
    kills, retries and errors are the pool's (docs/ssh.md).
    """

    def __init__(self, pool: SshPool, target: SshTarget) -> None:
        self.pool = pool
        self.target = target

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``argv`` on the target, quoted for its shell (see :class:`Runner`)."""
        command = remote_command(argv, self.target.remote_shell)  # refuses a bare string
        words = tuple(argv)
        check_call(words, timeout)
        return await self._exec(command, words, process.display_argv(words), timeout, stdin, check)

    async def run_raw(
        self,
        command: str,
        *,
        timeout: float,
        stdin: bytes | str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``command`` as the target's shell reads it: nothing is quoted or added."""
        if not command.strip():
            raise ValueError("command must not be empty")
        check_call((command,), timeout)
        return await self._exec(command, (command,), mask(command), timeout, stdin, check)

    async def _exec(
        self,
        command: str,
        argv: tuple[str, ...],
        display: str,
        timeout: float,
        stdin: bytes | str | None,
        check: bool,
    ) -> CommandResult:
        done = await self.pool.run(
            self.target, command, stdin=stdin, timeout=timeout, display=display
        )
        result = CommandResult(
            argv,
            done.exit_status,
            done.stdout,
            done.stderr,
            done.duration_ms / 1000,
            self.target.destination,
        )
        return result.check() if check else result
