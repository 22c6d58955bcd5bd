"""One service's backup into one repository (seed 002's ``svc backup``), step by step.

1. Prepare (nothing runs yet): the restic version, the mountpoints of ``backup.volumes``
   (``docker volume inspect``), the argv. A failure here runs no hook.
2. ``pre`` hook (``tools.bash -c``, within ``hook_timeout``). Failing: no backup, nothing
   stopped.
3. With ``backup.stop``: the service's running containers (through systemd: its unit) are
   stopped (:func:`units.pause`).
4. ``restic backup --json`` of the paths and the volume mountpoints, tagged with the service
   name and ``backup.tags``, with ``backup.exclude``; its status lines are progress.
5. The containers are started again in a ``finally`` right after restic, whatever happened
   (restic failed, SIGINT/SIGTERM, the handler cancelled); a restic we killed (interrupted,
   cancelled, or past ``restic_timeout``) has its stale lock removed (``restic unlock``:
   0.14 leaves it behind on SIGTERM).
6. ``post`` hook: always, once the run got past step 1 (also when ``pre`` failed, so that
   it can undo what ``pre`` did); ``$SVC_BACKUP_STATE`` tells it how things went.
7. ``forget --prune`` per ``backup.policy``, grouped by tags, of this service's tag only,
   when the snapshot was saved (no other service carries this one's name as a tag: the
   settings refuse that). Skipped when the policy keeps nothing (restic would refuse), or
   when the job ledger proves it would remove nothing
   (services/retention.py: a restic process costs its key derivation and the lock). A
   failed forget makes the run ``partial`` with a warning: the snapshot is good, but
   retention did not run. A forget we killed (stop request, cancellation,
   ``restic_timeout``) has its exclusive lock removed (``restic unlock``).

``--dry-run``: no hooks, nothing stopped, ``backup --dry-run`` and ``forget --dry-run``.

Outcome: restic's exit 3 (unreadable files), missing source paths and a failed forget are
``partial``: the snapshot was saved, the warnings say what to look at. A failure of any step
(pre, stop, restic, starting the containers again, post) raises :class:`BackupFailed` naming
every failed step, after all the clean-up steps ran. A stop request (:class:`StopRequest`,
set by the CLI on SIGINT/SIGTERM) kills the step running (pre hook, stop, restic, forget)
and goes on with the clean-up steps, which are never cut short: not by a stop request, not
by cancellation (a cancelled run finishes them, then raises ``CancelledError``).

Hook environment: the caller's, plus ``SVC_SERVICE``, ``SVC_REPO`` (local/remote),
``SVC_HOOK`` (pre/post), and for post ``SVC_BACKUP_STATE`` (ok, partial, failed,
interrupted; forget runs after it, so a forget failure is not in it) and ``SVC_SNAPSHOT_ID``
(empty when none). Hooks run in the service's directory (the compose file's) when it exists.
Of each hook stream only the last HOOK_OUTPUT_KEEP bytes are kept (memory, result, artifacts).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from homeops.core.errors import (
    DependencyUnavailable,
    ExitCode,
    HomeopsError,
    HomeopsTimeout,
    OperationalError,
)
from homeops.core.logging import format_ts, get_logger
from homeops.services import restic as r
from homeops.services import retention, units
from homeops.services.stop import StopRequest as StopRequest  # re-exported
from homeops.services.stop import guard

if TYPE_CHECKING:
    from homeops.core.process import ProcessResult
    from homeops.services.repo import Repo
    from homeops.services.settings import Backup, SvcSettings

T = TypeVar("T")
# The results of the succeeded services.backup jobs (read in a thread).
Ledger = Callable[[], Sequence[Mapping[str, Any]]]

# restic prints a status line 60 times a second with --json; the process seam keeps all of
# stdout, so a night-long backup would hold ~100 MB of them. A few a second is plenty.
PROGRESS_FPS: Final = "4"
UNLOCK_TIMEOUT_S: Final = 120.0


def cleanup_s(settings: SvcSettings) -> float:
    """How long a stopped backup may take to clean up: its containers started again, the
    post hook, a stale lock removed (a worker's grace period and unwind time)."""
    return settings.hook_timeout + units.ACTION_TIMEOUT_S + UNLOCK_TIMEOUT_S + 60


# How much of each hook stream is kept (in memory, the job's artifacts and the result): the
# tail, where a failing hook says why. The process seam has no output cap, so a hook writes
# to files and only their tails are read back.
HOOK_OUTPUT_KEEP: Final = 1 << 20
_OUTPUT_TAIL: Final = 3
_SUMMARY_FIELDS: Final = (
    "files_new",
    "files_changed",
    "files_unmodified",
    "dirs_new",
    "dirs_changed",
    "dirs_unmodified",
    "data_blobs",
    "tree_blobs",
    "data_added",
    "total_files_processed",
    "total_bytes_processed",
    "total_duration",
)

# How failed steps are listed: the service left down matters most, then the run's own
# failure, then the post hook.
_STEP_ORDER: Final = ("start", "prepare", "pre", "stop", "restic", "post")

_log = get_logger("services.backup")

ProgressCallback = Callable[[float | None, str], None]


class BackupState(StrEnum):
    """How a backup ended (``failed`` is the job's own state; see services/jobs.py)."""

    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"


class BackupFailed(OperationalError):
    """A backup failed; the message names each failed step. Never retried by the worker:
    the next timer run is the retry (a hook may not be safe to run twice)."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        exit_code: ExitCode = ExitCode.FAILURE,
        interrupted: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.interrupted = interrupted


class Interrupted(OperationalError):
    """A step was stopped by a stop request (SIGINT/SIGTERM)."""

    def __init__(self, step: str, reason: str, *, note: str = "") -> None:
        super().__init__(f"{step} interrupted by {reason}" + (f" ({note})" if note else ""))
        self.step = step
        self.reason = reason


@dataclass
class HookRun:
    """One hook's run."""

    phase: str
    exit_code: int | None = None
    duration_ms: float = 0.0
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    stdout_dropped: int = 0  # bytes cut from the start of the output (HOOK_OUTPUT_KEEP)
    stderr_dropped: int = 0

    def as_json(self) -> dict[str, Any]:
        """The hook in the job result (output goes to the artifacts)."""
        return {
            "exit_code": self.exit_code,
            "duration_ms": round(self.duration_ms, 1),
            "error": self.error,
            "stdout_dropped": self.stdout_dropped,
            "stderr_dropped": self.stderr_dropped,
        }


@dataclass
class ForgetRun:
    """What ``forget --prune`` did (or why it did not run)."""

    ran: bool = False
    dry_run: bool = False
    kept: int = 0
    removed: int = 0
    groups: Any = None  # restic's own JSON document
    prune_output: str = ""
    error: str | None = None
    skipped: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The forget step in the job result."""
        return {
            "ran": self.ran,
            "dry_run": self.dry_run,
            "kept": self.kept,
            "removed": self.removed,
            "error": self.error,
            "skipped": self.skipped,
        }


@dataclass
class BackupRecord:
    """Everything one run did, filled in as it goes (also when it fails part-way), so the
    job can keep it as its result and artifacts. :meth:`result` is the job result."""

    repo: str
    service: str
    dry_run: bool = False
    tags: tuple[str, ...] = ()
    paths: list[str] = field(default_factory=list)
    volumes: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    # restic's UTC offsets at started_at and finished_at (None: its zone is not known here).
    utc_offsets: list[int] | None = None
    restic_version: str | None = None
    state: BackupState | None = None
    snapshot_id: str | None = None
    summary: r.BackupSummary | None = None
    summary_line: str | None = None  # restic's own JSON summary line
    restic_started: bool = False
    restic_exit: int | None = None
    restic_stderr: str = ""
    warnings: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    missing_sources: list[str] = field(default_factory=list)
    stopped: bool = False
    restarted: bool | None = None
    hooks: dict[str, HookRun] = field(default_factory=dict)
    forget: ForgetRun | None = None
    error: str | None = None
    interrupted: str | None = None

    def result(self) -> dict[str, Any]:
        """The ``services.backup`` job result (schema in services/jobs.py)."""
        summary = self.summary
        started, finished = self.started_at, self.finished_at
        return {
            "repo": self.repo,
            "service": self.service,
            "dry_run": self.dry_run,
            "state": str(self.state) if self.state is not None else None,
            "started_at": format_ts(started) if started is not None else None,
            "finished_at": format_ts(finished) if finished is not None else None,
            "utc_offsets_s": self.utc_offsets,
            "duration_s": (
                round(finished - started, 3) if started is not None and finished else None
            ),
            "snapshot_id": self.snapshot_id,
            "files": summary.total_files_processed if summary else None,
            "bytes": summary.total_bytes_processed if summary else None,
            "data_added": summary.data_added if summary else None,
            "summary": (
                {name: getattr(summary, name) for name in _SUMMARY_FIELDS} if summary else None
            ),
            "tags": list(self.tags),
            "paths": list(self.paths),
            "volumes": dict(self.volumes),
            "warnings": list(self.warnings),
            "unreadable": list(self.unreadable),
            "missing_sources": list(self.missing_sources),
            "stopped": self.stopped,
            "restic_version": self.restic_version,
            "hooks": {phase: hook.as_json() for phase, hook in self.hooks.items()},
            "forget": self.forget.as_json() if self.forget is not None else None,
        }


def human_bytes(n: float | None) -> str:
    """``1.5 MiB``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progress_message(status: r.BackupStatus) -> str:
    """A status line for people: files, bytes, time left."""
    if status.total_files or status.total_bytes:
        text = (
            f"{status.files_done}/{status.total_files} files, "
            f"{human_bytes(status.bytes_done)}/{human_bytes(status.total_bytes)}"
        )
    else:  # still scanning: the totals are not known yet
        text = f"{status.files_done} files, {human_bytes(status.bytes_done)}"
    if status.seconds_remaining is not None:
        text += f", {status.seconds_remaining}s left"
    return text


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-_OUTPUT_TAIL:])


async def _guard(awaitable: Awaitable[T], stop: StopRequest | None, step: str) -> T:
    """Await ``awaitable``; a stop request cancels it and raises :class:`Interrupted`."""
    return await guard(awaitable, stop, lambda reason: Interrupted(step, reason))


class _Cleanup:
    """Runs clean-up steps to their end: a cancellation arriving meanwhile is remembered
    (``cancelled``) and re-raised by the flow once every clean-up step ran."""

    def __init__(self) -> None:
        self.cancelled = False

    async def run(self, awaitable: Awaitable[T]) -> T:
        task = asyncio.ensure_future(awaitable)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise  # the step itself was cancelled (the loop is shutting down)
                self.cancelled = True
                _log.warn("cleanup", "cancelled during clean-up; finishing it first")


def _hook_env(service: str, repo: str, phase: str, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SVC_SERVICE=service, SVC_REPO=repo, SVC_HOOK=phase, **extra)
    return env


async def _hook(
    settings: SvcSettings,
    record: BackupRecord,
    phase: str,
    script: str,
    extra_env: dict[str, str] | None = None,
) -> None:
    """Run one hook; :class:`OperationalError` (or a timeout, exit 4) when it fails."""
    run = record.hooks[phase] = HookRun(phase)
    directory = Path(settings.compose_file(record.service)).parent
    started = time.monotonic()
    _log.info("hook", f"running the {phase} hook", service=record.service)
    try:
        cwd = str(directory) if directory.is_dir() else None
        done = await _run_hook(settings, record, phase, script, extra_env, cwd)
    finally:
        run.duration_ms = (time.monotonic() - started) * 1000
    _keep_output(run, done, record.service)
    run.exit_code = done.returncode
    if not done.ok:
        said = _tail(_last_lines(run.stderr)) or _tail(_last_lines(run.stdout))
        run.error = f"{phase} hook failed (exit {done.returncode})" + (f": {said}" if said else "")
        raise OperationalError(run.error)


async def _run_hook(
    settings: SvcSettings,
    record: BackupRecord,
    phase: str,
    script: str,
    extra_env: dict[str, str] | None,
    cwd: str | None,
) -> ProcessResult:
    from homeops.core import process

    run = record.hooks[phase]
    try:
        # Of each stream only the tail is kept: a hook that prints without end costs
        # bounded memory and no disk.
        return await process.run(
            [settings.tools.bash, "-c", script],
            timeout=settings.hook_timeout,
            env=_hook_env(record.service, record.repo, phase, extra_env or {}),
            cwd=cwd,
            keep=HOOK_OUTPUT_KEEP,
        )
    except HomeopsTimeout as exc:
        run.error = f"{phase} hook timed out after {settings.hook_timeout:g}s (killed)"
        if isinstance(exc, process.ProcessTimedOut):
            _keep_output(run, process.decoded(exc.partial), record.service)
        raise HomeopsTimeout(run.error) from exc
    except asyncio.CancelledError:
        run.error = "interrupted"
        raise
    except DependencyUnavailable as exc:  # tools.bash is missing
        run.error = f"{phase} hook could not run: {exc}"
        raise DependencyUnavailable(run.error) from exc
    except HomeopsError as exc:
        run.error = f"{phase} hook could not run: {exc}"
        raise OperationalError(run.error) from exc


def _keep_output(run: HookRun, done: ProcessResult, service: str) -> None:
    """A hook's output (the tail of each stream) into its record."""
    run.stdout_dropped, run.stderr_dropped = done.stdout_dropped, done.stderr_dropped
    run.stdout = _hook_text(done.stdout, done.stdout_dropped, run.phase, "stdout", service)
    run.stderr = _hook_text(done.stderr, done.stderr_dropped, run.phase, "stderr", service)


def _hook_text(text: str, dropped: int, phase: str, stream: str, service: str) -> str:
    """What a hook wrote to ``stream`` (its last HOOK_OUTPUT_KEEP bytes), with a first line
    saying how much was cut when something was."""
    if not dropped:
        return text
    _log.warn(
        "hook",
        f"the {phase} hook's {stream} was cut to its last {HOOK_OUTPUT_KEEP} bytes",
        service=service,
        dropped_bytes=dropped,
    )
    note = (
        f"[svc: output cut: the first {dropped} bytes were dropped, "
        f"the last {HOOK_OUTPUT_KEEP} bytes follow]\n"
    )
    return note + text


def _last_lines(text: str) -> str:
    # Only the end matters for the message: do not split a whole MiB into lines.
    return text[-4096:]


@dataclass
class _Failures:
    """The failed steps of one run, reported in a fixed order."""

    by_step: dict[str, HomeopsError] = field(default_factory=dict)

    def add(self, step: str, exc: HomeopsError) -> None:
        self.by_step.setdefault(step, exc)

    def error(self, interrupted: str | None) -> BackupFailed | None:
        found = [(s, self.by_step[s]) for s in _STEP_ORDER if s in self.by_step]
        if not found:
            return None
        message = "; ".join(str(exc) for _, exc in found)
        return BackupFailed(message, exit_code=found[0][1].exit_code, interrupted=interrupted)


def _progress_sink(
    record: BackupRecord, on_progress: ProgressCallback | None
) -> Callable[[str], None]:
    broken: list[bool] = []

    def on_line(line: str) -> None:
        event = r.parse_backup_line(line)
        if isinstance(event, r.BackupSummary):
            record.summary_line = line.strip()
        elif isinstance(event, r.BackupStatus) and on_progress is not None and not broken:
            fraction = min(max(event.percent_done, 0.0), 1.0)
            try:
                on_progress(fraction, progress_message(event))
            except Exception as exc:
                # A display that fails must not fail the backup (nor the stream it reads).
                broken.append(True)
                _log.warn("progress", "progress display failed; not shown any more", err=exc)

    return on_line


async def run_backup(
    settings: SvcSettings,
    repo: Repo,
    service: str,
    *,
    dry_run: bool = False,
    record: BackupRecord | None = None,
    stop: StopRequest | None = None,
    on_progress: ProgressCallback | None = None,
    on_restic_start: Callable[[], None] | None = None,
    systemd: bool | None = None,
    ledger: Ledger | None = None,
    clock: Callable[[], float] = time.time,
) -> BackupRecord:
    """Back ``service`` up into ``repo`` (the steps in the module docstring).

    ``record`` (filled in as the run goes) is returned; :class:`BackupFailed` when a step
    failed. ``on_restic_start`` is called just before restic starts (the job marks itself
    unrepeatable there). ``systemd`` (default: ``settings.systemd``) decides how
    ``backup.stop`` stops the service. ``ledger`` returns the results of the succeeded backup
    jobs; with it, a forget that provably removes nothing is skipped (services/retention.py).
    """
    from homeops.core.errors import UsageError

    if record is None:
        record = BackupRecord(repo.name, service, dry_run=dry_run)
    config = settings.services.get(service)
    if config is None:
        raise UsageError(f"no service {service!r} in the config")
    backup = config.backup
    if not backup.enable:
        raise UsageError(f"{service}: backup is not enabled (backup.enable)")
    record.started_at = clock()
    failures = _Failures()
    cleanup = _Cleanup()
    use_systemd = units.systemd_wanted(settings) if systemd is None else systemd
    _log.info("start", "backup started", service=service, repo=repo.name, dry_run=dry_run)
    try:
        try:
            argv, restic = await _prepare(settings, repo, service, backup, record, stop)
        except HomeopsError as exc:
            failures.add("prepare", exc)
        else:
            await _run_steps(
                settings,
                repo,
                restic,
                argv,
                record,
                failures,
                cleanup,
                stop=stop,
                on_progress=on_progress,
                on_restic_start=on_restic_start,
                systemd=use_systemd,
                ledger=ledger,
            )
    finally:
        record.finished_at = clock()
        record.utc_offsets = retention.utc_offsets(
            repo.environ, record.started_at, record.finished_at
        )
        if stop is not None and stop.requested and record.interrupted is None:
            record.interrupted = stop.reason
    error = failures.error(record.interrupted)
    if error is not None:
        record.state = BackupState.FAILED
        record.error = str(error)
        _log.error("done", "backup failed", service=service, repo=repo.name, err=error)
        raise error
    if cleanup.cancelled:
        raise asyncio.CancelledError
    _log.info(
        "done",
        "backup finished",
        service=service,
        repo=repo.name,
        state=str(record.state),
        snapshot=record.snapshot_id,
    )
    return record


async def _prepare(
    settings: SvcSettings,
    repo: Repo,
    service: str,
    backup: Backup,
    record: BackupRecord,
    stop: StopRequest | None,
) -> tuple[list[str], r.Restic]:
    restic = await _guard(repo.restic(), stop, "restic version")
    record.restic_version = str(restic.version) if restic.version is not None else None
    mounts = await _guard(units.volume_mountpoints(settings, backup.volumes), stop, "volumes")
    record.volumes = mounts
    record.paths = [*(str(p) for p in backup.paths), *mounts.values()]
    record.tags = r.service_tags(service, backup.tags)
    argv = r.backup_argv(
        restic,
        record.paths,
        service=service,
        tags=backup.tags,
        excludes=backup.exclude,
        dry_run=record.dry_run,
    )
    return argv, restic


async def _run_steps(
    settings: SvcSettings,
    repo: Repo,
    restic: r.Restic,
    argv: list[str],
    record: BackupRecord,
    failures: _Failures,
    cleanup: _Cleanup,
    *,
    stop: StopRequest | None,
    on_progress: ProgressCallback | None,
    on_restic_start: Callable[[], None] | None,
    systemd: bool,
    ledger: Ledger | None,
) -> None:
    backup = settings.services[record.service].backup
    hooks = not record.dry_run
    try:
        if hooks and backup.pre:
            try:
                await _guard(_hook(settings, record, "pre", backup.pre), stop, "pre hook")
            except HomeopsError as exc:
                failures.add("pre", exc)
                return
        await _snapshot(
            settings,
            repo,
            restic,
            argv,
            record,
            failures,
            cleanup,
            stop=stop,
            on_progress=on_progress,
            on_restic_start=on_restic_start,
            systemd=systemd,
        )
    finally:
        if hooks and backup.post:
            state = _post_state(record, failures, stop)
            extra = {"SVC_BACKUP_STATE": state, "SVC_SNAPSHOT_ID": record.snapshot_id or ""}
            try:
                await cleanup.run(_hook(settings, record, "post", backup.post, extra))
            except HomeopsError as exc:
                failures.add("post", exc)
    if record.state in (BackupState.OK, BackupState.PARTIAL):
        record.forget = await _forget(settings, repo, restic, record, stop, cleanup, ledger)
        if record.forget.error is not None:
            # The snapshot is good, but retention did not run: partial, so that `svc list`
            # shows it (a warning alone would let retention stop silently for good).
            record.state = BackupState.PARTIAL
            record.warnings.append(
                f"forget failed, old snapshots were not removed: {record.forget.error}"
            )


def _post_state(record: BackupRecord, failures: _Failures, stop: StopRequest | None) -> str:
    stopped = record.interrupted is not None or (stop is not None and stop.requested)
    if stopped and record.state is None:
        return "interrupted"
    if failures.by_step or record.state is None:
        return "failed"
    return str(record.state)


async def _snapshot(
    settings: SvcSettings,
    repo: Repo,
    restic: r.Restic,
    argv: list[str],
    record: BackupRecord,
    failures: _Failures,
    cleanup: _Cleanup,
    *,
    stop: StopRequest | None,
    on_progress: ProgressCallback | None,
    on_restic_start: Callable[[], None] | None,
    systemd: bool,
) -> None:
    backup = settings.services[record.service].backup
    paused: units.Paused | None = None
    killed = False
    try:
        if backup.stop and not record.dry_run:
            try:
                plan = await _guard(
                    units.pause_plan(settings, record.service, systemd=systemd), stop, "stopping"
                )
                # From here on the finally below starts the service again, whatever happens
                # (stopping may fail or be interrupted half-way).
                paused = plan
                if plan is not None:
                    record.stopped = True
                    await _guard(units.pause(settings, plan), stop, "stopping")
            except HomeopsError as exc:
                failures.add("stop", exc)
                return
        if on_restic_start is not None:
            on_restic_start()
        record.restic_started = True
        # Fewer status lines than restic's default 60 a second (a user's own value wins).
        runner = repo
        if "RESTIC_PROGRESS_FPS" not in repo.environ:
            from dataclasses import replace

            runner = replace(repo, environ={**repo.environ, "RESTIC_PROGRESS_FPS": PROGRESS_FPS})
        try:
            done, verdict = await _guard(
                runner.run(argv, on_stdout_line=_progress_sink(record, on_progress)),
                stop,
                "restic backup",
            )
        except Interrupted:
            killed = True
            raise
        except HomeopsTimeout as exc:
            # Killed by us after restic_timeout: 0.14 leaves its lock behind on SIGTERM.
            killed = True
            failures.add("restic", HomeopsTimeout(f"restic backup: {exc}"))
            return
        except asyncio.CancelledError:
            killed = True
            record.interrupted = record.interrupted or "cancellation"
            raise
        _read_backup(record, done.stdout, done.stderr, done.returncode, verdict)
        error = verdict.error()
        if error is not None:
            failures.add("restic", type(error)(f"restic backup: {error}"))
    except Interrupted as exc:
        failures.add("restic", Interrupted(exc.step, exc.reason, note="no snapshot was saved"))
    finally:
        if paused is not None:
            try:
                await cleanup.run(units.resume(settings, paused))
                record.restarted = True
            except HomeopsError as exc:
                record.restarted = False
                failures.add(
                    "start",
                    OperationalError(
                        f"the containers of {record.service} were NOT started again: {exc}"
                    ),
                )
        if killed:
            await cleanup.run(_unlock(repo, restic))


def _read_backup(
    record: BackupRecord, stdout: str, stderr: str, code: int, verdict: r.ResticVerdict
) -> None:
    report = r.parse_backup_output(stdout, stderr)
    record.restic_exit = code
    record.restic_stderr = stderr
    record.summary = report.summary
    # 0.14 names a snapshot even for --dry-run, which saves none.
    saved = report.summary is not None and not (record.dry_run or report.summary.dry_run)
    record.snapshot_id = report.summary.snapshot_id if saved and report.summary else None
    record.unreadable = list(verdict.unreadable)
    record.missing_sources = list(verdict.missing_sources)
    match verdict.outcome:
        case r.ResticOutcome.OK:
            record.state = BackupState.OK
        case r.ResticOutcome.PARTIAL:
            record.state = BackupState.PARTIAL
            record.warnings.append(verdict.message + (f" ({verdict.fix})" if verdict.fix else ""))
        case _:
            return
    if report.summary is None:
        record.warnings.append("restic printed no summary line")


async def _unlock(repo: Repo, restic: r.Restic) -> None:
    """Remove the stale lock a restic we killed left (interrupted, cancelled or timed out;
    plain ``restic unlock``: only stale locks, never a live run's); a failure is logged,
    the user is told how in the restic error anyway."""
    try:
        _done, verdict = await repo.run(r.unlock_argv(restic), timeout=UNLOCK_TIMEOUT_S)
    except HomeopsError as exc:
        _log.warn("unlock", "could not remove the interrupted run's lock", err=exc)
        return
    if verdict.error() is not None:
        _log.warn("unlock", "could not remove the interrupted run's lock", err=verdict.message)
    else:
        _log.info("unlock", "removed stale locks after the interrupted restic run")


async def _forget(
    settings: SvcSettings,
    repo: Repo,
    restic: r.Restic,
    record: BackupRecord,
    stop: StopRequest | None,
    cleanup: _Cleanup,
    ledger: Ledger | None,
) -> ForgetRun:
    service = record.service
    policy = settings.services[service].backup.policy
    keep = r.KeepPolicy(policy.daily, policy.weekly, policy.monthly)
    run = ForgetRun(dry_run=record.dry_run)
    if keep.empty:
        run.skipped = "the policy keeps nothing (restic refuses an empty policy)"
        return run
    if ledger is not None and not record.dry_run:
        needless = await _needless_forget(repo, record, keep, ledger)
        if needless is not None:
            run.skipped = needless
            _log.debug("forget", "forget skipped", service=service, repo=repo.name, why=needless)
            return run
    argv = r.forget_argv(restic, tag=service, policy=keep, dry_run=record.dry_run)
    run.ran = True
    started: list[bool] = []

    async def forget() -> tuple[ProcessResult, r.ResticVerdict]:
        started.append(True)
        return await repo.run(argv)

    try:
        done, verdict = await _guard(forget(), stop, "restic forget")
    except (Interrupted, HomeopsTimeout) as exc:
        # forget --prune holds an exclusive lock; killed (0.14 has no SIGTERM handler) it
        # stays, and every later backup would fail "exclusively locked".
        run.error = str(exc)
        if started:
            await cleanup.run(_unlock(repo, restic))
        return run
    except asyncio.CancelledError:
        record.interrupted = record.interrupted or "cancellation"
        if started:
            await cleanup.run(_unlock(repo, restic))
        raise
    except HomeopsError as exc:
        run.error = str(exc)
        return run
    error = verdict.error()
    if error is not None:
        run.error = str(error)
        return run
    try:
        parsed = r.parse_forget(done.stdout)
        groups, _end = json.JSONDecoder().raw_decode(done.stdout.lstrip() or "[]")
    except (HomeopsError, ValueError) as exc:
        run.error = f"could not read restic forget's output: {exc}"
        return run
    run.groups = groups
    run.prune_output = parsed.prune_output
    run.kept, run.removed = len(parsed.kept), len(parsed.removed)
    return run


async def _needless_forget(
    repo: Repo, record: BackupRecord, keep: r.KeepPolicy, ledger: Ledger
) -> str | None:
    """Why forget would remove nothing (services/retention.py), or None: run it. Whatever
    cannot be read (the repository's directory, the ledger) means: run it."""
    if record.snapshot_id is None or record.started_at is None:
        return None
    files = await asyncio.to_thread(repo.snapshot_files)
    if files is None:
        return None
    try:
        results = await asyncio.to_thread(ledger)
    except (HomeopsError, OSError) as exc:
        _log.debug("forget", "job ledger unreadable; forget runs", err=exc)
        return None
    known = retention.known_from_results(results, repo.name)
    now = time.time()
    offsets = retention.utc_offsets(repo.environ, record.started_at, now)
    known.append(
        retention.KnownSnapshot(
            record.snapshot_id,
            record.tags,
            record.started_at,
            now,
            None if offsets is None else (offsets[0], offsets[1]),
        )
    )
    return retention.nothing_to_forget(keep, record.service, files, known)
