"""``svc backup <local|remote> <svc|all>``: each service's backup as a job, run here.

Every service is one ``services.backup`` job (services/jobs.py) in the core's job store, run
in this process by the real worker (core/jobs/here.py), one after another in name order;
``all`` goes on past a failed service. Progress: a Rich bar per service on a terminal, a
line on stderr now and then otherwise, nothing with ``--json``.

SIGINT/SIGTERM stop cleanly: the running step (pre hook, stopping, restic, forget) is killed,
the containers are started again and the post hook runs (a second signal does not cut those
short: it is logged and ignored), the job is failed (never re-run later), the services not
reached yet are reported as ``skipped``, and the command exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import typer

from homeops.core.cli.common import JSON_HELP
from homeops.services.cli.common import REPO_HELP

if TYPE_CHECKING:
    from homeops.core.jobs.model import Job
    from homeops.core.settings import CoreSettings
    from homeops.services.jobs import BackupWatch
    from homeops.services.render import Renderer
    from homeops.services.settings import SvcSettings

ALL: Final = "all"
_EXIT_SIGNALLED: Final = {"SIGINT": 130, "SIGTERM": 143}
# The worker's own error text starts with the exception's class name; the watch normally
# has the exception itself, this is for a failure the handler never saw (a stopped worker).
_CLASS_PREFIX: Final = re.compile(r"^[A-Z][A-Za-z]*: ")


def register(app: typer.Typer) -> None:
    """Add ``backup``."""
    app.command("backup")(backup_command)


def backup_command(
    ctx: typer.Context,
    repo: str = typer.Argument(..., metavar="local|remote", help=REPO_HELP),
    service: str = typer.Argument(
        ..., metavar="SVC|all", help="Service, or all: every service with backup.enable."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Only show what would be saved and forgotten: no hooks."
    ),
    retry_lock: str = typer.Option(
        None, "--retry-lock", metavar="DURATION", help="Wait this long for a locked repository."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Back services up: pre hook, restic backup of paths and volumes, post hook, forget.

    Each service is a services.backup job in the job store with its artifacts. Exit 0 when
    every backup saved its snapshot (a partial one, with unreadable files, warns), 1 when
    one failed (with one service: that failure's own code), 130/143 after SIGINT/SIGTERM.
    """
    from homeops.core.cli.common import duration_flag, json_errors, load_core
    from homeops.services.cli.common import config_source, env_sources, run_async, svc_settings
    from homeops.services.render import renderer_for
    from homeops.services.repo import Repo, repo_name

    out = renderer_for(as_json)
    with json_errors(as_json) as known:
        known.update(repo=repo, service=service)
        settings = svc_settings(ctx)
        chosen = repo_name(repo)
        names = _chosen_services(settings, service)
        wait = None if retry_lock is None else duration_flag("--retry-lock", retry_lock)
        # Refuse an unconfigured repository (or a password file that is a FIFO ...) here
        # (exit 2), not once per job.
        Repo.of(
            settings,
            chosen,
            source=config_source(ctx),
            sources=env_sources(ctx),
            retry_lock_s=wait,
        ).check_files()
        core = load_core(ctx).settings
        try:
            rows, interrupted = run_async(
                _run(core, settings, chosen, names, dry_run=dry_run, wait=wait, out=out)
            )
        finally:
            out.close()
    code = _report(out, rows, repo=chosen, dry_run=dry_run, interrupted=interrupted, every=service)
    if code:
        raise typer.Exit(code)


def _chosen_services(settings: SvcSettings, service: str) -> list[str]:
    from homeops.core.errors import UsageError

    if service == ALL:
        return sorted(name for name, s in settings.services.items() if s.backup.enable)
    if service not in settings.services:
        known = ", ".join(sorted(settings.services)) or "none"
        raise UsageError(f"no service {service!r} in the config (known: {known})")
    if not settings.services[service].backup.enable:
        raise UsageError(f"{service}: backup is not enabled (backup.enable)")
    return [service]


@dataclass(frozen=True)
class _Row:
    service: str
    state: str  # ok, partial, failed, cancelled, skipped
    job_id: str | None = None
    error: str | None = None
    exit_code: int = 0
    result: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.result or {"service": self.service})
        data.update(
            service=self.service,
            state=self.state,
            job_id=self.job_id,
            error=self.error,
            exit_code=self.exit_code,
        )
        return data


async def _run(
    core: CoreSettings,
    settings: SvcSettings,
    repo: str,
    names: list[str],
    *,
    dry_run: bool,
    wait: float | None,
    out: Renderer,
) -> tuple[list[_Row], str | None]:
    import asyncio
    import signal

    from homeops.core.artifacts import ArtifactStore
    from homeops.core.cli.signals import install, log_signal
    from homeops.core.jobs.here import run_here
    from homeops.core.jobs.store import open_worker_queue
    from homeops.services import backup_flow
    from homeops.services.jobs import BACKUP, BackupWatch, backup_job_type

    stop = backup_flow.StopRequest()
    stopping = asyncio.Event()
    watch = BackupWatch(stop=stop, on_progress=out.progress)
    job_types = {BACKUP: backup_job_type(settings, watch, ledger_db=core.jobs_db)}
    # The handler ends the run itself on a stop request; the worker's grace period only has
    # to outlast the clean-up steps (containers, post hook, unlock).
    grace = backup_flow.cleanup_s(settings)

    def on_signal(signum: int) -> None:
        if stop.requested:
            log_signal(signum, "already stopping: containers and post hook are finished first")
            return
        log_signal(signum, "stopping the backup")
        stop.request(signal.Signals(signum).name)
        stopping.set()

    remove = install(on_signal)
    queue = None
    rows: list[_Row] = []
    try:
        queue = await asyncio.to_thread(open_worker_queue, core)
        store = ArtifactStore(core.artifacts_root)
        for name in names:
            if stop.requested:
                rows.append(_Row(name, "skipped", error=f"not started: {stop.reason}"))
                continue
            payload = {"repo": repo, "service": name, "dry_run": dry_run, "retry_lock_s": wait}
            [job] = await run_here(
                queue,
                job_types,
                [(BACKUP, payload)],
                artifacts=store,
                stop=stopping,
                lease_s=core.jobs.lease,
                poll_interval=core.jobs.poll_interval,
                grace_s=grace,
            )
            if not job.state.terminal:
                # Stopped before the worker took it: it must not wait for another worker.
                job = await asyncio.to_thread(queue.cancel, job.id)
            row = _row(name, job, watch)
            rows.append(row)
            out.finish(name, _short(row))
    finally:
        remove()
        if queue is not None:
            queue.close()
    return rows, stop.reason


def _row(name: str, job: Job, watch: BackupWatch) -> _Row:
    from homeops.core.jobs.model import JobState

    record = watch.records.get(job.id)
    match job.state:
        case JobState.SUCCEEDED:
            result = job.result if isinstance(job.result, dict) else None
            state = str(result.get("state")) if result else "ok"
            return _Row(name, state, job.id, result=result)
        case JobState.CANCELLED:
            return _Row(name, "cancelled", job.id, error="stopped before it started", exit_code=1)
        case _:
            exc = watch.errors.get(job.id)
            error = str(exc) if exc is not None else _CLASS_PREFIX.sub("", job.error or "failed")
            code = int(exc.exit_code) if exc is not None else 1
            result = record.result() if record is not None else None
            return _Row(name, "failed", job.id, error=error, exit_code=code, result=result)


def _short(row: _Row) -> str:
    result = row.result or {}
    if row.state in ("ok", "partial"):
        snapshot = result.get("snapshot_id") or ("dry run" if result.get("dry_run") else "-")
        return f"{row.state} snapshot {snapshot}"
    return row.state


def _report(
    out: Renderer,
    rows: list[_Row],
    *,
    repo: str,
    dry_run: bool,
    interrupted: str | None,
    every: str,
) -> int:
    """Print the outcome (warnings and errors on stderr); the exit code."""
    from homeops.core.cli.common import report_error
    from homeops.services.backup_flow import human_bytes
    from homeops.services.render import text_table

    failed = [row for row in rows if row.state not in ("ok", "partial")]
    data = {
        "ok": not failed,
        "repo": repo,
        "dry_run": dry_run,
        "interrupted": interrupted,
        "services": [row.as_json() for row in rows],
    }

    def text() -> str:
        if not rows:
            return f"no service has backup.enable; nothing backed up to {repo}"
        table = []
        for row in rows:
            result = row.result or {}
            table.append(
                (
                    row.service,
                    row.state,
                    result.get("snapshot_id"),
                    result.get("files"),
                    human_bytes(result.get("bytes")) if result.get("bytes") is not None else None,
                    (
                        human_bytes(result.get("data_added"))
                        if result.get("data_added") is not None
                        else None
                    ),
                    f"{result['duration_s']:.1f}s" if result.get("duration_s") else None,
                    row.job_id,
                )
            )
        headers = ("service", "state", "snapshot", "files", "size", "added", "took", "job")
        return text_table(headers, table)

    out.result(data, text)
    for row in rows:
        for warning in (row.result or {}).get("warnings") or ():
            report_error(f"{row.service}: {warning}", prefix="warning: ")
        if row.error is not None:
            report_error(f"{row.service}: {row.error}")
    if interrupted is not None:
        return _EXIT_SIGNALLED.get(interrupted, 1)
    if not failed:
        return 0
    if every != ALL and len(rows) == 1:
        return failed[0].exit_code or 1  # one service: its failure's own code (3: no docker)
    return 1
