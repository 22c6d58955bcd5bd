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


def sweep_handler(root: Path, default_days: float) -> Handler:
    """Job handler: remove artifact dirs older than ``retention_days`` (payload or default)."""

    async def handle(ctx: JobContext) -> dict[str, Any]:
        from homeops.core.artifacts import ArtifactStore

        days = _retention(ctx.job.payload, default_days)
        removed = await asyncio.to_thread(ArtifactStore(root).sweep, days)
        ctx.log.info("sweep", "artifact sweep done", removed=len(removed), retention_days=days)
        return {"removed": removed, "retention_days": days}

    return handle


def core_handlers(ctx: DomainContext) -> Mapping[str, Handler]:
    """The core's job handlers by type."""
    core = ctx.core
    return {SWEEP_ARTIFACTS: sweep_handler(core.artifacts_root, core.artifacts.retention_days)}
