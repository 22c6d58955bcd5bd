"""``homeops jobs list|status|cancel``: inspect and cancel jobs in the configured store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from homeops.core.cli.common import (
    JSON_HELP,
    duration_flag,
    load_core,
    print_json,
    print_text,
    table,
)

if TYPE_CHECKING:
    from homeops.core.jobs.model import Job
    from homeops.core.jobs.sqlite import SqliteJobQueue

app = typer.Typer(
    help="Queue, run, inspect and cancel jobs (builds, backups, deploys, Windows runs).",
    no_args_is_help=True,
)


@contextmanager
def _queue(ctx: typer.Context, job_id: str | None = None) -> Iterator[SqliteJobQueue]:
    """The configured store, opened for one command; ``job_id`` is validated first."""
    from homeops.core.jobs.model import validate_job_id
    from homeops.core.jobs.sqlite import SqliteJobQueue

    if job_id is not None:
        validate_job_id(job_id)
    queue = SqliteJobQueue(load_core(ctx).settings.jobs_db)
    try:
        yield queue
    finally:
        queue.close()


def _age(job: Job) -> str:
    from homeops.core.logging import format_ts

    return format_ts(job.created_at)[:19] + "Z"


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    state: str = typer.Option(
        None, "--state", metavar="STATE", help="queued|running|succeeded|failed|cancelled"
    ),
    job_type: str = typer.Option(
        None, "--type", metavar="TYPE", help="Only jobs of this type, e.g. builds.build"
    ),
    limit: int = typer.Option(50, "--limit", metavar="N", min=1, max=10000, help="Newest N jobs."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List jobs, newest first."""
    from homeops.core.errors import UsageError
    from homeops.core.jobs.model import JobState

    wanted: JobState | None = None
    if state is not None:
        try:
            wanted = JobState(state)
        except ValueError:
            names = "|".join(s.value for s in JobState)
            raise UsageError(f"--state: unknown state {state!r} (one of {names})") from None
    with _queue(ctx) as queue:
        jobs = queue.list(state=wanted, type=job_type, limit=limit)
    if as_json:
        print_json([j.to_dict() for j in jobs])
        return
    if not jobs:
        print_text("no jobs")
        return
    rows = [
        (j.id, j.type, j.state.value, f"{j.attempts}/{j.max_attempts}", _age(j), j.error or "")
        for j in jobs
    ]
    print_text(table(("id", "type", "state", "attempts", "created", "error"), rows))


def _describe(job: Job) -> str:
    import json

    data: dict[str, Any] = job.to_dict()
    for key in ("result",):
        if isinstance(data.get(key), dict | list):
            data[key] = json.dumps(data[key])
    keys = [
        "id", "type", "state", "trace_id", "attempts", "max_attempts", "idempotency_key",
        "created_at", "started_at", "finished_at", "worker_id", "cancel_requested", "error",
        "result",
    ]  # fmt: skip
    return table(("field", "value"), [(k, data.get(k)) for k in keys])


@app.command("status")
def status(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="JOB_ID"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show one job."""
    with _queue(ctx, job_id) as queue:
        job = queue.get(job_id)
    if as_json:
        print_json(job.to_dict())
    else:
        print_text(_describe(job))


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="JOB_ID"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cancel a job: a queued one at once, a running one within a second (its worker stops it)."""
    with _queue(ctx, job_id) as queue:
        was_terminal = queue.get(job_id).state.terminal
        job = queue.cancel(job_id)
    if as_json:
        print_json(job.to_dict())
        return
    if was_terminal:
        print_text(f"{job.id}: already {job.state.value}, nothing to cancel")
    elif job.state.value == "cancelled":
        print_text(f"{job.id}: cancelled")
    elif job.cancel_requested:
        print_text(f"{job.id}: cancel requested; its worker stops it within a second")


def _no_constant(name: str) -> Any:  # noqa: ANN401
    raise ValueError(f"{name} is not valid JSON")


@app.command("enqueue")
def enqueue(
    ctx: typer.Context,
    job_type: str = typer.Argument(..., metavar="TYPE", help="e.g. core.artifacts-sweep"),
    payload: str = typer.Option("{}", "--payload", metavar="JSON", help="Job input object."),
    idempotency_key: str = typer.Option(
        None,
        "--idempotency-key",
        metavar="KEY",
        help="Same key and payload: the existing job is returned. Same key, other payload: error.",
    ),
    max_attempts: int = typer.Option(
        None, "--max-attempts", metavar="N", min=1, max=100, help="Default: jobs.max_attempts."
    ),
    timeout: str = typer.Option(None, "--timeout", metavar="DURATION", help="Per attempt."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Queue a job; a worker serving its type runs it (see `homeops jobs worker`)."""
    import json

    from homeops.core.errors import UsageError

    try:
        data = json.loads(payload, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise UsageError(f"--payload: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--payload: must be a JSON object, not {type(data).__name__}")
    timeout_s = None if timeout is None else duration_flag("--timeout", timeout)
    with _queue(ctx) as queue:
        attempts = max_attempts or load_core(ctx).settings.jobs.max_attempts
        job = queue.enqueue(
            job_type,
            data,
            idempotency_key=idempotency_key,
            max_attempts=attempts,
            timeout_s=timeout_s,
        )
    if as_json:
        print_json(job.to_dict())
    else:
        print_text(job.id)
