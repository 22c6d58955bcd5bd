"""Where job stores are opened: the one place that knows which backend a setting means.

Callers get a :class:`JobClient` (submit, look up, cancel, count) or, for homeops' own
worker, a :class:`LeaseQueue`; none of them names the SQLite class, so a second backend
(Hatchet) is a new branch here, not a change in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homeops.core.jobs.queue import JobClient, LeaseQueue, MetricsSink
    from homeops.core.jobs.sqlite import StoreCheck
    from homeops.core.settings import CoreSettings


def open_store(settings: CoreSettings, *, readonly: bool = False) -> JobClient:
    """The configured store for submitting and reading jobs (``readonly``: reads only)."""
    return open_store_at(settings.jobs_db, readonly=readonly)


def open_worker_queue(settings: CoreSettings, *, metrics: MetricsSink | None = None) -> LeaseQueue:
    """The configured store with its lease side, for the embedded worker."""
    from homeops.core.jobs.sqlite import SqliteJobQueue

    # settings.jobs.backend has one value today; its Literal type keeps this exhaustive.
    return SqliteJobQueue(settings.jobs_db, metrics=metrics)


def open_store_at(path: Path, *, readonly: bool = False) -> LeaseQueue:
    """The embedded store at an explicit file (tests, and handlers given a path)."""
    from homeops.core.jobs.sqlite import SqliteJobQueue

    return SqliteJobQueue(path, readonly=readonly)


def check_store_at(path: Path, *, quick: bool = False, max_errors: int = 100) -> StoreCheck:
    """``PRAGMA integrity_check`` (or ``quick_check``) of the embedded store at ``path``."""
    from homeops.core.jobs.sqlite import check_store

    return check_store(path, quick=quick, max_errors=max_errors)


def repair_store_at(path: Path) -> list[str]:
    """Restore the embedded store's missing tables, indexes and triggers and recount its job
    counters from its rows; returns what was wrong."""
    from homeops.core.jobs.sqlite import repair_store

    return repair_store(path)
