"""``svc restore <local|remote> <svc> [SNAPSHOT|latest]``: a restore as a job, run here.

By default into a staging directory, with a summary of what differs from the live data;
``--in-place --yes`` replaces the live data (moved aside and kept). The steps and what is
kept are in services/restore_flow.py. The restore is one ``services.restore`` job in the
core's job store, run in this process by the real worker (core/jobs/here.py).

SIGINT/SIGTERM: before the service was stopped, restic is killed and nothing live has
changed (exit 130/143); once it was stopped, the restore finishes first (moving the data,
the check, starting the service again) and a second signal is only logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import typer

from homeops.core.cli.common import JSON_HELP
from homeops.services.cli.common import REPO_HELP

if TYPE_CHECKING:
    from homeops.core.errors import HomeopsError
    from homeops.core.settings import CoreSettings
    from homeops.services.render import Renderer
    from homeops.services.settings import SvcSettings

_EXIT_SIGNALLED: Final = {"SIGINT": 130, "SIGTERM": 143}

RESTORE_HELP = """Restore a service's snapshot (the newest one tagged with the service, or
SNAPSHOT, which must be one of the service's).

Default: into <restore.staging_dir>/<svc>/<snapshot> (or --target, an empty or new
directory), checked against the snapshot, with a summary of what differs from the live
data per backed-up path: files only in the snapshot, only live, changed.

--in-place --yes: restores into <restore.aside_dir>/<svc>/<time>.incoming, checks it, stops
the service, moves the live data aside to <restore.aside_dir>/<svc>/<time>/ (copies it where
it is on another mount, as docker volumes are; kept: svc never deletes it), puts the restored
data in place, checks it again and starts the service again, whatever happened. Without
--yes nothing is done (exit 2).

Exit codes: 0 restored, 1 restic failed or the restored data does not match the snapshot,
2 usage (unknown snapshot, another service's snapshot, a non-empty --target, --in-place
without --yes), 3 restic or docker unavailable, 130/143 interrupted."""


def register(app: typer.Typer) -> None:
    """Add ``restore``."""
    app.command("restore", help=RESTORE_HELP)(restore_command)


def restore_command(
    ctx: typer.Context,
    repo: str = typer.Argument(..., metavar="local|remote", help=REPO_HELP),
    service: str = typer.Argument(..., metavar="SVC", help="Service name."),
    snapshot: str = typer.Argument(
        "latest", metavar="[SNAPSHOT|latest]", help="Snapshot id (a prefix will do) or latest."
    ),
    target: str = typer.Option(
        None, "--target", metavar="DIR", help="Restore into DIR (new or empty) instead."
    ),
    in_place: bool = typer.Option(
        False, "--in-place", help="Replace the live data (moved aside and kept); needs --yes."
    ),
    yes: bool = typer.Option(False, "--yes", help="Confirm --in-place."),
    no_systemd: bool = typer.Option(
        False, "--no-systemd", help="Stop and start the service through docker directly."
    ),
    retry_lock: str = typer.Option(
        None, "--retry-lock", metavar="DURATION", help="Wait this long for a locked repository."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Restore a service from a snapshot (into staging, or --in-place --yes)."""
    import os

    from homeops.core.cli.common import duration_flag, json_errors, load_core
    from homeops.core.errors import UsageError
    from homeops.services.cli.common import config_source, env_sources, run_async, svc_settings
    from homeops.services.render import renderer_for
    from homeops.services.repo import Repo, repo_name
    from homeops.services.restore_flow import NOT_CONFIRMED, is_snapshot_id

    out = renderer_for(as_json)
    with json_errors(as_json) as known:
        known.update(repo=repo, service=service, snapshot=snapshot)
        settings = svc_settings(ctx)
        chosen = repo_name(repo)
        if service not in settings.services:
            names = ", ".join(sorted(settings.services)) or "none"
            raise UsageError(f"no service {service!r} in the config (known: {names})")
        if snapshot != "latest" and not is_snapshot_id(snapshot):
            raise UsageError(f"snapshot: expected 'latest' or a hex snapshot id, got {snapshot!r}")
        if in_place and not yes:
            raise UsageError(NOT_CONFIRMED)
        if in_place and target is not None:
            raise UsageError("--target is for a restore into staging; --in-place restores in place")
        if target is not None and not target.strip():
            raise UsageError("--target: empty; give the directory to restore into")
        wait = None if retry_lock is None else duration_flag("--retry-lock", retry_lock)
        # Refuse an unconfigured repository, or a password file that is a FIFO ..., here
        # (exit 2, naming the file or variable it came from), before a job is stored.
        Repo.of(
            settings, chosen, source=config_source(ctx), sources=env_sources(ctx), retry_lock_s=wait
        ).check_files()
        payload = {
            "repo": chosen,
            "service": service,
            "snapshot": snapshot,
            "target": None if target is None else os.path.abspath(target),
            "in_place": in_place,
            "yes": yes,
            "no_systemd": no_systemd,
            "retry_lock_s": wait,
        }
        core = load_core(ctx).settings
        try:
            outcome = run_async(_run(core, settings, payload, out))
        finally:
            out.close()
        known.update(outcome.data)
        if outcome.error is not None and outcome.interrupted is None:
            raise outcome.error
    _report(out, outcome, as_json=as_json)


@dataclass
class _Outcome:
    data: dict[str, Any] = field(default_factory=dict)
    error: HomeopsError | None = None
    interrupted: str | None = None


async def _run(
    core: CoreSettings, settings: SvcSettings, payload: dict[str, Any], out: Renderer
) -> _Outcome:
    import asyncio
    import signal

    from homeops.core.artifacts import ArtifactStore
    from homeops.core.cli.signals import install, log_signal
    from homeops.core.errors import OperationalError
    from homeops.core.jobs.here import run_here
    from homeops.core.jobs.model import JobState
    from homeops.core.jobs.store import open_worker_queue
    from homeops.services import restore_flow
    from homeops.services.restore_flow import (
        RESTORE,
        RestoreWatch,
        StopRequest,
        restore_job_type,
    )

    stop = StopRequest()
    stopping = asyncio.Event()
    watch = RestoreWatch(stop=stop, on_progress=out.progress)
    job_types = {RESTORE: restore_job_type(settings, watch, lock_dir=core.state_dir)}
    # The handler ends the run itself on a stop request, except while the data is being
    # swapped: the worker's grace period has to outlast stopping and starting the service.
    grace = restore_flow.cleanup_s()

    def on_signal(signum: int) -> None:
        if stop.requested:
            log_signal(signum, "already stopping: the restore finishes what it started first")
            return
        log_signal(signum, "stopping the restore")
        stop.request(signal.Signals(signum).name)
        stopping.set()

    remove = install(on_signal)
    queue = None
    try:
        queue = await asyncio.to_thread(open_worker_queue, core)
        [job] = await run_here(
            queue,
            job_types,
            [(RESTORE, payload)],
            artifacts=ArtifactStore(core.artifacts_root),
            stop=stopping,
            lease_s=core.jobs.lease,
            poll_interval=core.jobs.poll_interval,
            grace_s=grace,
        )
        if not job.state.terminal:
            # Stopped before the worker took it: it must not wait for another worker.
            job = await asyncio.to_thread(queue.cancel, job.id)
    finally:
        remove()
        if queue is not None:
            queue.close()
    record = watch.records.get(job.id)
    data: dict[str, Any] = dict(record.result()) if record is not None else {}
    data["job_id"] = job.id
    if job.state is JobState.SUCCEEDED:
        out.finish(str(payload["service"]), "restored")
        return _Outcome({"ok": True, **data})
    error = watch.errors.get(job.id) or OperationalError(
        f"the restore job {job.id} ended {job.state}: {job.error or 'before it started'}"
    )
    return _Outcome({"ok": False, **data}, error, stop.reason)


def _report(out: Renderer, outcome: _Outcome, *, as_json: bool) -> None:
    """Print the result (warnings on stderr); exit 130/143 after an interruption."""
    from homeops.core.cli.common import error_line, print_json, report_error

    data = outcome.data
    if outcome.interrupted is not None:
        code = _EXIT_SIGNALLED.get(outcome.interrupted, 1)
        message = str(outcome.error) if outcome.error else f"interrupted by {outcome.interrupted}"
        if as_json:
            print_json({**data, "ok": False, "error": error_line(message), "exit_code": code})
        report_error(message)
        raise typer.Exit(code)
    out.result(data, lambda: _text(data))
    for warning in data.get("warnings") or ():
        report_error(f"{data['service']}: {warning}", prefix="warning: ")


def _utc(iso: str | None) -> str:
    from datetime import UTC, datetime

    if not iso:
        return "time unknown"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _text(data: dict[str, Any]) -> str:
    from homeops.core.cli.common import printable
    from homeops.services.backup_flow import human_bytes
    from homeops.services.render import text_table

    snap = data["snapshot"] or {}
    head = (
        f"{data['service']}: snapshot {snap.get('short_id')} ({_utc(snap.get('time'))}) "
        f"from {data['repo']}"
    )
    lines = []
    final = data.get("final_check") or data.get("check") or {}
    checked = (
        f"checked: {final.get('found_files')} files, {human_bytes(final.get('expected_bytes'))}"
        ", as in the snapshot"
    )
    if data["mode"] == "in-place":
        lines.append(f"{head} restored in place")
        lines.append(checked)
        if data.get("stopped"):
            lines.append(f"service: stopped and started again ({data.get('via')})")
        else:
            lines.append("service: not stopped (it was not running, or compose.enable is false)")
        if data.get("aside"):
            lines.append(f"old data kept at {printable(str(data['aside']))}")
        else:
            lines.append("no live data was there to move aside")
        lines.append(f"job: {data['job_id']}")
        return "\n".join(lines)
    lines.append(f"{head} restored into {printable(str(data['target']))}")
    lines.append(checked)
    rows = [
        (
            d["path"],
            d["kind"] if d["volume"] is None else f"volume {d['volume']}",
            d["only_snapshot"]["count"],
            d["only_live"]["count"],
            d["changed"]["count"],
            d["same"],
        )
        for d in data["diff"]
    ]
    lines.append(
        text_table(("path", "kind", "only in snapshot", "only live", "changed", "same"), rows)
    )
    differs = False
    for d in data["diff"]:
        for key, label in (
            ("only_snapshot", "only in snapshot"),
            ("only_live", "only live"),
            ("changed", "changed"),
        ):
            part = d[key]
            if not part["count"]:
                continue
            differs = True
            more = part["count"] - len(part["first"])
            # Names from the backed-up data: a newline in one must not make a line of its own.
            names = (printable(name) for name in part["first"])
            shown = ", ".join(names) + (f" and {more} more" if more > 0 else "")
            lines.append(f"{label}: {shown}")
    if not differs:
        lines.append("no difference from the live data")
    lines.append(f"job: {data['job_id']}")
    return "\n".join(lines)
