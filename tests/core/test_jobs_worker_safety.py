"""Worker hardening: cancel requests beat shutdown hand-backs, a corrupt store stops the worker,
runs stopped before their first step, and lease deadlines counted from before a heartbeat."""

from __future__ import annotations

import asyncio
import collections
import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from homeops.core.errors import OperationalError
from homeops.core.jobs import HeartbeatResult, JobContext, JobState, SqliteJobQueue, Worker
from tests.core.job_type_helpers import types
from tests.core.test_jobs_worker import Blocker, ManualClock, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqliteJobQueue]:
    q = SqliteJobQueue(tmp_path / "jobs.db", backoff_base_s=0.01)
    yield q
    q.close()


class Counting:
    """A handler that blocks until cancelled, counting its runs per job."""

    def __init__(self) -> None:
        self.runs: collections.Counter[str] = collections.Counter()
        self.started = asyncio.Event()

    async def handler(self, ctx: JobContext) -> None:
        self.runs[ctx.job.id] += 1
        self.started.set()
        await asyncio.sleep(3600)


@pytest.mark.parametrize("grace_s", [0.0, 10.0])
async def test_cancelled_job_is_not_run_again_after_a_shutdown(
    queue: SqliteJobQueue, grace_s: float
) -> None:
    # The cancel is requested, then the worker is stopped at once (grace 0, or a second
    # signal) before a heartbeat told it about the request: its run stops as "shutdown".
    counting = Counting()
    job = queue.enqueue("t.x", {}, max_attempts=5)
    first = Worker(queue, types({"t.x": counting.handler}), grace_s=grace_s, worker_id="w1")
    run = asyncio.create_task(first.run())
    await asyncio.wait_for(counting.started.wait(), 5)
    assert queue.cancel(job.id).cancel_requested
    first.request_stop()
    first.request_stop()
    await asyncio.wait_for(run, 10)
    assert queue.get(job.id).state is JobState.CANCELLED
    # Another worker finds nothing to run.
    await asyncio.wait_for(
        Worker(queue, types({"t.x": counting.handler}), worker_id="w2").run(drain=True), 10
    )
    assert counting.runs[job.id] == 1
    final = queue.get(job.id)
    assert (final.state, final.attempts) == (JobState.CANCELLED, 1)


class CorruptAfter:
    """A queue whose calls of one kind start failing as a damaged file makes them fail."""

    def __init__(self, real: SqliteJobQueue, method: str, after: int) -> None:
        self.real = real
        self.method = method
        self.after = after
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name != self.method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            from homeops.core.jobs import StoreCorrupt

            self.calls += 1
            if self.calls > self.after:
                raise StoreCorrupt("jobs database x: database disk image is malformed")
            return attr(*args, **kwargs)

        return call


@pytest.mark.parametrize(
    ("method", "drain"),
    [
        pytest.param("claim", False, id="claim"),
        pytest.param("counts", True, id="drain-counts"),
        pytest.param("complete", False, id="complete"),
    ],
)
async def test_corrupt_store_stops_the_worker_with_an_error(
    queue: SqliteJobQueue, log_stream: io.StringIO, method: str, drain: bool
) -> None:
    from homeops.core.jobs import StoreCorrupt

    async def quick(ctx: JobContext) -> str:
        return "ok"

    queue.enqueue("t.x", {})
    broken = CorruptAfter(queue, method, after=0)
    worker = Worker(broken, types({"t.x": quick}))  # type: ignore[arg-type]
    # Bounded only so that a worker polling forever fails the test instead of hanging it.
    with pytest.raises(StoreCorrupt, match="malformed"):
        await asyncio.wait_for(worker.run(drain=drain), 30)
    assert broken.calls >= 1
    assert "job store is corrupt; stopping the worker" in log_stream.getvalue()
    assert worker.running_ids == []


async def test_run_stopped_before_its_first_step_is_handed_back(queue: SqliteJobQueue) -> None:
    # A stop that lands between the claim and the task's first step (run() cancelled right
    # after a claim came back) must still record the stop; cancelling the unstarted task
    # would skip _execute altogether and leave the job running with an attempt used.
    ran: list[str] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    job = queue.enqueue("t.x", {})
    worker = Worker(queue, types({"t.x": handler}), worker_id="w1")
    try:
        [claimed] = queue.claim("w1", 1, 30.0)
        assert worker._start(claimed, time.monotonic() + 30.0)
        entry = worker._running[job.id]
        assert worker._stop_run(entry, "shutdown")
        assert entry.task is not None
        await asyncio.wait_for(asyncio.gather(entry.task, return_exceptions=True), 10)
    finally:
        worker._calls.close()
    assert ran == []
    after = queue.get(job.id)
    assert (after.state, after.attempts, after.worker_id) == (JobState.QUEUED, 0, None)


async def test_slow_heartbeat_renews_the_lease_from_when_it_was_sent(
    queue: SqliteJobQueue, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heartbeat that takes 15 s (a locked database) renews the lease from when it was sent:
    # the database counts the new lease from then, so counting from the answer would keep
    # the run going up to 15 s after another worker may have claimed the job.
    clock = ManualClock(1000.0)
    blocker = Blocker()
    real = queue.heartbeat
    mode = "pass"
    slow_done = asyncio.Event()
    loop = asyncio.get_running_loop()
    failed: list[float] = []

    def heartbeat(worker_id: str, job_ids: Sequence[str], lease_s: float) -> HeartbeatResult:
        nonlocal mode
        if mode == "slow":
            clock.now += 15.0  # the call took 15 s by the worker's clock
            result = real(worker_id, job_ids, lease_s)
            mode = "fail"
            loop.call_soon_threadsafe(slow_done.set)
            return result
        if mode == "fail":
            failed.append(clock.now)
            raise OperationalError("injected: heartbeat failed")
        return real(worker_id, job_ids, lease_s)

    monkeypatch.setattr(queue, "heartbeat", heartbeat)
    queue.enqueue("t.x", {})
    worker = Worker(queue, types({"t.x": blocker.handler}), lease_s=30, clock=clock, grace_s=0)
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(blocker.started.wait(), 5)
        # Claimed at 1000 (lease to 1030). The slow beat is sent at 1010 and answers at 1025:
        # the lease now runs to 1040 (fenced from 1039.75), not to 1055.
        clock.now = 1010.0
        mode = "slow"
        await asyncio.wait_for(slow_done.wait(), 5)
        n = len(failed)
        assert await wait_until(lambda: len(failed) >= n + 2)
        assert not blocker.cancelled.is_set()  # renewed: 1025 is past the first lease's fence
        clock.now = 1039.8
        await asyncio.wait_for(blocker.cancelled.wait(), 5)
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 10)
    assert "no heartbeat got through in time" in log_stream.getvalue()
