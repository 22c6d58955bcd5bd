"""``windows exec``: one command on the VM, its output streamed to ours."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import typer

from homeops.core.cli.common import JSON_HELP

if TYPE_CHECKING:
    from pathlib import Path

    from homeops.core.ssh.model import RunsCommands

EXEC_HELP = """Run CMD on the Windows VM (put it after --).

The command line goes to the VM's default shell as given (cmd.exe unless DefaultShell is
set); --powershell sends it as PowerShell source (-EncodedCommand, no quoting to worry
about). Remote stdout goes to stdout and remote stderr to stderr as they arrive, Windows
line ends made Unix ones (--raw: bytes untouched).

With --idempotent-check SCRIPT (run the same way as CMD) the desktop must be unlocked and a
check exiting 0 skips CMD (state=skipped).

--json prints one object: the outcome (exit_code is the remote command's), or on an error
before the command ran {"ok": false, "error": ..., "exit_code": <this command's exit code>}.

Exit: 0 ok or skipped, 1 the remote command failed (or the desktop is locked, state=blocked),
2 usage (no command given), 3 VM unreachable after 3 attempts, 4 timed out (the remote
command is killed)."""


def group() -> typer.Typer:
    """The ``windows`` command group."""
    app = typer.Typer(help="Commands on the Windows VM over SSH.", no_args_is_help=True)
    # No no_args_is_help here: `windows exec` with an empty $CMD must fail, not print help
    # and exit 0 (command_line refuses it, exit 2).
    app.command("exec", help=EXEC_HELP)(exec_command)
    return app


def exec_command(
    ctx: typer.Context,
    command: list[str] = typer.Argument(None, metavar="-- CMD...", show_default=False),
    raw: bool = typer.Option(False, "--raw", help="Pass output bytes through untouched."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    timeout: str = typer.Option(
        None, "--timeout", metavar="DURATION", help="Whole call, checks included. Default: 10m."
    ),
    powershell: bool = typer.Option(
        False, "--powershell", help="CMD is PowerShell source, sent as -EncodedCommand."
    ),
    idempotent: bool = typer.Option(
        False, "--idempotent", help="Skip CMD when --idempotent-check exits 0."
    ),
    idempotent_check: str = typer.Option(
        None, "--idempotent-check", metavar="SCRIPT", help="The check (implies --idempotent)."
    ),
) -> None:
    """Run CMD on the VM (see EXEC_HELP)."""
    import sys

    from homeops.core.cli.common import domain_context, duration_flag, error_line, print_json
    from homeops.core.errors import HomeopsError, UsageError
    from homeops.windows.cli.common import json_errors, run_async, windows_settings
    from homeops.windows.exec_flow import (
        CrlfSink,
        ExecOutcome,
        ExecRequest,
        ExecState,
        RemoteCommandFailed,
        command_line,
        normalize_newlines,
        wire_command,
    )
    from homeops.windows.vm import DesktopLocked

    with json_errors(as_json) as known:
        line = command_line(command or [])
        if idempotent and idempotent_check is None:
            raise UsageError("--idempotent needs --idempotent-check SCRIPT (the check to run)")
        if idempotent_check is not None and not idempotent_check.strip():
            raise UsageError("--idempotent-check: the check script is empty")
        timeout_s = 600.0 if timeout is None else duration_flag("--timeout", timeout)
        request = ExecRequest(line, powershell, idempotent_check, timeout_s)
        wire_command(line, powershell=powershell)  # refused before connecting, not after
        settings = windows_settings(ctx)
        state_dir = domain_context(ctx).core.state_dir
        vm = settings.windows
        host = f"{vm.ssh_user}@{vm.ssh_host}:{vm.ssh_port}"
        known.update({"state": "error", "host": host})

        sinks: list[Callable[[bytes], None]] = []
        if not as_json:
            for stream in (sys.stdout, sys.stderr):
                writer = _StreamWriter(stream)
                sinks.append(writer if raw else CrlfSink(writer))

        async def main() -> ExecOutcome:
            from homeops.windows.exec_flow import execute
            from homeops.windows.target import vm_target

            async with _runner(state_dir) as pool:
                return await execute(
                    pool,
                    vm_target(vm),
                    request,
                    stdout=sinks[0] if sinks else None,
                    stderr=sinks[1] if sinks else None,
                )

        outcome = run_async(main())
    for sink in sinks:
        if isinstance(sink, CrlfSink):
            sink.flush()
    failure: HomeopsError | None = None
    match outcome.state:
        case ExecState.SUCCEEDED | ExecState.SKIPPED:
            pass
        case ExecState.BLOCKED:
            failure = DesktopLocked("the Windows desktop is locked; nothing ran (state=blocked)")
        case ExecState.FAILED:
            failure = RemoteCommandFailed(outcome.exit_code or 0)
    if as_json:
        fix = (lambda b: b) if raw else normalize_newlines
        data = {
            "ok": outcome.ok,
            "state": str(outcome.state),
            # The remote command's own exit status (None when it did not run).
            "exit_code": outcome.exit_code,
            "check_exit_code": outcome.check_exit_code,
            "stdout": fix(outcome.stdout).decode("utf-8", "replace"),
            "stderr": fix(outcome.stderr).decode("utf-8", "replace"),
            "duration_ms": round(outcome.duration_ms, 1),
            "host": host,
        }
        if failure is not None:
            data["error"] = error_line(str(failure))
        print_json(data)
    elif outcome.state is ExecState.SKIPPED:
        sys.stderr.write("state=skipped (the idempotent check exited 0)\n")
    if failure is not None:
        raise failure


def _runner(state_dir: Path) -> AbstractAsyncContextManager[RunsCommands]:
    """OpenSSH's ``ssh`` over a master that later calls share (one process start and a round
    trip per call instead of asyncssh's import and a fresh login), where ``ssh`` exists;
    else the asyncssh pool. Both log in with the same options and report the same errors."""
    import shutil

    if shutil.which("ssh"):
        from homeops.core.ssh.oneshot import OneShotSsh

        # Control sockets in <state_dir>/ssh-mux (0700): a master is a login to the VM.
        return OneShotSsh(state_dir=state_dir)
    from homeops.core.ssh import SshPool

    return SshPool()


class _StreamWriter:
    """Writes remote bytes to one of our streams at once (a long command shows progress)."""

    def __init__(self, stream: object) -> None:
        self._buffer = getattr(stream, "buffer", None)
        self._stream = stream

    def __call__(self, data: bytes) -> None:
        if self._buffer is not None:
            self._buffer.write(data)
            self._buffer.flush()
        else:  # a test's text stream
            self._stream.write(data.decode("utf-8", "replace"))  # type: ignore[attr-defined]
