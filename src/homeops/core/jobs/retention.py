"""Retention of finished jobs: what ``homeops jobs prune`` and the artifact sweep both run.

``jobs.retention_days`` (default 30) says how long a succeeded, failed or cancelled job stays
in the store; ``never`` keeps them all. Pruning forgets a job completely, its idempotency key
included: enqueueing the same key again afterwards queues new work.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from homeops.core.settings import CoreSettings

DAY_S: Final = 86_400.0
# The longest retention there is (jobs.retention_days allows no more): a century. Longer ages
# prune the same nothing, and one that overflows to inf seconds made every prune (and so the
# core.artifacts-sweep job, for good) fail instead.
MAX_RETENTION_DAYS: Final = 36_500
MAX_RETENTION_S: Final = MAX_RETENTION_DAYS * DAY_S


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
    """``jobs.retention_days`` in seconds, at most a century; None when kept forever.

    Always a finite number > 0 (or None), even for settings that skipped validation: a value
    beyond the bound (or inf, or NaN) keeps jobs for the longest retention there is, which is
    what it asked for, rather than failing every prune.
    """
    days = settings.jobs.retention_days
    if days is None:
        return None
    return _bounded(days * DAY_S)


def _bounded(seconds: float) -> float:
    """``seconds`` capped at :data:`MAX_RETENTION_S`; inf and NaN become the cap."""
    if math.isnan(seconds) or seconds > MAX_RETENTION_S:
        return MAX_RETENTION_S
    return seconds


def prune_finished_jobs(
    settings: CoreSettings, *, older_than_s: float | None = None, dry_run: bool = False
) -> PruneReport:
    """Delete finished jobs older than ``older_than_s`` (default: ``jobs.retention_days``).

    Blocking (run it in a thread from async code); the store deletes in short batches, so
    a worker on the same store keeps claiming meanwhile. Inside a worker process the store
    shares the worker's own connection. A store that does not exist yet is not created.
    """
    from homeops.core.jobs.store import open_store

    # An explicit age over a century (`--older-than 1e308d`) prunes what a century prunes;
    # NaN, zero and negatives still reach the store's own check and are refused there.
    if older_than_s is not None and older_than_s > MAX_RETENTION_S:
        older_than_s = MAX_RETENTION_S
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
