"""Run a command's own jobs here and now, in this process, through the real worker.

A command such as ``svc backup local all`` is a long operation the user waits for at a
terminal; it is still a job (DESIGN.md: id, trace id, state, attempts, artifacts), so that
``jobs list``, ``svc list`` and the artifacts see it like any other. :func:`run_here`
enqueues the jobs and runs them with a :class:`~homeops.core.jobs.worker.Worker` that claims
those ids and no other job, so a queue shared with a daemon worker is never raided, and the
same handlers run as under ``homeops jobs worker``. The worker's rules hold: a stop request
(SIGINT at the terminal) gives running jobs the grace period, then cancels them; a handler
that marked itself unrepeatable is failed rather than handed back for a later worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from homeops.core.jobs.types import validate_enqueue

if TYPE_CHECKING:
    from homeops.core.artifacts import ArtifactStore
    from homeops.core.jobs.model import Job
    from homeops.core.jobs.queue import LeaseQueue
    from homeops.core.jobs.types import JobType
    from homeops.core.metrics import MetricsSink


async def run_here(
    queue: LeaseQueue,
    job_types: Mapping[str, JobType[Any]],
    jobs: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    artifacts: ArtifactStore,
    slots: int = 1,
    max_attempts: int = 1,
    lease_s: float = 30.0,
    poll_interval: float = 0.01,
    grace_s: float = 10.0,
    stop: asyncio.Event | None = None,
    metrics: MetricsSink | None = None,
) -> list[Job]:
    """Enqueue ``jobs`` (type, payload), run exactly those in this process, return them as
    they ended (in the order given).

    Payloads are validated first, all of them: one bad payload stores nothing. ``slots``
    jobs run at once (1: one after another, in order).
    """
    from homeops.core.jobs.worker import Worker

    checked = [(type_, validate_enqueue(job_types, type_, payload)) for type_, payload in jobs]
    ids: list[str] = []
    for type_, payload in checked:
        job = await asyncio.to_thread(queue.enqueue, type_, payload, max_attempts=max_attempts)
        ids.append(job.id)
    worker = Worker(
        queue,
        [job_types[type_] for type_ in dict.fromkeys(t for t, _ in checked)],
        slots=slots,
        lease_s=lease_s,
        poll_interval=poll_interval,
        grace_s=grace_s,
        metrics=metrics,
        artifacts=artifacts,
        only_ids=ids,
    )
    await worker.run(stop, drain=True)
    return [await asyncio.to_thread(queue.get, job_id) for job_id in ids]
