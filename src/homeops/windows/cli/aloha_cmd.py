"""``aloha health|run|stop``: the Aloha GUI-automation apps on the VM."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import typer

from homeops.core.cli.common import JSON_HELP

if TYPE_CHECKING:
    from homeops.core.runner import RawRunner
    from homeops.windows.aloha_flow import AlohaHealth, ClientLog, RunResult
    from homeops.windows.settings import WindowsSettings

HEALTH_HELP = """Check both Aloha apps: the server's GET / must carry its marker ("Aloha API
server is running"); the client has no health route, so any HTTP answer means it is
reachable (404 is its expected answer, and another one is reported as such).
Exit 3 when either is unreachable or the server's marker is missing."""

RUN_HELP = """Start a task on the Aloha client (after checking the desktop is unlocked).

Every field is sent (omitted ones at the client's start-up defaults: screen 0, trace
example_trace, 50 steps), because the client keeps whatever an earlier run set. A request
that may have reached the client is never sent again. With --wait, follow the client's log
(aloha.client_log_path, read over SSH) until the run ends; a wait that times out sends /stop.

Exit: 0 started (or ended, with --wait), 1 a task is already running, the desktop is locked
(state=blocked) or the run logged an error, 2 usage, 3 client unreachable, 4 timed out."""

STOP_HELP = """Ask the client to stop its run (the run ends about a second later). Nothing
running is not an error (state=idle)."""

# The HTTP timeout of one request: the client answers /run_task at once (the run goes on in
# its own thread), and GET / on either app is instant.
REQUEST_TIMEOUT_S = 15.0
DEFAULT_WAIT = "30m"


def group() -> typer.Typer:
    """The ``aloha`` command group."""
    app = typer.Typer(help="The Aloha server and client on the VM.", no_args_is_help=True)
    app.command("health", help=HEALTH_HELP)(health_command)
    # No no_args_is_help: `aloha run` alone (an empty $TASK in a script) is exit 2, not help.
    app.command("run", help=RUN_HELP)(run_command)
    app.command("stop", help=STOP_HELP)(stop_command)
    return app


@contextlib.asynccontextmanager
async def vm_seams(settings: WindowsSettings) -> AsyncIterator[tuple[RawRunner, ClientLog | None]]:
    """The VM as the run needs it: a runner (desktop-locked check) and the client's log,
    over one SSH pool that only connects when first used."""
    from homeops.core.runner import SshRunner
    from homeops.core.ssh import SshPool
    from homeops.windows.aloha_flow import client_log
    from homeops.windows.target import vm_target

    target = vm_target(settings.windows)
    async with SshPool() as pool:
        yield SshRunner(pool, target), client_log(pool, target, settings.aloha)


def _health_data(report: AlohaHealth) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "server": {
            "url": report.server_url,
            "ok": report.server.ok,
            "status": report.server.status_code,
            "detail": report.server.detail,
        },
        "client": {
            "url": report.client_url,
            "reachable": report.client.reachable,
            "status": report.client.status_code,
            "detail": report.client.detail,
        },
    }


def health_command(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """Check both apps (see HEALTH_HELP)."""
    from homeops.core.cli.common import print_json, print_text
    from homeops.core.errors import DependencyUnavailable
    from homeops.windows.cli.common import json_errors, run_async, windows_settings

    with json_errors(as_json) as known:
        settings = windows_settings(ctx)

        async def main() -> AlohaHealth:
            from homeops.core import http
            from homeops.windows.aloha_flow import health

            async with http.make_client(timeout=REQUEST_TIMEOUT_S) as client:
                return await health(client, settings.aloha)

        report = run_async(main())
        data = _health_data(report)
        if not as_json:
            server = "ok" if report.server.ok else "FAIL"
            client = "ok" if report.client.reachable else "FAIL"
            print_text(
                f"aloha server: {server} {report.server_url} {report.server.detail}\n"
                f"aloha client: {client} {report.client_url} {report.client.detail}"
            )
        if not report.ok:
            failing = [
                name
                for name, ok in (("server", report.server.ok), ("client", report.client.reachable))
                if not ok
            ]
            known.update(data)  # the report, plus error and exit_code
            raise DependencyUnavailable(f"aloha {' and '.join(failing)} unavailable")
    if as_json:
        print_json(data)


def _flag_int(flag: str, value: str | None, low: int, high: int) -> int | None:
    # Parsed here, not by Typer, so a bad value is one line naming the flag and its range.
    from homeops.core.errors import UsageError

    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise UsageError(f"{flag}: not a whole number: {value!r}")
    number = int(text)
    if not low <= number <= high:
        raise UsageError(f"{flag}: must be {low}-{high}, got {number}")
    return number


def run_command(
    ctx: typer.Context,
    task: str = typer.Option(None, "--task", metavar="TEXT", help="What to do (required)."),
    max_steps: str = typer.Option(
        None, "--max-steps", metavar="N", help="Step budget (1-10000). Default: 50."
    ),
    selected_screen: str = typer.Option(
        None, "--selected-screen", metavar="N", help="Screen index (0-64). Default: 0."
    ),
    trace_id: str = typer.Option(
        None, "--trace-id", metavar="ID", help="Taught trajectory. Default: example_trace."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the client's log until the end."),
    timeout: str = typer.Option(
        None,
        "--timeout",
        metavar="DURATION",
        help=f"With --wait: the longest wait. Default: {DEFAULT_WAIT}.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Start a task (see RUN_HELP)."""
    from homeops.core.cli.common import duration_flag, print_json, print_text
    from homeops.core.errors import OperationalError, UsageError
    from homeops.core.logging import encode_value
    from homeops.windows import aloha
    from homeops.windows.aloha_flow import WAIT_NEEDS_LOG
    from homeops.windows.cli.common import json_errors, run_async, windows_settings

    with json_errors(as_json) as known:
        if task is None:
            raise UsageError("--task is required (aloha run --task TEXT)")
        steps = _flag_int("--max-steps", max_steps, 1, aloha.MAX_STEPS_LIMIT)
        screen = _flag_int("--selected-screen", selected_screen, 0, aloha.SELECTED_SCREEN_LIMIT)
        if timeout is not None and not wait:
            raise UsageError("--timeout only applies with --wait")
        timeout_s = duration_flag("--timeout", timeout or DEFAULT_WAIT)
        settings = windows_settings(ctx)
        request = aloha.run_task_request(
            task,
            settings.aloha.server_url,
            selected_screen=screen,
            trace_id=trace_id,
            max_steps=steps,
        )
        if wait and not (settings.aloha.client_log_path or "").strip():
            raise UsageError(WAIT_NEEDS_LOG)
        known.update({"task": request.task, "request": request.body()})

        async def main() -> RunResult:
            from homeops.core import http
            from homeops.windows.aloha_flow import run

            async with (
                vm_seams(settings) as (runner, log),
                http.make_client(timeout=REQUEST_TIMEOUT_S) as client,
            ):
                return await run(
                    client, runner, settings.aloha, request, log=log, wait=wait, timeout=timeout_s
                )

        result = run_async(main())
        end = result.end
        errors = list(end.progress.errors) if end is not None else []
        state = "started" if end is None else ("failed" if errors else "finished")
        data: dict[str, Any] = {"state": state, "task": request.task, "request": request.body()}
        data["response"] = result.response
        if end is not None:
            data["steps"] = len(end.progress.steps)
            data["errors"] = errors
            data["duration_ms"] = round(end.duration_s * 1000, 1)
        if not as_json:
            fields = [
                f"state={state}",
                f"task={encode_value(request.task)}",
                f"max_steps={request.max_steps}",
                f"selected_screen={request.selected_screen}",
                f"trace_id={encode_value(request.trace_id)}",
            ]
            if end is not None:
                fields += [f"steps={data['steps']}", f"duration_ms={data['duration_ms']}"]
            print_text(" ".join(fields))
        if errors:
            known.update(data)
            raise OperationalError(f"aloha run: the client logged an error: {errors[0]}")
    if as_json:
        print_json({"ok": True, **data})


def stop_command(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """Stop the client's run (see STOP_HELP)."""
    from homeops.core.cli.common import print_json, print_text
    from homeops.windows import aloha
    from homeops.windows.cli.common import json_errors, run_async, windows_settings

    with json_errors(as_json):
        settings = windows_settings(ctx)

        async def main() -> aloha.StopAnswer:
            from homeops.core import http
            from homeops.windows.aloha_flow import stop

            async with http.make_client(timeout=REQUEST_TIMEOUT_S) as client:
                return await stop(client, settings.aloha)

        answer = run_async(main())
    state = "stopping" if answer.outcome is aloha.StopOutcome.STOPPING else "idle"
    if as_json:
        print_json({"state": state, "status": answer.status_code, "message": answer.message})
    else:
        print_text(f"state={state} message={_quote(answer.message)}")


def _quote(text: str) -> str:
    from homeops.core.logging import encode_value

    return encode_value(text)
