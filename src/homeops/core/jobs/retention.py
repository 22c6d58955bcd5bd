"""Retention of finished jobs: what ``homeops jobs prune`` and the artifact sweep both run.

``jobs.retention_days`` (default 30) says how long a succeeded, failed or cancelled job stays
in the store; ``never`` keeps them all. Pruning forgets a job completely, its idempotency key
included: enqueueing the same key again afterwards queues new work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from homeops.core.settings import CoreSettings

DAY_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune did: ``removed`` jobs (would-be, with ``dry_run``) finished over
    ``older_than_s`` ago; ``older_than_s`` is None when retention is off and nothing ran."""

    removed: int
    dry_run: bool
    older_than_s: float | None

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (``jobs prune --json``, the sweep's job result)."""
        return {
            "removed": self.removed,
            "dry_run": self.dry_run,
            "older_than_s": self.older_than_s,
        }


def retention_seconds(settings: CoreSettings) -> float | None:
    """``jobs.retention_days`` in seconds; None when finished jobs are kept forever."""
    days = settings.jobs.retention_days
    return None if days is None else days * DAY_S


def prune_finished_jobs(
    settings: CoreSettings, *, older_than_s: float | None = None, dry_run: bool = False
) -> PruneReport:
    """Delete finished jobs older than ``older_than_s`` (default: ``jobs.retention_days``).

    Blocking (run it in a thread from async code); the store deletes in short batches, so
    a worker on the same store keeps claiming meanwhile. Inside a worker process the store
    shares the worker's own connection. A store that does not exist yet is not created.
    """
    from homeops.core.jobs.store import open_store

    age = retention_seconds(settings) if older_than_s is None else older_than_s
    if age is None:
        return PruneReport(removed=0, dry_run=dry_run, older_than_s=None)
    # lexists, not exists: a dangling symlink goes on to the store's own clear error.
    if settings.jobs.backend == "sqlite" and not os.path.lexists(settings.jobs_db):
        return PruneReport(removed=0, dry_run=dry_run, older_than_s=age)
    client = open_store(settings, readonly=dry_run)
    try:
        removed = client.prune(older_than_s=age, dry_run=dry_run)
    finally:
        client.close()
    return PruneReport(removed=removed, dry_run=dry_run, older_than_s=age)
