"""One command on the VM: ``windows exec`` and the ``windows.exec`` job.

The command line goes to Windows OpenSSH as given, so its default shell (cmd.exe unless the
VM's DefaultShell says otherwise) reads it; with ``powershell`` it is PowerShell source sent
as ``powershell -EncodedCommand``, which survives every quoting layer (CONTRACTS.md §1).
Idempotent mode first refuses a locked desktop, then runs the check: its exit 0 means the
work is already done and the command is skipped.

Retries are the SSH seam's: a connection that cannot be made is retried (3 attempts), a
command that ran and failed never is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from homeops.core.errors import HomeopsTimeout, OperationalError, UsageError
from homeops.core.ssh.shell import encode_powershell

if TYPE_CHECKING:
    from homeops.core.ssh.model import OutputSink, RunsCommands, SshTarget

# cmd.exe refuses command lines longer than this (the encoded form of a script counts).
CMD_LINE_MAX: Final = 8191


class ExecState(StrEnum):
    """How a ``windows exec`` ended (the ``state=`` of its output)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    BLOCKED = "blocked"


class RemoteCommandFailed(OperationalError):
    """The command ran on the VM and exited non-zero: exit 1, and a job is not retried
    (running it again would do the same; the VM answered)."""

    retryable = False

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"remote command exited with status {exit_code} (state=failed)")
        self.remote_exit_code = exit_code


@dataclass(frozen=True)
class ExecRequest:
    """What to run: a command line for the VM's shell, or PowerShell source."""

    command: str
    powershell: bool = False
    idempotent_check: str | None = None
    timeout: float = 600.0


@dataclass(frozen=True)
class ExecOutcome:
    """What happened. ``exit_code`` is the command's (None when it did not run)."""

    state: ExecState
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    duration_ms: float
    check_exit_code: int | None = None

    @property
    def ok(self) -> bool:
        """Succeeded, or skipped because the check said the work is done."""
        return self.state in (ExecState.SUCCEEDED, ExecState.SKIPPED)


def command_line(words: Sequence[str]) -> str:
    """The words after ``--`` as one command line, joined as ssh(1) joins them."""
    line = " ".join(words)
    if not line.strip():
        raise UsageError(
            "no command given; usage: windows exec [OPTIONS] -- CMD... "
            "(e.g. windows exec -- hostname)"
        )
    return line


def wire_command(line: str, *, powershell: bool) -> tuple[str, str]:
    """The command line sent to the VM, and how logs show it (the script, not its base64)."""
    if "\0" in line:
        raise UsageError("the command contains a NUL character")
    if powershell:
        wire = encode_powershell(line)
        shown = f"powershell: {line}"
    else:
        if "\n" in line or "\r" in line:
            # cmd.exe runs only the first line; the rest would silently not run.
            raise UsageError("a multi-line command needs --powershell (cmd.exe runs one line)")
        wire, shown = line, line
    if len(wire) > CMD_LINE_MAX:
        raise UsageError(
            f"the command is {len(wire)} characters on the wire; Windows allows {CMD_LINE_MAX}"
        )
    return wire, shown


def _remaining(deadline: float, clock: Callable[[], float], total: float) -> float:
    left = deadline - clock()
    if left <= 0:
        raise HomeopsTimeout(f"windows exec: timed out after {total:g}s")
    return left


async def execute(
    pool: RunsCommands,
    target: SshTarget,
    request: ExecRequest,
    *,
    stdout: OutputSink | None = None,
    stderr: OutputSink | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ExecOutcome:
    """Run ``request`` on ``target``; ``timeout`` bounds the whole call, checks included.

    Output goes to the sinks as it arrives when given (then the outcome holds none), else it
    is captured. Raises the seam's errors: unreachable (3), timeout (4, the command killed).
    """
    from homeops.windows import powershell as ps

    start = clock()
    deadline = start + request.timeout
    wire, shown = wire_command(request.command, powershell=request.powershell)

    def elapsed() -> float:
        return (clock() - start) * 1000.0

    check_code: int | None = None
    if request.idempotent_check is not None:
        check_wire, check_shown = wire_command(
            request.idempotent_check, powershell=request.powershell
        )
        locked = await pool.run(
            target,
            encode_powershell(ps.desktop_locked_script()),
            timeout=_remaining(deadline, clock, request.timeout),
            check=True,
            display="powershell: desktop-locked check",
        )
        if ps.parse_desktop_locked(locked.stdout.decode("utf-8", "replace")):
            return ExecOutcome(ExecState.BLOCKED, None, b"", b"", elapsed())
        checked = await pool.run(
            target,
            check_wire,
            timeout=_remaining(deadline, clock, request.timeout),
            display=check_shown,
        )
        check_code = checked.exit_status
        if check_code == 0:
            return ExecOutcome(ExecState.SKIPPED, None, b"", b"", elapsed(), check_code)
    done = await pool.run(
        target,
        wire,
        timeout=_remaining(deadline, clock, request.timeout),
        stdout=stdout,
        stderr=stderr,
        display=shown,
    )
    state = ExecState.SUCCEEDED if done.exit_status == 0 else ExecState.FAILED
    return ExecOutcome(state, done.exit_status, done.stdout, done.stderr, elapsed(), check_code)


class CrlfSink:
    """Writes output to ``write`` with Windows line ends (``\\r\\n``) made ``\\n``.

    A ``\\r`` at the end of one chunk is held back until the next shows whether a ``\\n``
    follows; :meth:`flush` writes a held one at the end.
    """

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._held = False

    def __call__(self, data: bytes) -> None:
        """Translate and write one chunk."""
        if self._held:
            data = b"\r" + data
            self._held = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held = True
        if data:
            self._write(data.replace(b"\r\n", b"\n"))

    def flush(self) -> None:
        """Write a ``\\r`` still held back (output that ended with one)."""
        if self._held:
            self._held = False
            self._write(b"\r")


def normalize_newlines(data: bytes) -> bytes:
    """``data`` with ``\\r\\n`` made ``\\n`` (captured output, for ``--json``)."""
    return data.replace(b"\r\n", b"\n")
