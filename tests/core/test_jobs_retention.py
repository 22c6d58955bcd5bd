"""Retention and the schema 2 store: prune, counters kept by triggers, the migration of a
schema 1 store, query plans that stay flat, `jobs prune` and `jobs check --repair`."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeops.core.config import load_settings
from homeops.core.errors import OperationalError, UsageError
from homeops.core.jobs import JobContext, JobState, SqliteJobQueue, Worker
from homeops.core.jobs.retention import DAY_S, prune_finished_jobs
from homeops.core.jobs.sqlite import check_store, repair_store
from homeops.core.settings import CORE_SPEC
from tests.core.job_type_helpers import types
from tests.core.test_cli import run_main
from tests.core.test_jobs_sqlite import FakeClock

pytestmark = pytest.mark.integration

DAY = DAY_S


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteJobQueue]:
    q = SqliteJobQueue(tmp_path / "jobs.db", clock=clock, backoff_base_s=60.0)
    yield q
    q.close()


def grouped(path: Path) -> dict[tuple[str, str], int]:
    """The truth the counters must match: a GROUP BY over the rows, on its own connection."""
    raw = sqlite3.connect(path)
    try:
        return {
            (t, s): n
            for t, s, n in raw.execute("SELECT type, state, COUNT(*) FROM jobs GROUP BY 1, 2")
        }
    finally:
        raw.close()


def assert_counts_exact(q: SqliteJobQueue) -> None:
    truth = grouped(q.path)
    for wanted in (None, ["t.a"], ["t.b", "t.rare"], ["t.none"]):
        expected = dict.fromkeys(JobState, 0)
        for (job_type, state), n in truth.items():
            if wanted is None or job_type in wanted:
                expected[JobState(state)] += n
        assert q.counts(types=wanted) == expected, wanted
    assert q.counter_problems() == []


def ids(q: SqliteJobQueue) -> set[str]:
    return {j.id for j in q.list(limit=10_000)}


# -- prune ------------------------------------------------------------------------------


def test_prune_removes_only_finished_jobs_past_the_cutoff(
    queue: SqliteJobQueue, clock: FakeClock
) -> None:
    # Everything below is 10 days old, except the succeeded job finished 1 day ago.
    queued = queue.enqueue("t.a", {}).id
    retrying, running, succeeded, failed, recent = (
        queue.enqueue("t.a", {"n": i}).id for i in range(5)
    )
    cancelled = queue.enqueue("t.b", {}).id
    queue.cancel(cancelled)
    claimed = {j.id for j in queue.claim("w1", 10, lease_s=100 * DAY)}
    assert claimed == {queued, retrying, running, succeeded, failed, recent}
    queue.requeue(queued, "w1")  # handed back: queued again
    assert queue.fail(retrying, "w1", "boom")  # attempts left: waits to be retried
    assert queue.complete(succeeded, "w1", 1)
    assert queue.fail(failed, "w1", "final", retryable=False)
    clock.advance(9 * DAY)
    assert queue.complete(recent, "w1", 2)
    clock.advance(1 * DAY)

    assert queue.prune(older_than_s=5 * DAY, dry_run=True) == 3
    assert len(ids(queue)) == 7  # a dry run deletes nothing
    assert queue.prune(older_than_s=5 * DAY) == 3
    assert ids(queue) == {queued, retrying, running, recent}
    assert queue.get(retrying).state is JobState.QUEUED
    assert queue.get(running).state is JobState.RUNNING
    assert queue.prune(older_than_s=5 * DAY) == 0
    # Strictly older: finished exactly one day ago is kept at a one-day cutoff.
    assert queue.prune(older_than_s=1 * DAY) == 0
    assert queue.prune(older_than_s=1 * DAY - 1) == 1
    assert_counts_exact(queue)


def test_prune_deletes_in_batches_until_nothing_is_left(
    queue: SqliteJobQueue, clock: FakeClock
) -> None:
    for i in range(53):
        job = queue.enqueue("t.a", {"n": i})
        queue.cancel(job.id)
    keep = queue.enqueue("t.a", {"keep": True}).id
    clock.advance(2 * DAY)
    statements: list[str] = []
    shared = queue._shared
    assert shared is not None
    shared.conn.set_trace_callback(statements.append)
    try:
        assert queue.prune(older_than_s=DAY, batch_size=7) == 53
    finally:
        shared.conn.set_trace_callback(None)
    # 53 rows at 7 a batch: 7 full batches and the short one that ends the loop, each its
    # own transaction (the write lock is let go in between).
    assert statements.count("BEGIN IMMEDIATE") == 8
    assert statements.count("COMMIT") == 8
    assert ids(queue) == {keep}
    assert_counts_exact(queue)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"older_than_s": 0}, "older_than_s must be > 0", id="zero"),
        pytest.param({"older_than_s": -1.0}, "older_than_s must be > 0", id="negative"),
        pytest.param({"older_than_s": float("nan")}, "finite", id="nan"),
        pytest.param({"older_than_s": float("inf")}, "finite", id="inf"),
        pytest.param({"older_than_s": 1.0, "batch_size": 0}, "batch_size", id="batch-zero"),
    ],
)
def test_prune_refuses_bad_arguments(queue: SqliteJobQueue, kwargs, message) -> None:
    with pytest.raises(UsageError, match=message):
        queue.prune(**kwargs)


def test_dry_run_works_read_only_and_prune_does_not(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "jobs.db"
    with SqliteJobQueue(path, clock=clock) as q:
        q.cancel(q.enqueue("t.a", {}).id)
    clock.advance(2 * DAY)
    with SqliteJobQueue(path, clock=clock, readonly=True) as ro:
        assert ro.prune(older_than_s=DAY, dry_run=True) == 1
        with pytest.raises(OperationalError, match="read-only"):
            ro.prune(older_than_s=DAY)
    missing = tmp_path / "missing.db"
    with SqliteJobQueue(missing, readonly=True) as ro:
        assert ro.prune(older_than_s=DAY, dry_run=True) == 0
    assert not missing.exists()


# -- counters ---------------------------------------------------------------------------


def test_counters_stay_exact_under_every_transition(
    queue: SqliteJobQueue, clock: FakeClock
) -> None:
    rng = random.Random(6)
    job_types = ["t.a", "t.a", "t.a", "t.b", "t.rare"]
    for step in range(400):
        op = rng.choice(["enqueue"] * 3 + ["claim", "finish", "cancel", "prune", "expire"])
        match op:
            case "enqueue":
                queue.enqueue(rng.choice(job_types), {"step": step}, max_attempts=2)
            case "claim":
                queue.claim(f"w{rng.randrange(2)}", rng.randrange(1, 4), lease_s=30)
            case "finish":
                running = queue.list(state=JobState.RUNNING, limit=50)
                if running:
                    job = rng.choice(running)
                    worker = job.worker_id or ""
                    how = rng.choice(["complete", "fail", "fail-final", "requeue", "stopped"])
                    if how == "complete":
                        queue.complete(job.id, worker, None)
                    elif how == "fail":
                        queue.fail(job.id, worker, "x")
                    elif how == "fail-final":
                        queue.fail(job.id, worker, "x", retryable=False)
                    elif how == "requeue":
                        queue.requeue(job.id, worker)
                    else:
                        queue.cancel(job.id)
                        queue.mark_cancelled(job.id, worker)
            case "cancel":
                some = queue.list(limit=20)
                if some:
                    queue.cancel(rng.choice(some).id)
            case "prune":
                queue.prune(older_than_s=rng.choice([1.0, 50.0, 500.0]), batch_size=3)
            case "expire":
                clock.advance(rng.choice([1.0, 31.0, 120.0]))  # leases run out, backoffs end
        assert_counts_exact(queue)


def test_counters_after_the_random_walk_cover_every_state(
    queue: SqliteJobQueue, clock: FakeClock
) -> None:
    # The walk above only proves something if it reaches each state; this fixed script does.
    a = queue.enqueue("t.a", {}).id
    b = queue.enqueue("t.b", {}).id
    c = queue.enqueue("t.rare", {}).id
    queue.enqueue("t.rare", {"queued": True})
    queue.claim("w", 3, lease_s=30)
    queue.complete(a, "w", None)
    queue.fail(b, "w", "x", retryable=False)
    queue.cancel(c)
    queue.mark_cancelled(c, "w")
    queue.enqueue("t.a", {"running": True})
    queue.claim("w", 1, lease_s=30)
    assert {s for _t, s in grouped(queue.path)} == {str(s) for s in JobState}
    assert_counts_exact(queue)
    clock.advance(2 * DAY)
    assert queue.prune(older_than_s=DAY) == 3
    assert_counts_exact(queue)
    # Counter rows that fell to zero are cleared by the prune.
    raw = sqlite3.connect(queue.path)
    try:
        assert raw.execute("SELECT COUNT(*) FROM job_counts WHERE n = 0").fetchone()[0] == 0
    finally:
        raw.close()


def test_a_drifted_counter_is_reported_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with SqliteJobQueue(path) as q:
        for i in range(5):
            q.enqueue("t.a", {"n": i})
    raw = sqlite3.connect(path)
    raw.execute("UPDATE job_counts SET n = n + 2 WHERE type = 't.a'")
    raw.execute("DROP TRIGGER jobs_count_delete")
    raw.commit()
    raw.close()
    found = check_store(path)
    assert not found.ok
    assert found.repairable
    assert any("t.a queued counted 7, the table holds 5" in p for p in found.problems)
    assert any("trigger jobs_count_delete is missing" in p for p in found.problems)
    # doctor's quick check leaves the counters to the full check.
    assert check_store(path, quick=True).ok
    assert len(repair_store(path)) == 2
    assert check_store(path).ok
    assert repair_store(path) == []
    with SqliteJobQueue(path) as q:
        assert q.counts()[JobState.QUEUED] == 5
        q.cancel(q.list(limit=1)[0].id)
        assert_counts_exact(q)  # the restored trigger counts again


# -- query plans: what keeps counts and list --type flat ----------------------------------


def plans_of(q: SqliteJobQueue, call) -> list[str]:
    """The query plan of every SELECT that ``call`` runs on ``q``'s connection."""
    statements: list[str] = []
    shared = q._shared
    assert shared is not None
    shared.conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        shared.conn.set_trace_callback(None)
    raw = sqlite3.connect(q.path)
    try:
        return [
            " | ".join(str(r[3]) for r in raw.execute("EXPLAIN QUERY PLAN " + s))
            # The trace repeats a statement once per trigger run it causes.
            for s in dict.fromkeys(statements)
            if s.lstrip().startswith(("SELECT", "DELETE FROM jobs"))
        ]
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("call", "index"),
    [
        pytest.param(lambda q: q.counts(), "job_counts", id="counts"),
        pytest.param(lambda q: q.counts(types=["t.rare"]), "job_counts", id="counts-types"),
        pytest.param(lambda q: q.list(type="t.rare"), "INDEX jobs_type", id="list-type"),
        pytest.param(
            lambda q: q.list(type="t.rare", state=JobState.QUEUED),
            "INDEX jobs_type (type=?)",
            id="list-rare-type-common-state",
        ),
        pytest.param(
            lambda q: q.list(type="t.a", state=JobState.RUNNING),
            "INDEX jobs_state (state=?)",
            id="list-common-type-rare-state",
        ),
        pytest.param(lambda q: q.list(), "INDEX jobs_created", id="list"),
        pytest.param(
            lambda q: q.prune(older_than_s=1.0, dry_run=True),
            "INDEX jobs_created (created_at<?)",
            id="prune-dry-run",
        ),
        pytest.param(
            lambda q: q.prune(older_than_s=1.0), "INDEX jobs_created (created_at<?)", id="prune"
        ),
    ],
)
def test_reads_use_counters_or_an_index_never_a_table_scan(
    queue: SqliteJobQueue, call, index: str
) -> None:
    for i in range(20):
        queue.enqueue("t.a", {"n": i})
    # The last statement is the read itself (list(state, type) first asks the counters).
    plan = plans_of(queue, lambda: call(queue))[-1]
    assert index in plan
    # Only the default page walks a whole index, newest first, and stops after a page.
    assert "SCAN jobs" not in plan.replace("SCAN jobs USING INDEX jobs_created", "")


# -- migration from schema 1 ------------------------------------------------------------

# The schema 1 DDL exactly as homeops wrote it before schema 2 (sqlite.py at b660ecf).
SCHEMA_1 = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, payload TEXT NOT NULL,
        trace_id TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL, idempotency_key TEXT UNIQUE, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, started_at REAL, finished_at REAL, available_at REAL NOT NULL,
        lease_until REAL, worker_id TEXT, result TEXT, error TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0, timeout_s REAL
    )
    """,
    "CREATE INDEX jobs_due ON jobs(state, available_at)",
    "CREATE INDEX jobs_lease ON jobs(state, lease_until)",
    "CREATE INDEX jobs_state ON jobs(state, created_at)",
    "CREATE INDEX jobs_created ON jobs(created_at)",
)


def make_schema_1_store(path: Path, now: float) -> None:
    raw = sqlite3.connect(path)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        for stmt in SCHEMA_1:
            raw.execute(stmt)
        rows = [
            ("00000000000001aaaaaaaaaa", "t.a", "queued", None),
            ("00000000000002aaaaaaaaaa", "t.a", "running", None),
            ("00000000000003aaaaaaaaaa", "t.a", "succeeded", now - 9 * DAY),
            ("00000000000004aaaaaaaaaa", "t.rare", "failed", now - 9 * DAY),
            # A finished job without finished_at: the migration dates it by updated_at.
            ("00000000000005aaaaaaaaaa", "t.b", "cancelled", None),
            ("00000000000006aaaaaaaaaa", "t.b", "succeeded", now - 1 * DAY),
        ]
        for job_id, job_type, state, finished in rows:
            raw.execute(
                "INSERT INTO jobs (id, type, payload, trace_id, state, attempts, max_attempts, "
                "created_at, updated_at, finished_at, available_at) "
                "VALUES (?, ?, '{}', ?, ?, 1, 3, ?, ?, ?, ?)",
                (job_id, job_type, "0" * 32, state, now - 10 * DAY, now - 8 * DAY, finished, 0),
            )
        raw.execute("PRAGMA user_version = 1")
        raw.commit()
    finally:
        raw.close()


def user_version(path: Path) -> int:
    raw = sqlite3.connect(path)
    try:
        return int(raw.execute("PRAGMA user_version").fetchone()[0])
    finally:
        raw.close()


def test_schema_1_store_reads_read_only_then_migrates_on_a_writable_open(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "jobs.db"
    make_schema_1_store(path, clock.now)
    expected = {
        JobState.QUEUED: 1,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 2,
        JobState.FAILED: 1,
        JobState.CANCELLED: 1,
    }
    ro = SqliteJobQueue(path, clock=clock, readonly=True)
    try:
        # Read-only changes nothing: the old way of counting, on the old schema.
        assert ro.counts() == expected
        assert ro.counts(types=["t.b"])[JobState.SUCCEEDED] == 1
        assert [j.id for j in ro.list(type="t.rare")] == ["00000000000004aaaaaaaaaa"]
        assert ro.prune(older_than_s=5 * DAY, dry_run=True) == 2
        assert check_store(path).ok
        assert user_version(path) == 1

        with SqliteJobQueue(path, clock=clock) as rw:
            assert user_version(path) == 2
            assert rw.counts() == expected
            assert_counts_exact(rw)
            assert rw.get("00000000000005aaaaaaaaaa").finished_at == clock.now - 8 * DAY
            # The reader opened on schema 1 keeps reading correctly after the migration.
            rw.enqueue("t.rare", {})
            assert ro.counts(types=["t.rare"])[JobState.QUEUED] == 1
            assert len(ro.list(type="t.rare")) == 2
            # succeeded 9 days ago, failed 9 days ago, cancelled (dated) 8 days ago.
            assert rw.prune(older_than_s=5 * DAY) == 3
            assert_counts_exact(rw)
    finally:
        ro.close()
    assert check_store(path).ok


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteJobQueue(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    raw.close()
    for readonly in (False, True):
        with pytest.raises(OperationalError, match="schema version 3"):
            SqliteJobQueue(path, readonly=readonly)


# -- prune_finished_jobs and the settings -------------------------------------------------


def settings_for(state_dir: Path, **env: str):
    environ = {"HOME": str(state_dir), "HOMEOPS_STATE_DIR": str(state_dir), **env}
    return load_settings(CORE_SPEC, environ=environ).settings


def old_finished_jobs(path: Path, n: int, age_days: float) -> list[str]:
    """``n`` succeeded jobs that finished ``age_days`` ago by the real clock.

    (Claimed and completed, not cancelled: a cancel logs at info, and a CLI test's earlier
    ``main`` left the log handler on a captured stderr that is closed by now.)
    """
    then = FakeClock(time.time() - age_days * DAY)
    with SqliteJobQueue(path, clock=then) as q:
        for i in range(n):
            q.enqueue("t.a", {"n": i})
        done = []
        while claimed := q.claim("old-worker", 500, lease_s=60):
            for job in claimed:
                assert q.complete(job.id, "old-worker", None)
                done.append(job.id)
        return done


def test_prune_finished_jobs_follows_the_retention_setting(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert settings.jobs.retention_days == 30
    # No store: nothing to prune, and none is created.
    report = prune_finished_jobs(settings)
    assert (report.removed, report.older_than_s) == (0, 30 * DAY)
    assert not settings.jobs_db.exists()
    old_finished_jobs(settings.jobs_db, 3, age_days=40)
    old_finished_jobs(settings.jobs_db, 2, age_days=10)
    assert prune_finished_jobs(settings, dry_run=True).removed == 3
    never = settings_for(tmp_path, HOMEOPS_JOBS_RETENTION_DAYS="never")
    assert never.jobs.retention_days is None
    assert prune_finished_jobs(never).to_dict() == {
        "removed": 0,
        "dry_run": False,
        "older_than_s": None,
    }
    assert prune_finished_jobs(settings).removed == 3
    assert prune_finished_jobs(never, older_than_s=5 * DAY).removed == 2


@pytest.mark.parametrize("value", ["1e308", "inf", "36501"])
def test_retention_days_is_bounded_by_a_named_setting(
    capsys, state_dir: Path, monkeypatch, value: str
) -> None:
    monkeypatch.setenv("HOMEOPS_JOBS_RETENTION_DAYS", value)
    code, out, err = run_main(capsys, "jobs", "prune")
    assert (code, out) == (2, "")
    assert "jobs.retention_days" in err
    assert "older_than_s" not in err


def test_retention_seconds_stays_finite_for_unvalidated_settings(tmp_path: Path) -> None:
    from homeops.core.jobs.retention import MAX_RETENTION_S, retention_seconds

    settings = settings_for(tmp_path)
    assert retention_seconds(settings) == 30 * DAY
    assert retention_seconds(settings_for(tmp_path, HOMEOPS_JOBS_RETENTION_DAYS="36500")) == (
        MAX_RETENTION_S
    )
    old_finished_jobs(settings.jobs_db, 2, age_days=40)
    for days in (1e308, float("inf"), float("nan")):
        # model_copy skips validation: what a settings object built in code could hold.
        huge = settings.model_copy(
            update={"jobs": settings.jobs.model_copy(update={"retention_days": days})}
        )
        assert retention_seconds(huge) == MAX_RETENTION_S
        report = prune_finished_jobs(huge)
        assert (report.removed, report.older_than_s) == (0, MAX_RETENTION_S)
    assert prune_finished_jobs(settings, older_than_s=float("inf")).removed == 0
    assert prune_finished_jobs(settings).removed == 2


# -- the CLI ------------------------------------------------------------------------------


def db_of(state_dir: Path) -> Path:
    return state_dir / "jobs.sqlite3"


def test_jobs_prune_cli(capsys, state_dir: Path) -> None:
    code, out, _ = run_main(capsys, "jobs", "prune")
    assert (code, out) == (0, "pruned 0 finished job(s) older than 30d\n")
    assert not db_of(state_dir).exists()
    old_finished_jobs(db_of(state_dir), 4, age_days=40)
    old_finished_jobs(db_of(state_dir), 1, age_days=2)
    code, out, _ = run_main(capsys, "jobs", "prune", "--dry-run")
    assert (code, out) == (0, "would prune 4 finished job(s) older than 30d\n")
    code, out, _ = run_main(capsys, "jobs", "prune", "--older-than", "1d", "--dry-run", "--json")
    assert code == 0
    assert json.loads(out) == {"removed": 5, "dry_run": True, "older_than_s": DAY}
    code, out, _ = run_main(capsys, "jobs", "prune", "--json")
    assert (code, json.loads(out)["removed"]) == (0, 4)
    code, out, _ = run_main(capsys, "jobs", "prune", "--older-than", "1d")
    assert (code, out) == (0, "pruned 1 finished job(s) older than 1d\n")
    code, out, _ = run_main(capsys, "jobs", "list")
    assert (code, out) == (0, "no jobs\n")


def test_jobs_prune_with_retention_off(capsys, state_dir: Path, monkeypatch) -> None:
    old_finished_jobs(db_of(state_dir), 2, age_days=400)
    monkeypatch.setenv("HOMEOPS_JOBS_RETENTION_DAYS", "never")
    code, out, _ = run_main(capsys, "jobs", "prune")
    assert (code, out) == (0, "retention is off (jobs.retention_days: never); nothing pruned\n")
    code, out, _ = run_main(capsys, "jobs", "prune", "--older-than", "1d")
    assert (code, out) == (0, "pruned 2 finished job(s) older than 1d\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--older-than", "-1"], "--older-than: invalid duration '-1'", id="negative"),
        pytest.param(["--older-than", "abc"], "--older-than: invalid duration 'abc'", id="abc"),
        pytest.param(["--older-than", ""], "--older-than: invalid duration ''", id="empty"),
        pytest.param(["--older-than", "0"], "--older-than: must be greater than 0", id="zero"),
        pytest.param(["--older-than"], "requires an argument", id="missing"),
    ],
)
def test_jobs_prune_bad_input_is_one_line_exit_2(
    capsys, state_dir: Path, argv: list[str], message: str
) -> None:
    old_finished_jobs(db_of(state_dir), 1, age_days=40)
    code, out, err = run_main(capsys, "jobs", "prune", *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert len(grouped(db_of(state_dir))) == 1  # nothing deleted


def test_bad_retention_setting_is_a_config_error(capsys, state_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOMEOPS_JOBS_RETENTION_DAYS", "0")
    code, _, err = run_main(capsys, "jobs", "prune")
    assert code == 2
    assert "jobs.retention_days" in err


def test_jobs_check_reports_and_repairs_counters(capsys, state_dir: Path) -> None:
    path = db_of(state_dir)
    with SqliteJobQueue(path) as q:
        q.enqueue("t.a", {})
    raw = sqlite3.connect(path)
    raw.execute("UPDATE job_counts SET n = 9")
    raw.commit()
    raw.close()
    code, out, _ = run_main(capsys, "jobs", "check")
    assert code == 1
    assert out.splitlines()[0] == f"repairable (jobs check --repair): {path}"
    assert "t.a queued counted 9, the table holds 1" in out
    code, out, _ = run_main(capsys, "jobs", "check", "--repair", "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["ok"], report["problems"], len(report["repaired"])) == (True, [], 1)
    code, out, _ = run_main(capsys, "jobs", "check")
    assert (code, out) == (0, f"ok: {path}\n")


# -- pruning next to a running worker ----------------------------------------------------


async def test_pruning_while_a_worker_runs_loses_no_running_job(state_dir: Path) -> None:
    settings = settings_for(state_dir)
    path = settings.jobs_db
    old = set(old_finished_jobs(path, 3000, age_days=40))
    release = asyncio.Event()
    started: set[str] = set()

    async def hold(ctx: JobContext) -> str:
        started.add(ctx.job.id)
        await release.wait()
        return ctx.job.id

    async def quick(_ctx: JobContext) -> int:
        return 1

    queue = SqliteJobQueue(path, backoff_base_s=0.01)
    try:
        held = [queue.enqueue("t.hold", {"n": i}).id for i in range(3)]
        worker = Worker(queue, types({"t.hold": hold, "t.quick": quick}), slots=10)
        run = asyncio.create_task(worker.run(drain=True))
        for _ in range(500):
            if len(started) == 3:
                break
            await asyncio.sleep(0.01)
        assert started == set(held)
        # The prune shares the worker's connection (same file, same process), as the artifact
        # sweep's does; in small batches, while new jobs keep being enqueued and run.
        done = threading.Event()

        def prune() -> int:
            try:
                with SqliteJobQueue(path) as q:
                    return q.prune(older_than_s=30 * DAY, batch_size=100)
            finally:
                done.set()

        pruning = asyncio.create_task(asyncio.to_thread(prune))
        quick_ids = []
        while not done.is_set():
            quick_ids.append(queue.enqueue("t.quick", {}).id)
            await asyncio.sleep(0.001)
        assert await pruning == len(old)
        release.set()
        await asyncio.wait_for(run, 30)
        for job_id in held:
            job = queue.get(job_id)
            assert (job.state, job.result, job.attempts) == (JobState.SUCCEEDED, job_id, 1)
        assert all(queue.get(j).state is JobState.SUCCEEDED for j in quick_ids)
        assert ids(queue) == set(held) | set(quick_ids)
        assert_counts_exact(queue)
    finally:
        queue.close()
