"""``playwright install|health|run``: the Playwright server on the VM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from homeops.core.cli.common import JSON_HELP

if TYPE_CHECKING:
    from homeops.windows.playwright_flow import RunResult

INSTALL_HELP = """Install the Playwright server on the VM (over SSH; safe to run again).

Checks Node.js and the playwright npm package on Windows (exit 3 naming what is missing, or
when its major.minor differs from this client's), writes launch-server.js and install.ps1
under C:\\ProgramData\\win-automation\\playwright, stores the ws path in ws_path.txt there,
registers the scheduled task WinAutomation-Playwright (at startup, as SYSTEM) and starts it.

The ws path is playwright.ws_path when set (WIN_AUTOMATION_PLAYWRIGHT_WS_PATH or its _FILE
form); otherwise a random one is generated once and kept in
<state_dir>/windows/playwright-ws-path (mode 0600), where health, run and the worker find it.
It is never printed or logged."""

HEALTH_HELP = """Check the Playwright server: its port answers AND a real WebSocket connect
with this Playwright client succeeds. Exit 3 when not (or on a version mismatch, naming both
versions), 2 when no ws path is configured or stored."""

RUN_HELP = """Open URL in the VM's browser and report its title and final URL.

--screenshot writes screenshot.png and --trace writes trace.zip into --out (here, on this
machine; checked and created before the browser is reached). --json prints one object, on
failure too ({"ok": false, "error": ..., "exit_code": N, ...}).

Exit: 0 the page loaded; 1 it failed to load, or its main response was an HTTP error
(4xx/5xx, the status named; the files are still written); 2 usage; 3 the server is
unavailable; 4 timeout."""


def group() -> typer.Typer:
    """The ``playwright`` command group."""
    app = typer.Typer(help="The Playwright browser server on the VM.", no_args_is_help=True)
    app.command("install", help=INSTALL_HELP)(install_command)
    app.command("health", help=HEALTH_HELP)(health_command)
    # No no_args_is_help: `playwright run` alone (an empty $URL in a script) is exit 2.
    app.command("run", help=RUN_HELP)(run_command)
    return app


def _state_dir(ctx: typer.Context) -> Path:
    from homeops.core.cli.common import domain_context

    return domain_context(ctx).core.state_dir


def install_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    no_start: bool = typer.Option(False, "--no-start", help="Register the task, do not start it."),
) -> None:
    """Install the server on the VM (see INSTALL_HELP)."""
    from homeops.core.cli.common import print_json, print_text
    from homeops.windows.cli.common import json_errors, run_async, windows_settings
    from homeops.windows.playwright_flow import InstallResult

    with json_errors(as_json) as known:
        settings = windows_settings(ctx)
        state_dir = _state_dir(ctx)

        async def main() -> InstallResult:
            from homeops.core.runner import SshRunner
            from homeops.core.ssh import SshPool
            from homeops.windows.playwright_flow import install, vm_uploader
            from homeops.windows.target import vm_target

            target = vm_target(settings.windows)
            async with SshPool() as pool:
                return await install(
                    SshRunner(pool, target),
                    vm_uploader(pool, target),
                    settings.playwright,
                    state_dir=state_dir,
                    start=not no_start,
                )

        result = run_async(main())
        stored = (
            str(result.ws_path_file) if result.ws_path_file else "settings (playwright.ws_path)"
        )
        data = {
            "node": result.node_version,
            "playwright": result.playwright_version,
            "package": result.playwright_package,
            "task": result.task.state or "missing",
            "started": result.started,
            "ws_path_generated": result.ws_path_generated,
            "ws_path_source": stored,
            "files": list(result.files),
            "listening": result.listening,
        }
        if not as_json:
            print_text(
                f"node={result.node_version} playwright={result.playwright_version} "
                f"task={data['task']} started={'yes' if result.started else 'no'}\n"
                f"ws path: {'generated, ' if result.ws_path_generated else ''}from {stored}"
            )
        if result.listening is False:
            from homeops.windows.playwright_flow import PlaywrightUnavailable
            from homeops.windows.powershell import PLAYWRIGHT_TASK

            known.update(data)
            # Installed and started, yet nothing answers: the port forward or the server.
            raise PlaywrightUnavailable(
                f"playwright install: task {PLAYWRIGHT_TASK} started, but nothing listens on "
                f"{settings.playwright.host}:{settings.playwright.port} (check the port "
                "forward; `win-automation playwright health` once it is up)"
            )
    if as_json:
        print_json(data)


def health_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    timeout: str = typer.Option(
        None, "--timeout", metavar="DURATION", help="Connect timeout. Default: 15s."
    ),
) -> None:
    """Check the server (see HEALTH_HELP)."""
    from homeops.core.cli.common import duration_flag, print_json, print_text
    from homeops.windows.cli.common import json_errors, run_async, windows_settings
    from homeops.windows.playwright_flow import (
        DEFAULT_HEALTH_TIMEOUT_S,
        HealthReport,
        health,
        resolve_ws_path,
    )

    with json_errors(as_json) as known:
        timeout_s = (
            DEFAULT_HEALTH_TIMEOUT_S if timeout is None else duration_flag("--timeout", timeout)
        )
        settings = windows_settings(ctx)
        known.update({"host": settings.playwright.host, "port": settings.playwright.port})
        ws_path = resolve_ws_path(settings.playwright, _state_dir(ctx))
        report: HealthReport = run_async(health(settings.playwright, ws_path, timeout=timeout_s))
    if as_json:
        print_json(
            {
                "ok": True,
                "host": report.host,
                "port": report.port,
                "browser_version": report.browser_version,
                "client_version": report.client_version,
                "duration_ms": round(report.duration_ms, 1),
            }
        )
        return
    print_text(
        f"playwright: ok {report.host}:{report.port} chromium {report.browser_version} "
        f"(client {report.client_version})"
    )


def _out_dir(out: str, *, create: bool) -> Path:
    """``--out`` as a directory to write into: refused (exit 2) when empty, not a directory,
    or (when files are asked for) not creatable or not writable; created then, before the
    browser is reached, so a bad --out never costs a run."""
    import os

    from homeops.core.errors import UsageError

    if not out.strip():
        raise UsageError("--out: empty path")
    path = Path(os.path.expanduser(out))
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: not a directory")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--out {out}: cannot create the directory: {exc.strerror or exc}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: not writable")
    return path


def _run_data(result: RunResult) -> dict[str, Any]:
    return {
        "url": result.url,
        "final_url": result.final_url,
        "title": result.title,
        "status": result.status,
        "files": [str(p) for p in result.files],
        "duration_ms": round(result.duration_ms, 1),
    }


def _run_text(result: RunResult) -> str:
    import json

    title = json.dumps(result.title, ensure_ascii=False)
    lines = [f"title={title} final_url={result.final_url} status={result.status}"]
    lines.extend(str(p) for p in result.files)
    return "\n".join(lines)


def run_command(
    ctx: typer.Context,
    url: str = typer.Option(None, "--url", metavar="URL", help="http(s) page to open (required)."),
    screenshot: bool = typer.Option(False, "--screenshot", help="Write screenshot.png."),
    trace: bool = typer.Option(False, "--trace", help="Write trace.zip (Playwright trace)."),
    timeout: str = typer.Option(
        None, "--timeout", metavar="DURATION", help="The whole run. Default: 60s."
    ),
    # str, not Path: Typer turns "" into Path("."), and `--out ''` must not mean "here".
    out: str = typer.Option(
        ".", "--out", metavar="DIR", help="Where the files go (created).", show_default=True
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Open a page (see RUN_HELP)."""
    from homeops.core.cli.common import duration_flag, print_json, print_text
    from homeops.core.errors import UsageError
    from homeops.windows.cli.common import json_errors, run_async, windows_settings
    from homeops.windows.playwright import check_url
    from homeops.windows.playwright_flow import (
        DEFAULT_RUN_TIMEOUT_S,
        PageLoadFailed,
        resolve_ws_path,
    )
    from homeops.windows.playwright_flow import run as run_page

    with json_errors(as_json) as known:
        if url is None or not url.strip():
            raise UsageError("--url is required (playwright run --url URL)")
        known["url"] = url
        url = check_url(url)  # refused before anything connects
        known["url"] = url
        timeout_s = (
            DEFAULT_RUN_TIMEOUT_S if timeout is None else duration_flag("--timeout", timeout)
        )
        out_dir = _out_dir(out, create=screenshot or trace)
        settings = windows_settings(ctx)
        ws_path = resolve_ws_path(settings.playwright, _state_dir(ctx))
        try:
            result = run_async(
                run_page(
                    settings.playwright,
                    ws_path,
                    url=url,
                    out_dir=out_dir,
                    screenshot=screenshot,
                    trace=trace,
                    timeout=timeout_s,
                )
            )
        except PageLoadFailed as exc:
            # The page answered an error: what it showed is still reported (and written).
            known.update(_run_data(exc.result))
            if not as_json:
                print_text(_run_text(exc.result))
            raise
    if as_json:
        print_json({"ok": True, **_run_data(result)})
        return
    print_text(_run_text(result))
