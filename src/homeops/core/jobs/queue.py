"""The queue contract every backend implements (SQLite now, Hatchet later).

The API is synchronous: every call is one short transaction. The worker never calls it on the
event loop: it runs the calls one at a time in a thread of its own, because a call can wait
for a database lock (up to the backend's busy timeout) and the loop must keep running
handlers, timeouts and cancels meanwhile. A backend whose calls go over the network
(Hatchet) fits the same way; the worker only ever uses the methods below.

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
from dataclasses import dataclass
from typing import Any, Protocol

from homeops.core.errors import OperationalError
from homeops.core.jobs.model import Job, JobState

# The metrics hook is core.metrics' protocol; re-exported here for backends and workers.
from homeops.core.metrics import MetricsSink


class StoreBusy(OperationalError):
    """Another process holds the store's lock for longer than the busy timeout.

    Its own class so callers decide on the type (the worker keeps waiting at start-up), never
    by searching a message for "locked".
    """


class StoreCorrupt(OperationalError):
    """The store's data is damaged (not busy, not missing): no retry can succeed.

    A worker that meets it stops instead of polling forever; ``homeops jobs check`` says what
    is broken.
    """


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """What a heartbeat learned about the ids it was given.

    ``held``: the ids this worker still holds (their leases were extended). An id missing
    from it was lost (the lease ran out and another claim took the job, or it is no longer
    running): the worker must stop its local run and record nothing.
    ``cancel_requested``: the held ids whose cancel was requested (a subset of ``held``).
    """

    held: frozenset[str] = frozenset()
    cancel_requested: frozenset[str] = frozenset()


class JobClient(Protocol):
    """The side of a store every caller uses: submit, look up, cancel, count, prune.

    A distributed backend (Hatchet) implements this and runs its own workers; the embedded
    store also implements :class:`LeaseQueue` for homeops' own worker.
    """

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
        """Store a new queued job; an ``idempotency_key`` seen before returns the existing job.

        Reusing a key with a different type or payload (compared as canonical JSON) is a
        UsageError: one key names one piece of work.
        """
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel: queued at once, running by request to its worker, terminal left unchanged."""
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

    def created_since(
        self, since: float, *, types: Sequence[str] | None = None, queued_before: bool = False
    ) -> int:
        """How many jobs (of ``types``) were enqueued at or after ``since`` (with
        ``queued_before``: were enqueued before it and are still queued)."""
        ...

    def prune(self, *, older_than_s: float, dry_run: bool = False) -> int:
        """Delete succeeded, failed and cancelled jobs that finished over ``older_than_s`` ago.

        Never a queued or running job (nor one waiting to be retried). Deletes in short
        batches, so workers on the same store are not held up for long. ``dry_run`` counts
        instead. Returns how many jobs were (or would be) removed.
        """
        ...

    def close(self) -> None:
        """Release the store (the client is unusable afterwards)."""
        ...


class LeaseQueue(JobClient, Protocol):
    """The lease side, used only by the embedded worker: claim, heartbeat, finish, hand back."""

    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        *,
        types: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
    ) -> builtins.list[Job]:
        """Atomically take up to ``limit`` runnable jobs (queued and due, or lease expired),
        of ``types`` and among ``ids`` when given."""
        ...

    def heartbeat(self, worker_id: str, job_ids: Sequence[str], lease_s: float) -> HeartbeatResult:
        """Extend the leases this worker still holds; say which it holds and which to cancel."""
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

    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        """Record that the worker stopped a running job because its cancel was requested."""
        ...


# The name the worker and tests used before the split: the whole embedded contract.
JobQueue = LeaseQueue


__all__ = [
    "HeartbeatResult",
    "JobClient",
    "JobQueue",
    "LeaseQueue",
    "MetricsSink",
    "StoreBusy",
    "StoreCorrupt",
]
