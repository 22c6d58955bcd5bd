"""``svc list``: services, their units and containers, and their last backups (no restic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from homeops.core.cli.common import JSON_HELP

if TYPE_CHECKING:
    from homeops.services.list_flow import LastBackup, Listing

LIST_HELP = """Every service: its unit docker-compose-<svc>, its containers, and its last backup
per repository (age, size, result), STALE when older than its policy allows (a day when
daily snapshots are kept; backup.stale_after overrides) or when it failed.

Fast: restic is not called; the last backups are read from the job ledger (the
services.backup jobs), the units from one systemctl call (or one docker ps without
systemd). What cannot be asked is shown as unknown, with one note on stderr."""


def register(app: typer.Typer) -> None:
    """Add ``list``."""
    app.command("list", help=LIST_HELP)(list_command)


def list_command(
    ctx: typer.Context,
    no_systemd: bool = typer.Option(
        False, "--no-systemd", help="Read the state from the containers, not the units."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Services, their units and containers, and their last backups."""
    import sys
    import time

    from homeops.core.cli.common import json_errors, load_core
    from homeops.core.jobs.store import open_store
    from homeops.services.cli.common import run_async, svc_settings
    from homeops.services.list_flow import list_services
    from homeops.services.render import renderer_for

    out = renderer_for(as_json)
    with json_errors(as_json):
        settings = svc_settings(ctx)
        queue = open_store(load_core(ctx).settings, readonly=True)
        try:
            listing = run_async(
                list_services(settings, queue, now=time.time(), no_systemd=no_systemd)
            )
        finally:
            queue.close()
    for note in listing.notes:
        sys.stderr.write(f"note: {note}\n")
    out.result(_json(listing), lambda: _text(listing))


def _backup_json(backup: LastBackup | None, now: float) -> dict[str, Any] | None:
    if backup is None:
        return None
    age = backup.age_s(now)
    return {
        "job_id": backup.job_id,
        "state": backup.state,
        "outcome": backup.outcome,
        "finished_at": None if backup.finished_at is None else _ts(backup.finished_at),
        "age_s": None if age is None else round(age, 1),
        "snapshot_id": backup.snapshot_id,
        "files": backup.files,
        "bytes": backup.bytes,
        "added_bytes": backup.added,
        "stale": backup.stale,
        "error": backup.error,
    }


def _ts(epoch: float) -> str:
    from homeops.core.logging import format_ts

    return format_ts(epoch)


def _json(listing: Listing) -> list[dict[str, Any]]:
    return [
        {
            "name": row.name,
            "unit": row.unit,
            "unit_state": row.unit_state,
            "containers": [
                {"name": c.name, "service": c.service, "state": str(c.state), "status": c.status}
                for c in row.containers
            ],
            "backup": row.backup_enabled,
            "backups": {repo: _backup_json(b, listing.now) for repo, b in row.backups.items()},
        }
        for row in listing.rows
    ]


def age_text(seconds: float) -> str:
    """``45s``, ``12m``, ``5h``, ``3d``: the largest unit that fits."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def size_text(n: int | None) -> str:
    """Bytes as ``1.2 GiB``; ``-`` when unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _backup_text(backup: LastBackup | None, enabled: bool, now: float) -> str:
    if backup is None:
        return "never" if enabled else "-"
    if backup.outcome == "lost":
        return "STALE lost (its process died while running)"
    if backup.finished_at is None:
        return backup.state
    age = backup.age_s(now) or 0.0
    text = f"{age_text(age)} ago {size_text(backup.bytes)} {backup.outcome or backup.state}"
    return f"STALE {text}" if backup.stale else text


def _text(listing: Listing) -> str:
    from homeops.services.render import text_table

    if not listing.rows:
        return "no services configured"
    rows = []
    for row in listing.rows:
        running = sum(1 for c in row.containers if str(c.state) == "running")
        rows.append(
            (
                row.name,
                row.unit_state,
                f"{running}/{len(row.containers)}",
                *(_backup_text(b, row.backup_enabled, listing.now) for b in row.backups.values()),
            )
        )
    return text_table(("service", "unit", "running", "local", "remote"), rows)
