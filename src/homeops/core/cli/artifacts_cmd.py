"""``homeops artifacts list|fetch|sweep|gc``: per-job artifact directories and their manifests."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from homeops.core.cli.common import (
    JSON_HELP,
    json_errors,
    load_core,
    print_json,
    print_text,
    table,
)

if TYPE_CHECKING:
    from homeops.core.artifacts import ArtifactStore

app = typer.Typer(help="List, fetch (sha256-verified) and sweep job artifacts.")


def _store(ctx: typer.Context) -> tuple[ArtifactStore, float]:
    from homeops.core.artifacts import ArtifactStore

    settings = load_core(ctx).settings
    return ArtifactStore(settings.artifacts_root), settings.artifacts.retention_days


@app.command("list")
def list_artifacts(
    ctx: typer.Context,
    job: str = typer.Option(None, "--job", metavar="JOB_ID", help="One job's artifacts."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the jobs that have artifacts, or with --job the artifacts of one job."""
    with json_errors(as_json) as known:
        store, _ = _store(ctx)
        if job is None:
            jobs = store.list_jobs()
            if as_json:
                print_json(jobs)
            else:
                print_text("\n".join(jobs) if jobs else "no artifacts")
            return
        known["job"] = job
        manifest = store.manifest(job)
        if as_json:
            print_json(manifest.to_json())
            return
        rows = [(a.type, a.path, a.size_bytes, a.sha256[:16]) for a in manifest.artifacts]
        print_text(table(("type", "path", "bytes", "sha256"), rows))


@app.command("fetch")
def fetch(
    ctx: typer.Context,
    job: str = typer.Option(..., "--job", metavar="JOB_ID", help="Whose artifacts."),
    # str, not Path: Typer turns "" into Path("."), and `--out ''` must not mean "here".
    out: str = typer.Option(..., "--out", metavar="DIR", help="Directory to copy them into."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Copy a job's artifacts to --out, verifying every sha256 on the way."""
    from homeops.core.errors import UsageError

    with json_errors(as_json) as known:
        known["job"] = job
        if not out.strip():
            raise UsageError("--out: empty path")
        store, _ = _store(ctx)
        # os.path.expanduser leaves an unknown ~user alone instead of raising.
        paths = store.fetch(job, Path(os.path.expanduser(out)))
    if as_json:
        print_json([str(p) for p in paths])
    else:
        print_text("\n".join(str(p) for p in paths) if paths else "no artifacts")


@app.command("sweep")
def sweep(
    ctx: typer.Context,
    retention_days: float = typer.Option(
        None, "--retention-days", metavar="DAYS", help="Default: artifacts.retention_days."
    ),
    prune_jobs: bool = typer.Option(
        True,
        "--prune-jobs/--no-prune-jobs",
        help="Also prune finished jobs past jobs.retention_days (as the sweep job does).",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Delete job artifact dirs past retention (unfinished jobs' kept), then finished jobs."""
    from homeops.core.housekeeping import sweep_artifacts

    with json_errors(as_json):
        settings = load_core(ctx).settings
        if retention_days is not None and not retention_days >= 0:
            from homeops.core.errors import UsageError

            why = "not a number" if not math.isfinite(retention_days) else "must be >= 0"
            raise UsageError(f"--retention-days: {why} (got {retention_days})")
        days = settings.artifacts.retention_days if retention_days is None else retention_days
        removed = sweep_artifacts(settings.artifacts_root, settings.jobs_db, days)
        # The same two halves, in the same order, as the core.artifacts-sweep job.
        pruned = None
        if prune_jobs:
            from homeops.core.jobs.retention import prune_finished_jobs

            pruned = prune_finished_jobs(settings)
    if as_json:
        print_json(
            {"removed": removed, "jobs_pruned": None if pruned is None else pruned.to_dict()}
        )
        return
    lines = [f"removed {len(removed)} job artifact dir(s)"]
    if pruned is not None:
        from homeops.core.durations import format_duration

        if pruned.older_than_s is None:
            lines.append("retention is off (jobs.retention_days: never); no jobs pruned")
        else:
            since = format_duration(pruned.older_than_s)
            lines.append(f"pruned {pruned.removed} finished job(s) older than {since}")
    print_text("\n".join(lines))


# win-automation's name for the same thing (issue 7: `artifacts gc`, retention); one code path.
app.command("gc", help="The same as sweep (win-automation's name for it).")(sweep)
