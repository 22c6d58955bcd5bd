"""The core's own job types: maintenance that a timer or a user can enqueue like any job.

They are registered exactly the way a domain registers its own (``core_job_types``, a
factory taking the :class:`~homeops.core.registry.DomainContext`), so the core is the first
user of the path every domain takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from homeops.core.errors import UsageError
from homeops.core.jobs.types import JobType, JobTypeHandler

if TYPE_CHECKING:
    from homeops.core.jobs.worker import Handler, JobContext
    from homeops.core.registry import DomainContext

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
        description="Delete artifact dirs older than this many days; null: artifacts.retention.",
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


def sweep_job_type(root: Path, jobs_db: Path, default_days: float) -> JobType[SweepPayload]:
    """``core.artifacts-sweep``: remove artifact dirs older than ``retention_days``.

    ``retention_days`` comes from the payload, or ``default_days`` when it is null or absent.
    """

    async def handle(ctx: JobContext, payload: SweepPayload) -> dict[str, Any]:
        days = default_days if payload.retention_days is None else payload.retention_days
        removed = await asyncio.to_thread(sweep_artifacts, root, jobs_db, days)
        ctx.log.info("sweep", "artifact sweep done", removed=len(removed), retention_days=days)
        return {"removed": removed, "retention_days": days}

    return JobType(
        name=SWEEP_ARTIFACTS,
        payload_model=SweepPayload,
        handler=handle,
        description="Delete artifact dirs older than the retention (jobs still running kept).",
    )


def core_job_types(ctx: DomainContext) -> Sequence[JobType[Any]]:
    """The core's job types (``Registry.add_job_types("core", core_job_types)``)."""
    core = ctx.core
    return [sweep_job_type(core.artifacts_root, core.jobs_db, core.artifacts.retention_days)]


def core_handlers(ctx: DomainContext) -> Mapping[str, Handler]:
    """Transition: :func:`core_job_types` for ``Registry.add_handlers``, still used by cli.py.

    Each handler carries its job type (``JobTypeHandler``), which is what the worker and
    ``jobs enqueue`` actually use; remove once cli.py calls ``add_job_types``.
    """
    return {jt.name: JobTypeHandler(jt) for jt in core_job_types(ctx)}
