"""The queue contract every backend implements (SQLite now, Hatchet later).

The API is synchronous on purpose. The embedded backend is SQLite: every call is one short
transaction that takes well under a millisecond, so calling it straight from the event loop
costs less than handing it to a thread (a thread hop alone is ~50-100 us and would also need
a connection per thread). A backend whose calls go over the network (Hatchet) can wrap this
contract with its own client and run calls in a thread; the worker only ever uses the
methods below.

State machine::

    queued --claim--> running --complete--> succeeded
      ^                 |  |--fail(retryable, attempts left)--> queued (after backoff)
      |                 |  |--fail(final) / lease expired with no attempts left--> failed
      |--requeue--------|  |--cancel requested, worker stops it--> cancelled
    queued --cancel--> cancelled

Calls that change a running job take the ``worker_id`` that claimed it; if the lease was
lost and another worker holds the job now, the call changes nothing and returns False.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, Protocol

from homeops.core.jobs.model import Job, JobState

# The metrics hook is core.metrics' protocol; re-exported here for backends and workers.
from homeops.core.metrics import MetricsSink


class JobQueue(Protocol):
    """Durable job storage with leases: what a worker and the CLI need from a backend."""

    def enqueue(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trace_id: str | None = None,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        delay_s: float = 0.0,
    ) -> Job:
        """Store a new queued job; an ``idempotency_key`` seen before returns the existing job."""
        ...

    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        *,
        types: Sequence[str] | None = None,
    ) -> builtins.list[Job]:
        """Atomically take up to ``limit`` runnable jobs (queued and due, or lease expired)."""
        ...

    def heartbeat(self, worker_id: str, job_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend the leases this worker still holds; return the ids whose cancel was requested."""
        ...

    def complete(self, job_id: str, worker_id: str, result: Any) -> bool:  # noqa: ANN401
        """Mark succeeded with ``result``; False if ``worker_id`` no longer holds the job."""
        ...

    def fail(self, job_id: str, worker_id: str, error: str, *, retryable: bool = True) -> bool:
        """Retry later (backoff) while attempts remain and ``retryable``, else mark failed."""
        ...

    def requeue(self, job_id: str, worker_id: str) -> bool:
        """Give a running job back without using up its attempt (worker shutdown)."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel: queued at once, running by request to its worker, terminal left unchanged."""
        ...

    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        """Record that the worker stopped a running job because its cancel was requested."""
        ...

    def get(self, job_id: str) -> Job:
        """The job with ``job_id``; an unknown id is a UsageError (exit 2)."""
        ...

    def list(
        self, state: JobState | None = None, type: str | None = None, limit: int = 100
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by state and type."""
        ...

    def counts(self, *, types: Sequence[str] | None = None) -> dict[JobState, int]:
        """How many jobs (of ``types``, if given) are in each state; every state present."""
        ...


__all__ = ["JobQueue", "MetricsSink"]
