"""``homeops jobs list|status|cancel|enqueue|check|prune``: jobs in the configured store.

``list`` and ``status`` only read: they open the store read-only and never create it, change
its mode or take its write lock; a store that does not exist yet has no jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from homeops.core.cli.common import (
    JSON_HELP,
    defaults_only_store,
    duration_flag,
    json_errors,
    load_core,
    print_json,
    print_text,
    table,
)

if TYPE_CHECKING:
    from homeops.core.jobs.model import Job
    from homeops.core.jobs.queue import JobClient
    from homeops.core.jobs.types import JobType

app = typer.Typer(
    help="Queue, run, inspect and cancel jobs (builds, backups, deploys, Windows runs).",
    no_args_is_help=True,
)


# A payload is a job's input, not bulk data; the bound keeps `--payload @/dev/zero`-like
# mistakes (and a runaway pipe on stdin) from eating memory.
MAX_PAYLOAD_BYTES = 1 << 20
# integrity_check stops after this many problems; the text report shows the first few.
_CHECK_MAX_PROBLEMS = 100
_CHECK_SHOWN = 10


@contextmanager
def _queue(
    ctx: typer.Context, job_id: str | None = None, *, readonly: bool = False
) -> Iterator[JobClient]:
    """The configured store, opened for one command; ``job_id`` is validated first."""
    from homeops.core.jobs.model import validate_job_id
    from homeops.core.jobs.store import open_store, open_store_at

    if job_id is not None:
        validate_job_id(job_id)
    # Readers skip the settings models when only defaults apply (see defaults_only_store).
    fast = defaults_only_store(ctx) if readonly else None
    if fast is not None:
        queue: JobClient = open_store_at(fast, readonly=True)
    else:
        queue = open_store(load_core(ctx).settings, readonly=readonly)
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
    with json_errors(as_json):
        if state is not None:
            try:
                wanted = JobState(state)
            except ValueError:
                names = "|".join(s.value for s in JobState)
                raise UsageError(f"--state: unknown state {state!r} (one of {names})") from None
        with _queue(ctx, readonly=True) as queue:
            jobs = queue.list(state=wanted, type=job_type, limit=limit)
    if as_json:
        print_json([j.to_dict() for j in jobs])
        return
    if not jobs:
        print_text("no jobs")
        return
    rows = [
        (j.id, j.type, j.state.value, f"{j.attempts}/{j.max_attempts}", _age(j), _error(j))
        for j in jobs
    ]
    print_text(table(("id", "type", "state", "attempts", "created", "error"), rows))


def _error(job: Job) -> str:
    if job.damaged is None:
        return job.error or ""
    return f"DAMAGED ROW: {job.damaged}" + (f"; {job.error}" if job.error else "")


def _describe(job: Job) -> str:
    import json

    data: dict[str, Any] = job.to_dict()
    for key in ("result",):
        if isinstance(data.get(key), dict | list):
            data[key] = json.dumps(data[key])
    keys = [
        "id", "type", "state", "trace_id", "attempts", "max_attempts", "idempotency_key",
        "created_at", "started_at", "finished_at", "worker_id", "cancel_requested", "error",
        "result", *(["damaged"] if job.damaged else []),
    ]  # fmt: skip
    return table(("field", "value"), [(k, data.get(k)) for k in keys])


def _one_job_id(positional: str | None, option: str | None) -> str:
    """The job id given as ``JOB_ID`` or as the seeds' ``--id JOB_ID`` (exactly one of them)."""
    from homeops.core.errors import UsageError

    if positional is not None and option is not None and positional != option:
        raise UsageError("give the job id once: as JOB_ID or as --id, not both")
    job_id = positional if positional is not None else option
    if job_id is None:
        raise UsageError("missing job id: give JOB_ID or --id JOB_ID")
    return job_id


@app.command("status")
def status(
    ctx: typer.Context,
    job_arg: str = typer.Argument(None, metavar="JOB_ID"),
    job_opt: str = typer.Option(None, "--id", metavar="JOB_ID", help="The seeds' form of JOB_ID."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show one job (``status JOB_ID`` or ``status --id JOB_ID``)."""
    with json_errors(as_json) as known:
        job_id = _one_job_id(job_arg, job_opt)
        known["id"] = job_id
        with _queue(ctx, job_id, readonly=True) as queue:
            job = queue.get(job_id)
    if as_json:
        print_json(job.to_dict())
    else:
        print_text(_describe(job))


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    job_arg: str = typer.Argument(None, metavar="JOB_ID"),
    job_opt: str = typer.Option(None, "--id", metavar="JOB_ID", help="The seeds' form of JOB_ID."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cancel a job: a queued one at once, a running one within a second (its worker stops it)."""
    with json_errors(as_json) as known:
        job_id = _one_job_id(job_arg, job_opt)
        known["id"] = job_id
        # Looked up read-only first: cancelling an unknown job must not create a missing store.
        with _queue(ctx, job_id, readonly=True) as reader:
            was_terminal = reader.get(job_id).state.terminal
        with _queue(ctx, job_id) as queue:
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


def _payload_bytes(value: str) -> bytes | str:
    """The text of ``--payload``: given inline, ``@path`` (a regular file) or ``-`` (stdin)."""
    import sys

    from homeops.core.config import read_small_file
    from homeops.core.errors import UsageError

    if value == "-":
        # Python sets sys.stdin to None when descriptor 0 is closed (`<&-`).
        if sys.stdin is None:
            raise UsageError("--payload -: stdin is closed")
        try:
            data = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"--payload -: cannot read stdin: {exc.strerror or exc}") from None
        if len(data) > MAX_PAYLOAD_BYTES:
            raise UsageError(f"--payload -: stdin is larger than {MAX_PAYLOAD_BYTES // 1024} KiB")
        return data
    if not value.startswith("@"):
        return value
    name = value[1:]
    if not name:
        raise UsageError("--payload @: a file name must follow '@' (or use - for stdin)")
    try:
        # The config reader's rules: regular files only (a FIFO is refused without waiting
        # for a writer), and bounded.
        return read_small_file(Path(name).expanduser(), MAX_PAYLOAD_BYTES)
    except OSError as exc:
        raise UsageError(f"--payload {value}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--payload {value}: cannot read: {exc}") from None


def _parse_payload(value: str) -> dict[str, Any]:
    """``--payload`` as a JSON object; refused like a config file: duplicate keys, NaN."""
    import json

    from homeops.core.config import loads_strict
    from homeops.core.errors import UsageError, json_type_name

    raw = _payload_bytes(value)
    where = "--payload" if raw is value else f"--payload {value}"
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = loads_strict(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise UsageError(f"{where}: not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: must be a JSON object, not {json_type_name(data)}")
    return data


def _job_types(ctx: typer.Context, wanted: str) -> dict[str, JobType[Any]]:
    """Registered job types to check ``wanted`` against (none if there is no registry).

    Types are named ``<domain>.<verb>``: that domain's factory alone is asked first, so a
    problem in another domain (its settings, an import) cannot stop this enqueue. Every
    domain is asked only when the type is not found there, to list them all in the error.
    """
    from homeops.core.cli.common import domain_context, registry_of

    registry = registry_of(ctx)
    dctx = domain_context(ctx)
    domain = wanted.split(".", 1)[0]
    if domain in registry.domains():
        found = registry.collect_job_types(dctx, [domain])
        if wanted in found:
            return found
    return registry.collect_job_types(dctx)


@app.command("enqueue")
def enqueue(
    ctx: typer.Context,
    job_type: str = typer.Argument(..., metavar="TYPE", help="e.g. core.artifacts-sweep"),
    payload: str = typer.Option(
        "{}",
        "--payload",
        metavar="JSON|@FILE|-",
        help="Job input object: inline JSON, @FILE to read a file, or - to read stdin.",
    ),
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
    """Queue a job; a worker serving its type runs it (see `homeops jobs worker`).

    The type must be registered and the payload must be what its model accepts: a job that
    no worker could ever run is refused here (exit 2) rather than failed later.
    """
    with json_errors(as_json) as known:
        known["type"] = job_type
        data = _parse_payload(payload)
        timeout_s = None if timeout is None else duration_flag("--timeout", timeout)
        job = enqueue_job(
            ctx,
            job_type,
            data,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
        )
    if as_json:
        print_json(job.to_dict())
    else:
        print_text(job.id)


def enqueue_job(
    ctx: typer.Context,
    job_type: str,
    data: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    timeout_s: float | None = None,
) -> Job:
    """Validate ``data`` against ``job_type``'s model and queue it in the configured store.

    Domain CLIs that build the payload from flags of their own (``win-automation jobs
    enqueue --type windows.exec --cmd …``) call this too, so both forms store the same.
    """
    from homeops.core.jobs.model import validate_idempotency_key
    from homeops.core.jobs.types import validate_enqueue

    if idempotency_key is not None:
        validate_idempotency_key(idempotency_key)  # every input checked before the store opens
    # Stored as the model dumps it (defaults filled in): what the worker parses is exactly
    # what was validated here.
    stored = validate_enqueue(_job_types(ctx, job_type), job_type, data)
    with _queue(ctx) as queue:
        attempts = max_attempts or load_core(ctx).settings.jobs.max_attempts
        return queue.enqueue(
            job_type,
            stored,
            idempotency_key=idempotency_key,
            max_attempts=attempts,
            timeout_s=timeout_s,
        )


@app.command("check")
def check(
    ctx: typer.Context,
    repair: bool = typer.Option(
        False, "--repair", help="Recount job counters that disagree with the rows."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check the store with SQLite's integrity_check, and its job counters (exit 0 ok, 1 not)."""
    from homeops.core.jobs.store import check_store_at, repair_store_at

    repaired: list[str] = []
    with json_errors(as_json) as known:
        path = load_core(ctx).settings.jobs_db
        known["path"] = str(path)
        found = check_store_at(path, max_errors=_CHECK_MAX_PROBLEMS)
        # Only counters are repaired: damaged pages need a backup, not a recount.
        if repair and found.repairable:
            repaired = repair_store_at(path)
            found = check_store_at(path, max_errors=_CHECK_MAX_PROBLEMS)
    if as_json:
        print_json(
            {
                "path": str(path),
                "exists": found.exists,
                "ok": found.ok,
                "problems": list(found.problems),
                # Only with --repair: the report without it keeps its shape.
                **({"repaired": repaired} if repair else {}),
            }
        )
    elif not found.exists:
        print_text(f"ok: {path} (not created yet)")
    elif found.ok:
        print_text(f"ok: {path}" + (f" (repaired {len(repaired)})" if repaired else ""))
    else:
        shown = found.problems[:_CHECK_SHOWN]
        verdict = "repairable (jobs check --repair)" if found.repairable else "corrupt"
        lines = [f"{verdict}: {path}", *(f"  {p}" for p in shown)]
        if len(found.problems) > len(shown):
            more = len(found.problems) - len(shown)
            lines.append(f"  ... {more} more (--json lists up to {_CHECK_MAX_PROBLEMS})")
        print_text("\n".join(lines))
    if not found.ok:
        raise typer.Exit(1)


@app.command("prune")
def prune(
    ctx: typer.Context,
    older_than: str = typer.Option(
        None,
        "--older-than",
        metavar="DURATION",
        help="Jobs that finished longer ago than this, e.g. 30d. Default: jobs.retention_days.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count them; delete nothing."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) past retention; never unfinished ones."""
    from homeops.core.durations import format_duration
    from homeops.core.jobs.retention import prune_finished_jobs

    with json_errors(as_json):
        age = None if older_than is None else duration_flag("--older-than", older_than)
        report = prune_finished_jobs(load_core(ctx).settings, older_than_s=age, dry_run=dry_run)
    if as_json:
        print_json(report.to_dict())
    elif report.older_than_s is None:
        print_text("retention is off (jobs.retention_days: never); nothing pruned")
    else:
        verb = "would prune" if dry_run else "pruned"
        since = format_duration(report.older_than_s)
        print_text(f"{verb} {report.removed} finished job(s) older than {since}")
