"""The core's own job types: maintenance that a timer or a user can enqueue like any job.

They are registered exactly the way a domain registers its own (``core_job_types``, a
factory taking the :class:`~homeops.core.registry.DomainContext`), so the core is the first
user of the path every domain takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from homeops.core.errors import UsageError
from homeops.core.jobs.types import JobType

if TYPE_CHECKING:
    from homeops.core.jobs.worker import JobContext
    from homeops.core.registry import DomainContext
    from homeops.core.settings import CoreSettings

SWEEP_ARTIFACTS: Final = "core.artifacts-sweep"


class SweepPayload(BaseModel):
    """``core.artifacts-sweep``'s input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # NaN or a negative age would compare so that every directory looks expired; a JSON
    # `true` once read as 1 day. Payloads are validated strictly (JSON mode), so only a
    # finite number >= 0 or null gets through.
    retention_days: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Delete artifact dirs older than this many days; null: "
        "artifacts.retention_days.",
    )


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


def sweep_job_type(settings: CoreSettings) -> JobType[SweepPayload]:
    """``core.artifacts-sweep``: remove old artifact dirs, then prune old finished jobs.

    Artifact dirs older than ``retention_days`` (payload, else ``artifacts.retention_days``)
    go first; then finished jobs older than ``jobs.retention_days`` leave the store (none
    when that is ``never``), so one timer keeps both the artifact root and the store small.
    """
    from homeops.core.jobs.retention import prune_finished_jobs

    root, jobs_db = settings.artifacts_root, settings.jobs_db

    async def handle(ctx: JobContext, payload: SweepPayload) -> dict[str, Any]:
        days = payload.retention_days
        if days is None:
            days = settings.artifacts.retention_days
        removed = await asyncio.to_thread(sweep_artifacts, root, jobs_db, days)
        ctx.log.info("sweep", "artifact sweep done", removed=len(removed), retention_days=days)
        # The order changes nothing about what is kept: a pruned job was finished, and the
        # dir of a job the store no longer knows is judged by its age alone. If either
        # half fails, the job's retry runs both again (each is idempotent).
        pruned = await asyncio.to_thread(prune_finished_jobs, settings)
        if pruned.older_than_s is not None:
            ctx.log.info("prune", "finished jobs pruned", removed=pruned.removed)
        return {"removed": removed, "retention_days": days, "jobs_pruned": pruned.to_dict()}

    return JobType(
        name=SWEEP_ARTIFACTS,
        payload_model=SweepPayload,
        handler=handle,
        description="Delete artifact dirs past their retention (unfinished jobs' kept), then "
        "finished jobs past jobs.retention_days.",
    )


def core_job_types(ctx: DomainContext) -> Sequence[JobType[Any]]:
    """The core's job types (its ``Domain`` record's ``job_types``)."""
    return [sweep_job_type(ctx.core)]
