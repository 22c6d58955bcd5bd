"""The async worker against a real SQLite queue, in one process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import itertools
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from homeops.core.errors import OperationalError, UsageError
from homeops.core.jobs import (
    HeartbeatResult,
    Job,
    JobContext,
    JobState,
    SqliteJobQueue,
    Worker,
    install_signal_handlers,
)
from tests.core.job_type_helpers import types
from tests.core.test_jobs_sqlite import Recorder

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(state_dir: Path) -> Iterator[SqliteJobQueue]:
    q = SqliteJobQueue(state_dir / "jobs.db", backoff_base_s=0.01)
    yield q
    q.close()


async def drain(worker: Worker, timeout: float = 20.0) -> None:
    await asyncio.wait_for(worker.run(drain=True), timeout)


async def wait_for_state(queue: SqliteJobQueue, job_id: str, state: JobState) -> None:
    for _ in range(500):
        if queue.get(job_id).state is state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} did not reach {state}")


async def test_1000_jobs_run_exactly_once(queue: SqliteJobQueue) -> None:
    calls: collections.Counter[str] = collections.Counter()
    running = 0
    peak = 0

    async def handler(ctx: JobContext) -> dict[str, int]:
        nonlocal running, peak
        calls[ctx.job.id] += 1
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(random.uniform(0, 0.002))
        running -= 1
        return {"n": ctx.job.payload["n"]}

    ids = [queue.enqueue("t.noop", {"n": n}).id for n in range(1000)]
    metrics = Recorder()
    worker = Worker(queue, types({"t.noop": handler}), slots=10, metrics=metrics)
    await drain(worker)

    assert sorted(calls) == sorted(ids)
    assert set(calls.values()) == {1}
    assert peak == 10
    assert queue.counts()[JobState.SUCCEEDED] == 1000
    for job in queue.list(limit=1000):
        assert job.state is JobState.SUCCEEDED
        assert job.attempts == 1
        assert job.result == {"n": job.payload["n"]}
    assert metrics.counters == {"jobs_completed_total": 1000.0}
    assert metrics.gauges["jobs_running"] == 0.0


async def test_retry_with_backoff_then_success(queue: SqliteJobQueue) -> None:
    starts: list[float] = []

    async def flaky(ctx: JobContext) -> str:
        starts.append(time.monotonic())
        if ctx.job.attempts < 3:
            raise RuntimeError(f"transient {ctx.job.attempts}")
        return "ok"

    job = queue.enqueue("t.flaky", {}, max_attempts=3)
    await drain(Worker(queue, types({"t.flaky": flaky})))
    done = queue.get(job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 3
    assert done.result == "ok"
    # Backoff 0.01 s then 0.02 s (base 0.01, doubling).
    assert starts[1] - starts[0] >= 0.01
    assert starts[2] - starts[1] >= 0.02


async def test_retries_exhausted_then_failed(
    queue: SqliteJobQueue, log_stream: io.StringIO
) -> None:
    calls = 0

    async def broken(ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("disk on fire")

    metrics = Recorder()
    job = queue.enqueue("t.broken", {}, max_attempts=3)
    await drain(Worker(queue, types({"t.broken": broken}), metrics=metrics))
    final = queue.get(job.id)
    assert calls == 3
    assert final.state is JobState.FAILED
    assert final.attempts == 3
    assert final.error == "RuntimeError: disk on fire"
    # One failed job, not one per failed attempt (the seed's "total jobs failed").
    assert metrics.counters == {"jobs_failed_total": 1.0}
    logs = log_stream.getvalue()
    assert logs.count("job failed; will retry") == 2
    assert 'msg="job failed" err="RuntimeError: disk on fire"' in logs
    assert f"job_id={job.id} trace_id={job.trace_id} job_type=t.broken" in logs


async def test_usage_error_is_not_retried(queue: SqliteJobQueue) -> None:
    calls = 0

    async def picky(ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        raise UsageError("bad host name")

    job = queue.enqueue("t.picky", {}, max_attempts=3)
    await drain(Worker(queue, types({"t.picky": picky})))
    assert calls == 1
    assert queue.get(job.id).state is JobState.FAILED
    assert queue.get(job.id).error == "UsageError: bad host name"


async def test_unknown_type_fails_without_retry(queue: SqliteJobQueue) -> None:
    job = queue.enqueue("t.nobody", {}, max_attempts=3)
    await drain(Worker(queue, [], any_type=True))
    final = queue.get(job.id)
    assert final.state is JobState.FAILED
    assert final.attempts == 1
    assert final.error == "no handler for job type 't.nobody'"


async def test_per_job_timeout(queue: SqliteJobQueue) -> None:
    calls = 0

    async def slow(ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(30)

    job = queue.enqueue("t.slow", {}, timeout_s=0.1, max_attempts=2)
    t0 = time.monotonic()
    await drain(Worker(queue, types({"t.slow": slow})))
    elapsed = time.monotonic() - t0
    final = queue.get(job.id)
    assert final.state is JobState.FAILED
    assert final.error == "timed out after 0.1s"
    assert calls == 2  # a timeout is retryable
    assert elapsed < 2.0


async def test_handler_own_timeout_error_is_an_ordinary_failure(queue: SqliteJobQueue) -> None:
    async def raises(ctx: JobContext) -> None:
        raise TimeoutError("peer did not answer")

    job = queue.enqueue("t.x", {}, timeout_s=10, max_attempts=1)
    await drain(Worker(queue, types({"t.x": raises})))
    assert queue.get(job.id).error == "TimeoutError: peer did not answer"


async def test_unserialisable_result_fails(queue: SqliteJobQueue) -> None:
    async def weird(ctx: JobContext) -> object:
        return object()

    job = queue.enqueue("t.x", {})
    await drain(Worker(queue, types({"t.x": weird})))
    final = queue.get(job.id)
    assert final.state is JobState.FAILED
    assert final.attempts == 1
    assert "not JSON-serialisable" in (final.error or "")


async def test_cancel_queued_job_never_runs(queue: SqliteJobQueue) -> None:
    ran: list[str] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    keep = queue.enqueue("t.x", {})
    drop = queue.enqueue("t.x", {})
    assert queue.cancel(drop.id).state is JobState.CANCELLED
    await drain(Worker(queue, types({"t.x": handler})))
    assert ran == [keep.id]
    assert queue.get(drop.id).state is JobState.CANCELLED


async def test_cancel_running_job_within_one_second(queue: SqliteJobQueue) -> None:
    started = asyncio.Event()
    stopped_at: list[float] = []
    saw_flag: list[bool] = []

    async def long(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped_at.append(time.monotonic())
            saw_flag.append(ctx.cancelled)
            raise

    metrics = Recorder()
    job = queue.enqueue("t.long", {})
    worker = Worker(queue, types({"t.long": long}), lease_s=30, metrics=metrics)
    run = asyncio.create_task(worker.run(drain=True))
    await asyncio.wait_for(started.wait(), 5)
    asked = time.monotonic()
    assert queue.cancel(job.id).cancel_requested
    await wait_for_state(queue, job.id, JobState.CANCELLED)
    await asyncio.wait_for(run, 5)
    assert stopped_at
    assert stopped_at[0] - asked < 1.0
    assert saw_flag == [True]
    final = queue.get(job.id)
    assert final.state is JobState.CANCELLED
    assert final.attempts == 1
    assert metrics.counters == {"jobs_cancelled_total": 1.0}


async def test_graceful_stop_finishes_or_requeues(queue: SqliteJobQueue) -> None:
    started: set[str] = set()
    both = asyncio.Event()

    async def handler(ctx: JobContext) -> str:
        started.add(ctx.job.id)
        if len(started) == 2:
            both.set()
        await asyncio.sleep(ctx.job.payload["sleep"])
        return "done"

    quick = queue.enqueue("t.x", {"sleep": 0.1})
    stuck = queue.enqueue("t.x", {"sleep": 30})
    worker = Worker(queue, types({"t.x": handler}), slots=2, grace_s=0.5)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(both.wait(), 5)
    stop.set()
    later = queue.enqueue("t.x", {"sleep": 0})
    t0 = time.monotonic()
    await asyncio.wait_for(run, 5)
    assert 0.4 < time.monotonic() - t0 < 2.0
    assert queue.get(quick.id).state is JobState.SUCCEEDED
    back = queue.get(stuck.id)
    assert back.state is JobState.QUEUED
    assert back.attempts == 0
    assert queue.get(later.id).state is JobState.QUEUED
    assert later.id not in started


async def test_second_stop_skips_grace(queue: SqliteJobQueue) -> None:
    started = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(30)

    job = queue.enqueue("t.x", {})
    worker = Worker(queue, types({"t.x": handler}), grace_s=30)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.request_stop()
    await asyncio.sleep(0.05)
    assert not run.done()
    worker.request_stop()
    await asyncio.wait_for(run, 2)
    assert queue.get(job.id).state is JobState.QUEUED


async def test_an_unrepeatable_run_is_failed_not_handed_back_at_stop(
    queue: SqliteJobQueue,
) -> None:
    started = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        ctx.mark_unrepeatable("sent the one-shot request")
        started.set()
        await asyncio.sleep(30)

    job = queue.enqueue("t.x", {}, max_attempts=3)
    worker = Worker(queue, types({"t.x": handler}), grace_s=0.05)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.request_stop()
    await asyncio.wait_for(run, 5)
    final = queue.get(job.id)
    assert (final.state, final.attempts) == (JobState.FAILED, 1)
    assert final.error is not None
    assert "not run again (sent the one-shot request)" in final.error


@pytest.mark.parametrize("unwind_s", [None, 3.0])
async def test_a_job_type_gets_the_unwind_time_it_asks_for(
    queue: SqliteJobQueue, monkeypatch: pytest.MonkeyPatch, unwind_s: float | None
) -> None:
    """A cancelled handler whose clean-up outlasts the worker's own unwind time is given up
    on (its lease expires later); one whose job type asks for longer is waited for, and its
    outcome is recorded before the worker returns."""
    import dataclasses

    import homeops.core.jobs.worker as worker_module

    monkeypatch.setattr(worker_module, "_UNWIND_S", 0.2)
    started = asyncio.Event()
    cleaned: list[str] = []

    async def handler(ctx: JobContext) -> None:
        ctx.mark_unrepeatable("containers stopped")
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.8)  # start the containers again, run the post hook
            cleaned.append(ctx.job.id)

    [job_type] = types({"t.x": handler})
    job_type = dataclasses.replace(job_type, unwind_s=unwind_s)
    job = queue.enqueue("t.x", {})
    worker = Worker(queue, [job_type], grace_s=0.05)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.request_stop()
    await asyncio.wait_for(run, 10)
    final = queue.get(job.id)
    if unwind_s is None:
        # Given up on: its clean-up was cut short (cancelled again), whether or not that
        # second cancellation got recorded before the worker returned.
        assert cleaned == []
        assert final.state in (JobState.RUNNING, JobState.FAILED)
    else:
        assert cleaned == [job.id]
        assert (final.state, final.attempts) == (JobState.FAILED, 1)


@pytest.mark.parametrize("taken_back", [False, True])
async def test_an_unrepeatable_failure_is_final_unless_taken_back(
    queue: SqliteJobQueue, taken_back: bool
) -> None:
    async def handler(ctx: JobContext) -> None:
        ctx.mark_unrepeatable("posted")
        assert ctx.unrepeatable == "posted"
        if taken_back:
            ctx.mark_unrepeatable(None)  # it turned out the request never arrived
        raise OperationalError("transient, would normally be retried")

    job = queue.enqueue("t.x", {}, max_attempts=2)
    await drain(Worker(queue, types({"t.x": handler})))
    final = queue.get(job.id)
    assert final.state is JobState.FAILED
    assert final.attempts == (2 if taken_back else 1)


async def test_signal_handlers_stop_the_worker(queue: SqliteJobQueue) -> None:
    import os
    import signal

    worker = Worker(queue, [])
    remove = install_signal_handlers(worker)
    try:
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(run, 2)
    finally:
        remove()


async def test_handler_logger_and_context(queue: SqliteJobQueue, log_stream: io.StringIO) -> None:
    async def handler(ctx: JobContext) -> None:
        ctx.log.info("step", "handler says hi")

    job = queue.enqueue("t.x", {}, trace_id="trace-abc")
    await drain(Worker(queue, types({"t.x": handler}), worker_id="w-test"))
    lines = log_stream.getvalue().splitlines()
    [hi] = [line for line in lines if "handler says hi" in line]
    assert f"job_id={job.id} trace_id=trace-abc job_type=t.x" in hi
    [done] = [line for line in lines if "job succeeded" in line]
    assert "duration_ms=" in done
    assert "attempt=1" in done


def test_worker_refuses_bad_settings(queue: SqliteJobQueue) -> None:
    with pytest.raises(UsageError, match="slots"):
        Worker(queue, [], slots=0)
    with pytest.raises(UsageError, match="heartbeat_interval"):
        Worker(queue, [], lease_s=30, heartbeat_interval=5)
    with pytest.raises(UsageError, match="invalid job id"):
        Worker(queue, [], worker_id="../w")
    assert Worker(queue, []).worker_id


async def test_stop_already_set_claims_nothing(queue: SqliteJobQueue) -> None:
    job = queue.enqueue("t.x", {})
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(Worker(queue, []).run(stop), 2)
    assert queue.get(job.id).state is JobState.QUEUED


async def test_counts_into_the_core_metrics_registry(state_dir: Path) -> None:
    from homeops.core.metrics import MetricsRegistry

    registry = MetricsRegistry.with_seed_metrics()

    async def handler(ctx: JobContext) -> None:
        if ctx.job.payload["fail"]:
            raise UsageError("no")

    with SqliteJobQueue(state_dir / "m.db", metrics=registry) as q:
        for n in range(4):
            q.enqueue("t.x", {"fail": n == 0})
        await drain(Worker(q, types({"t.x": handler}), metrics=registry))
    snap = registry.snapshot()
    assert snap["jobs_enqueued_total"] == 4
    assert snap["jobs_completed_total"] == 3
    assert snap["jobs_failed_total"] == 1
    assert snap["jobs_running"] == 0


async def test_workers_claim_only_their_types(queue: SqliteJobQueue) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def handler(name: str) -> Callable[[JobContext], Awaitable[None]]:
        async def run(ctx: JobContext) -> None:
            seen[name].append(ctx.job.type)

        return run

    for _ in range(20):
        queue.enqueue("builds.build", {})
        queue.enqueue("windows.exec", {})
    other = queue.enqueue("fleet.deploy", {})
    await asyncio.gather(
        drain(Worker(queue, types({"builds.build": handler("a")}), worker_id="wa")),
        drain(Worker(queue, types({"windows.exec": handler("b")}), worker_id="wb")),
    )
    assert seen["a"] == ["builds.build"] * 20
    assert seen["b"] == ["windows.exec"] * 20
    # Nobody runs fleet jobs here: it waits for a fleet worker instead of failing.
    assert queue.get(other.id).state is JobState.QUEUED


class Overlap:
    """A handler that sleeps ``hold`` seconds and tracks how many runs of each job overlap."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.active: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.runs: collections.Counter[str] = collections.Counter()
        self.started = asyncio.Event()

    async def handler(self, ctx: JobContext) -> str:
        job_id = ctx.job.id
        self.runs[job_id] += 1
        self.active[job_id] += 1
        self.peak[job_id] = max(self.peak[job_id], self.active[job_id])
        self.started.set()
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.active[job_id] -= 1
        return "done"


def broken_heartbeat(
    queue: SqliteJobQueue, mode: str, seconds: float
) -> Callable[[str, Sequence[str], float], HeartbeatResult]:
    """``queue.heartbeat``, but failing (``raise``) or hanging (``stall``) for ``seconds``."""
    real = queue.heartbeat
    until = time.monotonic() + seconds

    def heartbeat(worker_id: str, job_ids: Sequence[str], lease_s: float) -> HeartbeatResult:
        if time.monotonic() < until:
            if mode == "raise":
                raise OperationalError("injected: heartbeat failed")
            time.sleep(until - time.monotonic())
        return real(worker_id, job_ids, lease_s)

    return heartbeat


async def test_lapsed_lease_is_not_run_twice_by_the_same_worker(
    queue: SqliteJobQueue, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Heartbeats fail for longer than the lease, so the lease lapses and this worker's own
    # next claim takes the job again: the job must never run twice at the same time here.
    job = queue.enqueue("t.x", {}, max_attempts=20)
    monkeypatch.setattr(queue, "heartbeat", broken_heartbeat(queue, "raise", 1.2))
    overlap = Overlap(hold=0.8)
    metrics = Recorder()
    await drain(Worker(queue, types({"t.x": overlap.handler}), lease_s=0.6, metrics=metrics))
    final = queue.get(job.id)
    assert final.state is JobState.SUCCEEDED
    assert final.result == "done"
    assert overlap.peak[job.id] == 1
    assert metrics.counters.get("jobs_completed_total") == 1.0
    assert "lease lost; stopping local run" in log_stream.getvalue()


@pytest.mark.parametrize("mode", ["raise", "stall"])
async def test_lapsed_lease_is_not_run_by_two_workers_at_once(
    state_dir: Path, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # Worker 1's heartbeat fails or hangs for longer than its lease while worker 2 waits to
    # take the lapsed job. (In one process both queues share one connection; the hang is in
    # worker 1's call, outside it, as a slow heartbeat of another process would be.)
    path = state_dir / "jobs.db"
    with SqliteJobQueue(path) as q1, SqliteJobQueue(path) as q2:
        job = q1.enqueue("t.x", {}, max_attempts=20)
        overlap = Overlap(hold=1.0)
        m1, m2 = Recorder(), Recorder()
        w1 = Worker(q1, types({"t.x": overlap.handler}), lease_s=0.6, worker_id="w1", metrics=m1)
        w2 = Worker(q2, types({"t.x": overlap.handler}), lease_s=0.6, worker_id="w2", metrics=m2)
        run1 = asyncio.create_task(drain(w1))
        await asyncio.wait_for(overlap.started.wait(), 5)
        monkeypatch.setattr(q1, "heartbeat", broken_heartbeat(q1, mode, 1.5))
        await asyncio.gather(run1, drain(w2))
        final = q1.get(job.id)
    assert final.state is JobState.SUCCEEDED
    assert overlap.peak[job.id] == 1
    done = m1.counters.get("jobs_completed_total", 0) + m2.counters.get("jobs_completed_total", 0)
    assert done == 1.0
    assert overlap.runs[job.id] >= 2
    assert "lease lost; stopping local run" in log_stream.getvalue()


def hold_write_lock(path: Path, locked: threading.Event, seconds: float) -> None:
    """What another process does: take the database's write lock and keep it a while."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_locked_database_does_not_freeze_the_worker(state_dir: Path) -> None:
    # Another process holds the write lock for 4 s. Queue calls wait for it (busy timeout
    # 10 s), but the event loop keeps going: ticks, per-job timeouts and stops stay on time.
    # The bounds are generous (a loaded machine is slow), but a frozen loop would show the
    # whole 4 s lock as one gap and every stop at or after the unlock.
    lock_s = 4.0
    path = state_dir / "jobs.db"
    stopped: dict[str, float] = {}
    started = asyncio.Event()
    running: set[str] = set()

    async def long(ctx: JobContext) -> None:
        running.add(ctx.job.id)
        if len(running) == 2:
            started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped[ctx.job.id] = time.monotonic()
            raise

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    with SqliteJobQueue(path) as queue:
        timed_out = queue.enqueue("t.long", {}, timeout_s=0.6, max_attempts=1)
        stopped_early = queue.enqueue("t.long", {})
        worker = Worker(queue, types({"t.long": long}), grace_s=0.8)
        run = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 5)
        t_start = time.monotonic()
        tick = asyncio.create_task(ticker())
        locked = threading.Event()
        holder = asyncio.create_task(asyncio.to_thread(hold_write_lock, path, locked, lock_s))
        assert await asyncio.to_thread(locked.wait, 5)
        t_lock = time.monotonic()
        worker.request_stop()  # grace 0.8 s: the remaining job is cancelled at ~t_lock + 0.8
        await asyncio.wait_for(holder, 15)
        t_unlock = time.monotonic()
        await asyncio.wait_for(run, 20)
        tick.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick
        final_timed_out = queue.get(timed_out.id)
        final_stopped = queue.get(stopped_early.id)

    assert t_unlock - t_lock >= lock_s - 0.1
    # The timeout (due at ~t_start + 0.6) and the shutdown cancel (due at t_lock + 0.8) both
    # fell inside the lock and happened on time, not when the lock was let go.
    assert stopped[timed_out.id] - (t_start + 0.6) < 2.0
    assert stopped[stopped_early.id] - (t_lock + 0.8) < 2.0
    assert stopped[stopped_early.id] > t_lock + 0.7  # the grace period was given
    assert stopped[timed_out.id] < t_unlock
    assert stopped[stopped_early.id] < t_unlock
    during = [t for t in ticks if t_lock <= t <= t_unlock]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) >= 5
    assert max(gaps) < 1.5
    # And the outcomes were recorded once the lock was free.
    assert final_timed_out.state is JobState.FAILED
    assert final_timed_out.error == "timed out after 0.6s"
    assert final_stopped.state is JobState.QUEUED
    assert final_stopped.attempts == 0


async def test_handler_that_swallows_cancel_and_completes_succeeds_with_warning(
    queue: SqliteJobQueue, log_stream: io.StringIO
) -> None:
    started = asyncio.Event()

    async def stubborn(ctx: JobContext) -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # finishes its work regardless
            await asyncio.sleep(30)
        return "finished anyway"

    metrics = Recorder()
    job = queue.enqueue("t.x", {})
    run = asyncio.create_task(
        Worker(queue, types({"t.x": stubborn}), metrics=metrics).run(drain=True)
    )
    await asyncio.wait_for(started.wait(), 5)
    assert queue.cancel(job.id).cancel_requested
    await asyncio.wait_for(run, 5)
    final = queue.get(job.id)
    assert final.state is JobState.SUCCEEDED
    assert final.result == "finished anyway"
    assert metrics.counters == {"jobs_completed_total": 1.0}
    [line] = [ln for ln in log_stream.getvalue().splitlines() if "cancel requested but" in ln]
    assert "level=warn" in line
    assert f"job_id={job.id}" in line


async def test_short_lease_against_busy_timeout_is_warned(
    state_dir: Path, log_stream: io.StringIO
) -> None:
    stop = asyncio.Event()
    stop.set()
    with SqliteJobQueue(state_dir / "b.db", busy_timeout_s=10.0) as q:
        await asyncio.wait_for(Worker(q, [], lease_s=30.0).run(stop), 2)
        assert "busy timeout" not in log_stream.getvalue()
        await asyncio.wait_for(Worker(q, [], lease_s=10.5).run(stop), 2)
        assert "busy timeout" not in log_stream.getvalue()
        # The boundary: a lease exactly as long as the busy timeout is warned too.
        await asyncio.wait_for(Worker(q, [], lease_s=10.0).run(stop), 2)
        warned = "lease is not longer than the queue's busy timeout"
        assert log_stream.getvalue().count(warned) == 1
        await asyncio.wait_for(Worker(q, [], lease_s=5.0).run(stop), 2)
        assert log_stream.getvalue().count(warned) == 2


@pytest.mark.parametrize("cancels", [1, 2])
async def test_cancelling_run_hands_running_jobs_back(
    queue: SqliteJobQueue, log_stream: io.StringIO, cancels: int
) -> None:
    # run() itself is cancelled (asyncio.run's Ctrl-C, a TaskGroup, wait_for): the running
    # jobs are stopped and handed back before run() re-raises, so nothing waits for a lease.
    # A second cancel while it unwinds does not cut the (bounded) hand-back short.
    started = asyncio.Event()
    unwound: list[str] = []

    async def long(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            unwound.append(ctx.job.id)

    job = queue.enqueue("t.long", {})
    worker = Worker(queue, types({"t.long": long}), lease_s=30)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    assert queue.get(job.id).state is JobState.RUNNING
    for _ in range(cancels):
        run.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 5)
    assert unwound == [job.id]
    back = queue.get(job.id)
    assert back.state is JobState.QUEUED
    assert back.attempts == 0
    assert back.worker_id is None
    assert back.lease_until is None
    assert worker.running_ids == []
    logs = log_stream.getvalue()
    assert "could not record" not in logs
    assert "job queue calls stopped" not in logs
    assert "job handed back to the queue" in logs


async def test_cancelling_run_mid_claim_hands_the_claimed_jobs_back(
    queue: SqliteJobQueue, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run() is cancelled while a claim waits in the queue thread (a locked database): the
    # claim still goes through there, and the jobs it took go straight back, unrun.
    real_claim = queue.claim
    entered, release = threading.Event(), threading.Event()

    def slow_claim(*args: Any, **kwargs: Any) -> list[Job]:
        entered.set()
        release.wait(10)
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(queue, "claim", slow_claim)
    jobs = [queue.enqueue("t.x", {"n": n}) for n in range(3)]
    ran: list[str] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    run = asyncio.create_task(Worker(queue, types({"t.x": handler}), lease_s=30).run())
    assert await asyncio.to_thread(entered.wait, 5)
    run.cancel()
    await asyncio.sleep(0.05)
    assert not run.done()  # waiting for the claim's answer to hand its jobs back
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 5)
    assert ran == []
    for job in jobs:
        back = queue.get(job.id)
        assert (back.state, back.attempts, back.worker_id) == (JobState.QUEUED, 0, None)
    assert "could not" not in log_stream.getvalue()


def test_default_heartbeat_interval_is_a_third_of_the_lease(queue: SqliteJobQueue) -> None:
    assert Worker(queue, [], lease_s=0.6).heartbeat_interval == pytest.approx(0.2)
    assert Worker(queue, [], lease_s=0.3).heartbeat_interval == pytest.approx(0.1)
    # Capped for prompt cancels.
    assert Worker(queue, [], lease_s=30).heartbeat_interval == pytest.approx(0.25)
    assert Worker(queue, [], lease_s=0.6, heartbeat_interval=0.15).heartbeat_interval == 0.15
    with pytest.raises(UsageError, match="heartbeat_interval"):
        Worker(queue, [], lease_s=0.6, heartbeat_interval=0.21)


async def test_heartbeats_keep_a_job_longer_than_its_lease(
    queue: SqliteJobQueue, log_stream: io.StringIO
) -> None:
    # The job runs about three leases long; working heartbeats keep renewing it, so it is
    # never fenced nor re-claimed and succeeds on its first attempt.
    overlap = Overlap(hold=1.8)
    job = queue.enqueue("t.x", {}, max_attempts=5)
    await drain(Worker(queue, types({"t.x": overlap.handler}), lease_s=0.6))
    final = queue.get(job.id)
    assert final.state is JobState.SUCCEEDED
    assert final.result == "done"
    assert final.attempts == 1
    assert overlap.runs[job.id] == 1
    logs = log_stream.getvalue()
    assert "lease lost" not in logs
    assert "re-taken" not in logs


class ManualClock:
    """A worker clock that only moves when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def failing_heartbeats(queue: SqliteJobQueue, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make every heartbeat fail; returns the (growing) list of heartbeat call times.

    The heartbeat loop fences before it sends a beat, so once two more calls have come in
    after a clock change, at least one fence has seen the new time.
    """
    calls: list[float] = []

    def heartbeat(worker_id: str, job_ids: Sequence[str], lease_s: float) -> HeartbeatResult:
        calls.append(time.monotonic())
        raise OperationalError("injected: heartbeat failed")

    monkeypatch.setattr(queue, "heartbeat", heartbeat)
    return calls


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class Blocker:
    """A handler that waits for ``release`` and records whether it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def handler(self, ctx: JobContext) -> str:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "done"


async def test_run_is_fenced_one_heartbeat_interval_before_its_lease_runs_out(
    queue: SqliteJobQueue, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(1000.0)
    beats = failing_heartbeats(queue, monkeypatch)
    blocker = Blocker()
    job = queue.enqueue("t.x", {})
    worker = Worker(queue, types({"t.x": blocker.handler}), lease_s=30, clock=clock, grace_s=0)
    assert worker.heartbeat_interval == 0.25
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(blocker.started.wait(), 5)
        # Claimed at 1000 with a 30 s lease: the lease runs out at 1030 by the worker's
        # clock, and no heartbeat gets through, so the run is fenced from 1029.75 on.
        clock.now = 1029.7
        n = len(beats)
        assert await wait_until(lambda: len(beats) >= n + 2)
        assert not blocker.cancelled.is_set()
        assert "lease lost" not in log_stream.getvalue()
        clock.now = 1029.8  # still before the deadline itself
        await asyncio.wait_for(blocker.cancelled.wait(), 5)
        assert await wait_until(lambda: worker.running_ids == [])
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 10)
    [line] = [ln for ln in log_stream.getvalue().splitlines() if "lease lost" in ln]
    assert "stopping local run" in line
    assert "no heartbeat got through in time" in line
    # Nothing was recorded for the fenced run: the lease in the database decides.
    after = queue.get(job.id)
    assert (after.state, after.attempts, after.worker_id) == (
        JobState.RUNNING,
        1,
        worker.worker_id,
    )


async def test_reclaim_of_a_live_local_run_extends_its_lease(
    state_dir: Path, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database's clock runs ahead, so the lease lapses there while the local run is
    # live; this worker's next claim re-takes the job. The local run keeps going, and under
    # the fresh lease: it must not be fenced by the deadline of the first claim.
    skew = 0.0
    clock = ManualClock(1000.0)
    blocker = Blocker()
    with SqliteJobQueue(state_dir / "jobs.db", clock=lambda: time.time() + skew) as q:
        real_claim = q.claim
        claims = 0

        def counting_claim(*args: Any, **kwargs: Any) -> list[Job]:
            nonlocal claims
            claims += 1
            return real_claim(*args, **kwargs)

        monkeypatch.setattr(q, "claim", counting_claim)
        beats = failing_heartbeats(q, monkeypatch)
        job = q.enqueue("t.x", {}, max_attempts=5)
        worker = Worker(q, types({"t.x": blocker.handler}), lease_s=30, clock=clock, grace_s=0)
        run = asyncio.create_task(worker.run(drain=True))
        try:
            await asyncio.wait_for(blocker.started.wait(), 5)
            # First lease: to 1030 by the worker's clock. Move to 1010 and let every claim
            # asked at 1000 finish (claims go one at a time), so the re-claim is asked at 1010.
            clock.now = 1010.0
            n = claims
            assert await wait_until(lambda: claims >= n + 2)
            skew = 60.0
            assert await wait_until(lambda: q.get(job.id).attempts == 2)
            assert "re-taken by this worker; the local run continues" in log_stream.getvalue()
            # Past the first lease (1030), well inside the fresh one (1040, fenced at 1039.75).
            clock.now = 1035.0
            n = len(beats)
            assert await wait_until(lambda: len(beats) >= n + 2 or blocker.cancelled.is_set())
            assert not blocker.cancelled.is_set()
            blocker.release.set()
            await asyncio.wait_for(run, 10)
        finally:
            if not run.done():
                worker.request_stop()
                await asyncio.wait_for(run, 10)
        final = q.get(job.id)
    assert final.state is JobState.SUCCEEDED
    assert final.result == "done"
    assert final.attempts == 2
    assert "lease lost" not in log_stream.getvalue()
