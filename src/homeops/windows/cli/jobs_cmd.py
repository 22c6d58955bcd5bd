"""``jobs``: the core's job commands, with the seed's ``enqueue --type T --cmd …`` form.

``status``, ``cancel`` and ``list`` are the core's (``--id ID`` or a bare ID), on the same
store as ``homeops jobs``; ``enqueue`` builds the payload of a windows job type from flags.
"""

from __future__ import annotations

from typing import Any

import typer

from homeops.core.cli.common import JSON_HELP

ENQUEUE_HELP = """Queue a windows job: --type windows.exec --cmd CMD, --type aloha.run --task T,
or --type playwright.run --url URL. Prints job_id=... state=queued trace_id=... (--json:
the job as JSON). A worker (win-automation worker) runs it.

The payload is checked as the direct command checks it (windows exec, aloha run,
playwright run): a multi-line --cmd without --powershell, a command over Windows' 8191
characters on the wire, a --url with a bad port or a control character are refused (exit
2, naming the field), so no job is stored that could never run."""

# Which flags belong to which job type: a flag given for another type is a usage error,
# not silently dropped.
_FLAGS = {
    "windows.exec": ("--cmd", "--powershell", "--idempotent-check"),
    "aloha.run": ("--task", "--max-steps", "--selected-screen", "--trace-id", "--no-wait"),
    "playwright.run": ("--url", "--no-screenshot", "--trace"),
}


def group() -> typer.Typer:
    """The core's ``jobs`` group with the seed's ``enqueue``."""
    from homeops.core.cli import commands

    jobs = commands.jobs_group(worker=False)
    jobs.registered_commands = [c for c in jobs.registered_commands if c.name != "enqueue"]
    jobs.command("enqueue", help=ENQUEUE_HELP)(enqueue)
    return jobs


def enqueue(
    ctx: typer.Context,
    job_type: str = typer.Option(..., "--type", metavar="TYPE", help=", ".join(_FLAGS)),
    cmd: str = typer.Option(None, "--cmd", metavar="CMD", help="windows.exec: command line."),
    powershell: bool = typer.Option(False, "--powershell", help="windows.exec: CMD is PowerShell."),
    idempotent_check: str = typer.Option(
        None, "--idempotent-check", metavar="SCRIPT", help="windows.exec: skip when it exits 0."
    ),
    task: str = typer.Option(None, "--task", metavar="TEXT", help="aloha.run: the task."),
    max_steps: int = typer.Option(
        None, "--max-steps", metavar="N", min=1, max=10000, help="aloha.run."
    ),
    selected_screen: int = typer.Option(
        None, "--selected-screen", metavar="N", min=0, max=64, help="aloha.run."
    ),
    trace_id: str = typer.Option(
        None, "--trace-id", metavar="ID", help="aloha.run: the taught trajectory."
    ),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="aloha.run: succeed once started (default: until it ends)."
    ),
    url: str = typer.Option(None, "--url", metavar="URL", help="playwright.run: page to open."),
    no_screenshot: bool = typer.Option(False, "--no-screenshot", help="playwright.run."),
    trace: bool = typer.Option(False, "--trace", help="playwright.run: record trace.zip."),
    timeout: str = typer.Option(None, "--timeout", metavar="DURATION", help="Per attempt."),
    max_attempts: int = typer.Option(
        None, "--max-attempts", metavar="N", min=1, max=100, help="Default: jobs.max_attempts."
    ),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", metavar="KEY", help="Same key and payload: the same job."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Queue a windows job (see ENQUEUE_HELP)."""
    from homeops.core.cli.common import duration_flag, print_json, print_text
    from homeops.core.cli.jobs_cmd import enqueue_job
    from homeops.core.errors import UsageError
    from homeops.windows.cli.common import json_errors

    with json_errors(as_json) as known:
        known["type"] = job_type
        given = {
            "--cmd": cmd is not None,
            "--powershell": powershell,
            "--idempotent-check": idempotent_check is not None,
            "--task": task is not None,
            "--max-steps": max_steps is not None,
            "--selected-screen": selected_screen is not None,
            "--trace-id": trace_id is not None,
            "--no-wait": no_wait,
            "--url": url is not None,
            "--no-screenshot": no_screenshot,
            "--trace": trace,
        }
        if job_type not in _FLAGS:
            raise UsageError(f"--type {job_type!r}: not a windows job type ({', '.join(_FLAGS)})")
        own = _FLAGS[job_type]
        stray = [flag for flag, on in given.items() if on and flag not in own]
        if stray:
            raise UsageError(
                f"{stray[0]} is not an option of {job_type} (its options: {', '.join(own)})"
            )
        payload: dict[str, Any]
        match job_type:
            case "windows.exec":
                if cmd is None or not cmd.strip():
                    raise UsageError("--type windows.exec needs --cmd CMD (the command line)")
                payload = {
                    "cmd": cmd,
                    "powershell": powershell,
                    "idempotent_check": idempotent_check,
                }
            case "aloha.run":
                if task is None or not task.strip():
                    raise UsageError("--type aloha.run needs --task TEXT")
                if not no_wait:
                    _require_client_log(ctx)
                payload = {
                    "task": task,
                    "max_steps": max_steps,
                    "trace_id": trace_id,
                    "wait": not no_wait,
                }
                if selected_screen is not None:
                    payload["selected_screen"] = selected_screen
            case _:
                if url is None or not url.strip():
                    raise UsageError("--type playwright.run needs --url URL")
                payload = {"url": url, "screenshot": not no_screenshot, "trace": trace}
        timeout_s = None if timeout is None else duration_flag("--timeout", timeout)
        job = enqueue_job(
            ctx,
            job_type,
            payload,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
        )
    if as_json:
        print_json(job.to_dict())
    else:
        print_text(f"job_id={job.id} state={job.state.value} trace_id={job.trace_id}")


def _require_client_log(ctx: typer.Context) -> None:
    """A waiting aloha.run job needs the client's log: refuse it now, not at run time."""
    from homeops.core.errors import UsageError
    from homeops.windows.aloha_flow import WAIT_NEEDS_LOG
    from homeops.windows.cli.common import windows_settings

    if not (windows_settings(ctx).aloha.client_log_path or "").strip():
        raise UsageError(f"{WAIT_NEEDS_LOG}; or pass --no-wait")
