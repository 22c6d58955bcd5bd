"""The core's own job types: maintenance that a timer or a user can enqueue like any job."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from homeops.core.errors import UsageError

if TYPE_CHECKING:
    from homeops.core.jobs.worker import Handler, JobContext
    from homeops.core.registry import DomainContext

SWEEP_ARTIFACTS: Final = "core.artifacts-sweep"


def _retention(payload: Mapping[str, Any], default: float) -> float:
    value = payload.get("retention_days", default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"retention_days must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"retention_days must be a finite number >= 0, got {value!r}")
    return float(value)


def sweep_artifacts(root: Path, jobs_db: Path, retention_days: float) -> list[str]:
    """Sweep old artifact dirs, sparing every job the store still has queued or running.

    The store is only read. Inside a worker this queue shares the worker's own connection
    (the embedded store keeps one per file per process): a second connection, or any other
    descriptor of the file opened and closed here, would drop the worker's locks on it.
    """
    from homeops.core.artifacts import ArtifactStore
    from homeops.core.jobs.store import open_store_at

    queue = open_store_at(jobs_db, readonly=True)
    try:

        def unfinished(job_id: str) -> bool:
            try:
                return not queue.get(job_id).state.terminal
            except UsageError:  # no such job: its artifacts belong to nobody active
                return False

        return ArtifactStore(root).sweep(retention_days, keep=unfinished)
    finally:
        queue.close()


def sweep_handler(root: Path, jobs_db: Path, default_days: float) -> Handler:
    """Job handler: remove artifact dirs older than ``retention_days`` (payload or default)."""

    async def handle(ctx: JobContext) -> dict[str, Any]:
        days = _retention(ctx.job.payload, default_days)
        removed = await asyncio.to_thread(sweep_artifacts, root, jobs_db, days)
        ctx.log.info("sweep", "artifact sweep done", removed=len(removed), retention_days=days)
        return {"removed": removed, "retention_days": days}

    return handle


def core_handlers(ctx: DomainContext) -> Mapping[str, Handler]:
    """The core's job handlers by type."""
    core = ctx.core
    handler = sweep_handler(core.artifacts_root, core.jobs_db, core.artifacts.retention_days)
    return {SWEEP_ARTIFACTS: handler}
