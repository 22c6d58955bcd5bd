"""core/jobs/here.py: a command's own jobs, run in its process, and no other job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from homeops.core.artifacts import ArtifactStore
from homeops.core.errors import UsageError
from homeops.core.jobs import JobContext, JobState, SqliteJobQueue
from homeops.core.jobs.here import run_here
from tests.core.job_type_helpers import types


@pytest.fixture
def queue(state_dir: Path):  # type: ignore[no-untyped-def]
    q = SqliteJobQueue(state_dir / "jobs.db")
    yield q
    q.close()


async def test_runs_its_jobs_in_order_and_leaves_the_others_queued(
    queue: SqliteJobQueue, state_dir: Path
) -> None:
    order: list[object] = []

    async def handler(ctx: JobContext) -> dict[str, object]:
        order.append(ctx.job.payload["n"])
        await ctx.artifacts.write_text("out.txt", f"n={ctx.job.payload['n']}", type="log")
        if ctx.job.payload["n"] == 2:
            raise UsageError("two is refused")
        return {"n": ctx.job.payload["n"]}

    by_name = {t.name: t for t in types({"t.here": handler})}
    # Another process's job of the same type, queued first: not ours to run.
    theirs = queue.enqueue("t.here", {"n": 0})
    store = ArtifactStore(state_dir / "artifacts")
    done = await asyncio.wait_for(
        run_here(queue, by_name, [("t.here", {"n": 1}), ("t.here", {"n": 2})], artifacts=store),
        20,
    )
    assert order == [1, 2]
    assert [(j.state, j.attempts) for j in done] == [
        (JobState.SUCCEEDED, 1),
        (JobState.FAILED, 1),
    ]
    assert done[0].result == {"n": 1}
    assert done[1].error is not None and "two is refused" in done[1].error
    assert store.job_dir(done[0].id).joinpath("out.txt").read_text() == "n=1"
    assert queue.get(theirs.id).state is JobState.QUEUED


async def test_a_bad_payload_stores_nothing(queue: SqliteJobQueue, state_dir: Path) -> None:
    async def handler(ctx: JobContext) -> None:
        raise AssertionError("must not run")

    by_name = {t.name: t for t in types({"t.here": handler})}
    with pytest.raises(UsageError, match=r"unknown job type 't\.other'"):
        await run_here(
            queue,
            by_name,
            [("t.here", {}), ("t.other", {})],
            artifacts=ArtifactStore(state_dir / "artifacts"),
        )
    assert queue.list() == []


async def test_a_stop_request_ends_the_run_and_hands_a_repeatable_job_back(
    queue: SqliteJobQueue, state_dir: Path
) -> None:
    started = asyncio.Event()

    async def slow(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(30)

    by_name = {t.name: t for t in types({"t.slow": slow})}
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_here(
            queue,
            by_name,
            [("t.slow", {})],
            artifacts=ArtifactStore(state_dir / "artifacts"),
            grace_s=0.1,
            stop=stop,
        )
    )
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    [job] = await asyncio.wait_for(run, 10)
    # Not run to the end, and not lost: queued again for a worker (the handler did not
    # mark itself unrepeatable).
    assert job.state is JobState.QUEUED
