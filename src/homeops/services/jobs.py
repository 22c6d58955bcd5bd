"""The services job type on the core queue: ``services.backup``, one service into one repo.

``svc backup`` runs one such job per service in its own process (core/jobs/here.py), so every
backup is in the job store like any other job, with its artifacts; a daemon worker
(``homeops jobs worker``) runs the same handler for one enqueued by hand or by a timer.

Payload::

    {"repo": "local" | "remote", "service": "<name>", "dry_run": false,
     "retry_lock_s": null | seconds}

The handler marks the job unrepeatable just before restic starts: a backup interrupted from
there on (SIGINT/SIGTERM, a worker stopping) is failed, never handed back to run again later
behind the user's back. It is never retried either (``retryable=False``): the next timer run
is the retry, and a pre hook may not be safe to run twice.

Result of a succeeded job (what ``svc list`` reads for the last backup of a service in a
repository, without calling restic)::

    {
      "repo": "local",                  # the repository name, as in the payload
      "service": "app",
      "dry_run": false,                 # true: nothing was saved (snapshot_id is null)
      "state": "ok" | "partial",        # partial: saved, but something to look at: some
                                        #   sources were unreadable or missing, or forget
                                        #   failed (see warnings, unreadable, forget.error)
      "started_at": "2025-01-02T03:00:00.123Z",   # RFC 3339 UTC, of the backup run
      "finished_at": "2025-01-02T03:01:10.456Z",
      "utc_offsets_s": [3600, 3600],    # restic's zone at start and end (it buckets
                                        #   forget by it); null when TZ is set (unknown)
      "duration_s": 70.333,
      "snapshot_id": "1a2b3c4d",        # as restic printed it (0.14: the short id)
      "files": 1234,                    # restic's total_files_processed
      "bytes": 56789012,                # total_bytes_processed (the size of what was read)
      "data_added": 1024,               # bytes added to the repository
      "summary": {files_new, files_changed, files_unmodified, dirs_new, dirs_changed,
                  dirs_unmodified, data_blobs, tree_blobs, data_added,
                  total_files_processed, total_bytes_processed, total_duration},
      "tags": ["app", ...],             # the snapshot's tags: the service name first
      "paths": ["/srv/app", "/var/lib/docker/volumes/app_data/_data"],
      "volumes": {"app_data": "/var/lib/docker/volumes/app_data/_data"},
      "warnings": ["snapshot saved, but 1 source path(s) could not be read: ..."],
      "unreadable": ["/srv/app/secret"],
      "missing_sources": [],
      "stopped": false,                 # its containers were stopped for the snapshot
      "restic_version": "0.14.0",
      "hooks": {"pre": {"exit_code": 0, "duration_ms": 12.3, "error": null,
                        "stdout_dropped": 0, "stderr_dropped": 0},  # bytes cut (1 MiB kept)
                "post": {...}},         # only the hooks that ran
      "forget": {"ran": true, "dry_run": false, "kept": 10, "removed": 1,
                 "error": null,         # a failed forget: state partial, and a warning
                 "skipped": null}       # why it did not run: an empty policy, or
                                        #   "nothing to remove: ..." (the ledger proves it;
                                        #   services/retention.py)
    }

A failed job has no result (the core stores none for a failure): its state is ``failed``,
its ``error`` names every failed step (``pre hook failed (exit 1): ...; the containers of app
were NOT started again: ...``), its ``payload`` says which repository and service, and its
``finished_at`` when. So for ``svc list`` the state of a backup is ``failed`` (the job's
state), else the result's ``state``.

Artifacts: ``restic/summary.json`` (restic's own summary line), ``restic/forget.json``
(restic's forget groups) and ``restic/prune.txt`` when forget ran, ``restic/stderr.txt`` when
restic wrote to stderr (its errors, unreadable files), ``hooks/<pre|post>.stdout.txt`` and
``.stderr.txt`` when a hook printed anything (the last 1 MiB of each; when cut, a first line
says how many bytes were dropped). Kept for failed runs too.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from homeops.core.errors import HomeopsError
from homeops.services.settings import check_service_name

if TYPE_CHECKING:
    from homeops.core.jobs.types import JobType
    from homeops.core.jobs.worker import JobContext
    from homeops.core.registry import DomainContext
    from homeops.services.backup_flow import BackupRecord, StopRequest
    from homeops.services.settings import SvcSettings

BACKUP: Final = "services.backup"
# How many recorded backups (newest first) are read to account for a repository's snapshots.
LEDGER_WINDOW: Final = 5000


class BackupPayload(BaseModel):
    """``services.backup``: back one service up into one repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: Literal["local", "remote"] = Field(description="Repository: local or remote")
    service: Annotated[str, AfterValidator(check_service_name)] = Field(
        description="The service (its name in services.json)"
    )
    dry_run: bool = Field(default=False, description="restic backup --dry-run; no hooks")
    retry_lock_s: float | None = Field(
        default=None, ge=1, le=86400, description="Wait this long for a locked repository"
    )


@dataclass
class BackupWatch:
    """How ``svc backup`` follows the jobs it runs in its own process: its stop request
    (SIGINT/SIGTERM), a progress display, and each job's record and error by job id. A
    daemon worker's handler has none of these (an empty watch)."""

    stop: StopRequest | None = None
    on_progress: Callable[[str, float | None, str], None] | None = None
    systemd: bool | None = None
    records: dict[str, BackupRecord] = field(default_factory=dict)
    errors: dict[str, HomeopsError] = field(default_factory=dict)


async def _keep_artifacts(ctx: JobContext, record: BackupRecord) -> None:
    """The run's restic and hook output as the job's artifacts; a failure is only logged
    (the backup's own outcome is what counts)."""
    restic: dict[str, bytes] = {}
    if record.summary_line:
        try:
            summary = json.loads(record.summary_line)
        except ValueError:
            restic["restic/summary.json"] = record.summary_line.encode() + b"\n"
        else:
            restic["restic/summary.json"] = _json_bytes(summary)
    if record.restic_stderr.strip():
        restic["restic/stderr.txt"] = record.restic_stderr.encode()
    forget = record.forget
    if forget is not None and forget.ran and forget.groups is not None:
        restic["restic/forget.json"] = _json_bytes(forget.groups)
        if forget.prune_output:
            restic["restic/prune.txt"] = forget.prune_output.encode() + b"\n"
    hooks: dict[str, bytes] = {}
    for phase, hook in record.hooks.items():
        if hook.stdout:
            hooks[f"hooks/{phase}.stdout.txt"] = hook.stdout.encode()
        if hook.stderr:
            hooks[f"hooks/{phase}.stderr.txt"] = hook.stderr.encode()
    try:
        if restic:
            await ctx.artifacts.write_files(restic, type="restic")
        if hooks:
            await ctx.artifacts.write_files(hooks, type="hook")
    except (HomeopsError, OSError) as exc:
        ctx.log.warn("artifacts", "could not keep the backup's output", err=exc)


def _json_bytes(data: Any) -> bytes:  # noqa: ANN401 - restic's own JSON
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def ledger_reader(db: Path) -> Callable[[], list[dict[str, Any]]]:
    """The results of the succeeded backups in the job store at ``db`` (newest first, the
    last LEDGER_WINDOW): what tells the backup flow whether a forget would remove anything."""

    def read() -> list[dict[str, Any]]:
        from homeops.core.jobs.model import JobState
        from homeops.core.jobs.store import open_store_at

        queue = open_store_at(db, readonly=True)
        try:
            jobs = queue.list(state=JobState.SUCCEEDED, type=BACKUP, limit=LEDGER_WINDOW)
        finally:
            queue.close()
        return [job.result for job in jobs if isinstance(job.result, dict)]

    return read


def _backup_handler(
    settings: SvcSettings, watch: BackupWatch, ledger_db: Path | None
) -> Callable[[JobContext, BackupPayload], Awaitable[dict[str, Any]]]:
    async def run_backup_job(ctx: JobContext, payload: BackupPayload) -> dict[str, Any]:
        from homeops.services.backup_flow import BackupRecord, run_backup
        from homeops.services.repo import Repo

        repo = Repo.of(settings, payload.repo, retry_lock_s=payload.retry_lock_s)
        record = BackupRecord(payload.repo, payload.service, dry_run=payload.dry_run)
        watch.records[ctx.job.id] = record

        def progress(fraction: float | None, message: str) -> None:
            ctx.progress(fraction, message)
            if watch.on_progress is not None:
                watch.on_progress(payload.service, fraction, message)

        def restic_starts() -> None:
            # From here a second run would be a second backup behind the user's back.
            ctx.mark_unrepeatable("restic backup started")

        try:
            await run_backup(
                settings,
                repo,
                payload.service,
                dry_run=payload.dry_run,
                record=record,
                stop=watch.stop,
                on_progress=progress,
                on_restic_start=restic_starts,
                systemd=watch.systemd,
                ledger=None if ledger_db is None else ledger_reader(ledger_db),
            )
        except HomeopsError as exc:
            watch.errors[ctx.job.id] = exc
            raise
        finally:
            await _keep_artifacts(ctx, record)
        return record.result()

    return run_backup_job


def backup_job_type(
    settings: SvcSettings, watch: BackupWatch | None = None, *, ledger_db: Path | None = None
) -> JobType[Any]:
    """``services.backup`` on ``settings`` (``watch``: see :class:`BackupWatch`; ``ledger_db``:
    the job store whose recorded backups let a needless forget be skipped)."""
    from homeops.core.jobs.types import JobType
    from homeops.services.backup_flow import cleanup_s

    return JobType(
        BACKUP,
        BackupPayload,
        _backup_handler(settings, watch or BackupWatch(), ledger_db),
        retryable=False,
        description="Back one service up into one repository (svc backup)",
        unwind_s=cleanup_s(settings),
    )


def services_job_types(dctx: DomainContext) -> list[JobType[Any]]:
    """The domain's job types (for ``homeops jobs worker``)."""
    from homeops.services.restore_flow import restore_job_type

    settings: SvcSettings = dctx.settings("services")
    return [
        backup_job_type(settings, ledger_db=dctx.core.jobs_db),
        restore_job_type(settings, lock_dir=dctx.core.state_dir),
    ]
