"""The async worker against a real SQLite queue, in one process."""

from __future__ import annotations

import asyncio
import collections
import io
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeops.core.errors import UsageError
from homeops.core.jobs import JobContext, JobState, SqliteJobQueue, Worker, install_signal_handlers
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
    worker = Worker(queue, {"t.noop": handler}, slots=10, metrics=metrics)
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
    await drain(Worker(queue, {"t.flaky": flaky}))
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
    await drain(Worker(queue, {"t.broken": broken}, metrics=metrics))
    final = queue.get(job.id)
    assert calls == 3
    assert final.state is JobState.FAILED
    assert final.attempts == 3
    assert final.error == "RuntimeError: disk on fire"
    assert metrics.counters == {"jobs_failed_total": 3.0}
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
    await drain(Worker(queue, {"t.picky": picky}))
    assert calls == 1
    assert queue.get(job.id).state is JobState.FAILED
    assert queue.get(job.id).error == "UsageError: bad host name"


async def test_unknown_type_fails_without_retry(queue: SqliteJobQueue) -> None:
    job = queue.enqueue("t.nobody", {}, max_attempts=3)
    await drain(Worker(queue, {}, any_type=True))
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
    await drain(Worker(queue, {"t.slow": slow}))
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
    await drain(Worker(queue, {"t.x": raises}))
    assert queue.get(job.id).error == "TimeoutError: peer did not answer"


async def test_unserialisable_result_fails(queue: SqliteJobQueue) -> None:
    async def weird(ctx: JobContext) -> object:
        return object()

    job = queue.enqueue("t.x", {})
    await drain(Worker(queue, {"t.x": weird}))
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
    await drain(Worker(queue, {"t.x": handler}))
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
    worker = Worker(queue, {"t.long": long}, lease_s=30, metrics=metrics)
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
    worker = Worker(queue, {"t.x": handler}, slots=2, grace_s=0.5)
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
    worker = Worker(queue, {"t.x": handler}, grace_s=30)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.request_stop()
    await asyncio.sleep(0.05)
    assert not run.done()
    worker.request_stop()
    await asyncio.wait_for(run, 2)
    assert queue.get(job.id).state is JobState.QUEUED


async def test_signal_handlers_stop_the_worker(queue: SqliteJobQueue) -> None:
    import os
    import signal

    worker = Worker(queue, {})
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
    await drain(Worker(queue, {"t.x": handler}, worker_id="w-test"))
    lines = log_stream.getvalue().splitlines()
    [hi] = [line for line in lines if "handler says hi" in line]
    assert f"job_id={job.id} trace_id=trace-abc job_type=t.x" in hi
    [done] = [line for line in lines if "job succeeded" in line]
    assert "duration_ms=" in done
    assert "attempt=1" in done


def test_worker_refuses_bad_settings(queue: SqliteJobQueue) -> None:
    with pytest.raises(UsageError, match="slots"):
        Worker(queue, {}, slots=0)
    with pytest.raises(UsageError, match="heartbeat_interval"):
        Worker(queue, {}, lease_s=30, heartbeat_interval=5)
    with pytest.raises(UsageError, match="invalid job id"):
        Worker(queue, {}, worker_id="../w")
    assert Worker(queue, {}).worker_id


async def test_stop_already_set_claims_nothing(queue: SqliteJobQueue) -> None:
    job = queue.enqueue("t.x", {})
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(Worker(queue, {}).run(stop), 2)
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
        await drain(Worker(q, {"t.x": handler}, metrics=registry))
    snap = registry.snapshot()
    assert snap["jobs_enqueued_total"] == 4
    assert snap["jobs_completed_total"] == 3
    assert snap["jobs_failed_total"] == 1
    assert snap["jobs_running"] == 0


async def test_workers_claim_only_their_types(queue: SqliteJobQueue) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def handler(name: str):
        async def run(ctx: JobContext) -> None:
            seen[name].append(ctx.job.type)

        return run

    for _ in range(20):
        queue.enqueue("builds.build", {})
        queue.enqueue("windows.exec", {})
    other = queue.enqueue("fleet.deploy", {})
    await asyncio.gather(
        drain(Worker(queue, {"builds.build": handler("a")}, worker_id="wa")),
        drain(Worker(queue, {"windows.exec": handler("b")}, worker_id="wb")),
    )
    assert seen["a"] == ["builds.build"] * 20
    assert seen["b"] == ["windows.exec"] * 20
    # Nobody runs fleet jobs here: it waits for a fleet worker instead of failing.
    assert queue.get(other.id).state is JobState.QUEUED
