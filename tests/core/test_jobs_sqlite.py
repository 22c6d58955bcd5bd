"""SqliteJobQueue on a real file: state machine, leases, dedupe, retries, stale workers."""

from __future__ import annotations

import io
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeops.core.errors import OperationalError, UsageError, quote_input
from homeops.core.jobs import HeartbeatResult, JobState, SqliteJobQueue


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A MetricsSink that remembers what it was told."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, value: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + value

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(state_dir: Path, clock: FakeClock) -> Iterator[SqliteJobQueue]:
    q = SqliteJobQueue(state_dir / "jobs" / "jobs.db", clock=clock)
    yield q
    q.close()


def test_file_and_dir_permissions(tmp_path: Path) -> None:
    path = tmp_path / "new" / "jobs.db"
    with SqliteJobQueue(path) as q:
        q.enqueue("t.x", {})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        wal = path.with_name("jobs.db-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_schema_wal_and_version(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteJobQueue(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Schema 2 added job_counts, jobs_type and jobs_finished (test_jobs_retention.py).
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        plan = " ".join(
            str(r)
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = 'queued' "
                "AND available_at <= 1 ORDER BY available_at LIMIT 10"
            )
        )
        assert "jobs_due" in plan
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(OperationalError, match="schema version 99"):
        SqliteJobQueue(path)


def test_reopen_keeps_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with SqliteJobQueue(path) as q:
        job = q.enqueue("t.x", {"k": "v"}, timeout_s=5.0)
    with SqliteJobQueue(path) as q:
        again = q.get(job.id)
    assert again == job


def test_enqueue_fields(queue: SqliteJobQueue, clock: FakeClock) -> None:
    job = queue.enqueue("windows.exec", {"cmd": ["dir"]}, trace_id="trace-1", max_attempts=5)
    assert job.state is JobState.QUEUED
    assert job.trace_id == "trace-1"
    assert job.attempts == 0
    assert job.max_attempts == 5
    assert job.created_at == job.available_at == clock.now
    assert queue.get(job.id) == job
    generated = queue.enqueue("windows.exec", {})
    assert len(generated.trace_id) == 32
    assert generated.trace_id != job.trace_id


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        pytest.param(("Bad Type", {}), {}, "invalid job type", id="type"),
        pytest.param(("t.x", {"f": object()}), {}, "not JSON-serialisable", id="payload"),
        pytest.param(
            ("t.x", {}), {"idempotency_key": "../x"}, "invalid idempotency key '../x'", id="key"
        ),
        pytest.param(
            ("t.x", {}), {"idempotency_key": "bad key!"}, "invalid idempotency key", id="key-space"
        ),
        pytest.param(("t.x", {}), {"trace_id": "a b"}, "invalid trace id 'a b'", id="trace"),
        pytest.param(("t.x", {}), {"max_attempts": 0}, "max_attempts", id="attempts"),
        pytest.param(("t.x", {}), {"timeout_s": 0}, "timeout_s", id="timeout"),
        pytest.param(("t.x", {}), {"delay_s": -1}, "delay_s", id="delay"),
    ],
)
def test_enqueue_refuses_bad_input(
    queue: SqliteJobQueue, args: tuple[str, object], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        queue.enqueue(*args, **kwargs)  # type: ignore[arg-type]
    assert sum(queue.counts().values()) == 0


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "x" * 200])
def test_bad_ids_refused_everywhere(queue: SqliteJobQueue, bad: str) -> None:
    for call in (queue.get, queue.cancel):
        with pytest.raises(UsageError, match="invalid job id"):
            call(bad)
    with pytest.raises(UsageError, match="invalid job id"):
        queue.claim(bad, 1, 10.0)


def test_unknown_job_is_usage_error(queue: SqliteJobQueue) -> None:
    with pytest.raises(UsageError, match="no such job: nope") as info:
        queue.get("nope")
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="no such job"):
        queue.cancel("nope")


def test_dedupe_by_idempotency_key(state_dir: Path, clock: FakeClock) -> None:
    metrics = Recorder()
    payload = {"svc": "a", "opts": {"full": True, "keep": [1, 2]}}
    with SqliteJobQueue(state_dir / "j.db", clock=clock, metrics=metrics) as q:
        first = q.enqueue("svc.backup", payload, idempotency_key="backup-a-2026")
        clock.advance(5)
        # The same payload, keys in another order (JSON compares it canonically): same job.
        same = {"opts": {"keep": [1, 2], "full": True}, "svc": "a"}
        second = q.enqueue("svc.backup", same, idempotency_key="backup-a-2026")
        assert second == first
        assert q.counts()[JobState.QUEUED] == 1
        # Even after it ran, the key still names the same job.
        [claimed] = q.claim("w1", 10, 30.0)
        assert q.complete(claimed.id, "w1", {"ok": True})
        third = q.enqueue("svc.backup", payload, idempotency_key="backup-a-2026")
        assert third.id == first.id
        assert third.state is JobState.SUCCEEDED
        with pytest.raises(UsageError, match="already belongs"):
            q.enqueue("svc.restore", payload, idempotency_key="backup-a-2026")
        assert metrics.counters == {"jobs_enqueued_total": 1.0}


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"svc": "other"}, id="value"),
        pytest.param({}, id="empty"),
        pytest.param({"svc": "a", "extra": None}, id="extra-key"),
        pytest.param({"svc": ["a"]}, id="type-of-value"),
        pytest.param({"svc": "a", "n": 1.0}, id="float-not-int"),
    ],
)
def test_idempotency_key_with_a_different_payload_is_refused(
    queue: SqliteJobQueue, other: dict[str, object]
) -> None:
    first = queue.enqueue("svc.backup", {"svc": "a", "n": 1}, idempotency_key="k1")
    with pytest.raises(UsageError) as info:
        queue.enqueue("svc.backup", other, idempotency_key="k1")
    assert info.value.exit_code == 2
    assert str(info.value) == (
        f"idempotency key 'k1' already used by job {first.id} with a different payload"
    )
    # Nothing was stored or changed.
    assert [j.id for j in queue.list()] == [first.id]
    assert queue.get(first.id) == first


@pytest.mark.parametrize(
    "key", ["nightly-2026-11-22", "deploy:host:rev", "a", "A.b_c-d:e", "k" * 128, "v1..v2"]
)
def test_idempotency_key_alphabet(queue: SqliteJobQueue, key: str) -> None:
    job = queue.enqueue("t.x", {}, idempotency_key=key)
    assert job.idempotency_key == key
    assert queue.enqueue("t.x", {}, idempotency_key=key).id == job.id


@pytest.mark.parametrize(
    "key",
    ["", "bad key!", ":lead", "-x", "a/b", "a\nb", "k1\n", "k" * 129, "caf\u00e9", "a'b", "a=b"],
)
def test_bad_idempotency_keys_refused(queue: SqliteJobQueue, key: str) -> None:
    with pytest.raises(UsageError) as info:
        queue.enqueue("t.x", {}, idempotency_key=key)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith(f"invalid idempotency key {quote_input(key)}: use 1-128 of")
    assert "job id" not in message
    assert "\n" not in message
    assert sum(queue.counts().values()) == 0


def test_dedupe_races_between_threads(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    SqliteJobQueue(path).close()
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        with SqliteJobQueue(path) as q:
            barrier.wait()
            ids.append(q.enqueue("t.x", {}, idempotency_key="same").id)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8
    assert len(set(ids)) == 1


def test_claim_order_limit_and_delay(queue: SqliteJobQueue, clock: FakeClock) -> None:
    later = queue.enqueue("t.x", {"n": "later"}, delay_s=10)
    jobs = []
    for n in range(5):
        jobs.append(queue.enqueue("t.x", {"n": n}))
        clock.advance(0.001)
    got = queue.claim("w1", 3, 30.0)
    assert [j.id for j in got] == [j.id for j in jobs[:3]]
    for j in got:
        assert j.state is JobState.RUNNING
        assert j.attempts == 1
        assert j.worker_id == "w1"
        assert j.lease_until == pytest.approx(clock.now + 30.0)
        assert j.started_at == clock.now
    assert [j.id for j in queue.claim("w2", 10, 30.0)] == [j.id for j in jobs[3:]]
    assert queue.claim("w2", 10, 30.0) == []
    clock.advance(10)
    assert [j.id for j in queue.claim("w2", 10, 30.0)] == [later.id]
    assert queue.claim("w2", 0, 30.0) == []


def test_retry_with_backoff_then_failed(state_dir: Path, clock: FakeClock) -> None:
    with SqliteJobQueue(state_dir / "j.db", clock=clock, backoff_base_s=2.0) as q:
        job = q.enqueue("t.flaky", {}, max_attempts=3)
        waits = []
        for attempt in (1, 2):
            [got] = q.claim("w1", 1, 30.0)
            assert got.attempts == attempt
            assert q.fail(job.id, "w1", f"boom {attempt}")
            after = q.get(job.id)
            assert after.state is JobState.QUEUED
            assert after.error == f"boom {attempt}"
            assert after.worker_id is None
            waits.append(after.available_at - clock.now)
            # Not due yet: nothing to claim until the backoff has passed.
            clock.advance(waits[-1] - 0.01)
            assert q.claim("w1", 1, 30.0) == []
            clock.advance(0.01)
        assert waits == [2.0, 4.0]
        [got] = q.claim("w1", 1, 30.0)
        assert got.attempts == 3
        assert q.fail(job.id, "w1", "boom 3")
        final = q.get(job.id)
        assert final.state is JobState.FAILED
        assert final.error == "boom 3"
        assert final.finished_at == clock.now
        assert q.claim("w1", 1, 30.0) == []


def test_non_retryable_failure_is_final(queue: SqliteJobQueue) -> None:
    job = queue.enqueue("t.x", {}, max_attempts=5)
    queue.claim("w1", 1, 30.0)
    assert queue.fail(job.id, "w1", "bad input", retryable=False)
    assert queue.get(job.id).state is JobState.FAILED
    assert queue.get(job.id).attempts == 1


def test_expired_lease_is_claimed_again(queue: SqliteJobQueue, clock: FakeClock) -> None:
    job = queue.enqueue("t.x", {}, max_attempts=2)
    queue.claim("dead", 1, 5.0)
    clock.advance(4.9)
    assert queue.claim("w2", 1, 5.0) == []
    clock.advance(0.2)
    [again] = queue.claim("w2", 1, 5.0)
    assert again.id == job.id
    assert again.worker_id == "w2"
    assert again.attempts == 2
    # The second worker dies too: no attempts left, so the job fails instead of vanishing.
    clock.advance(6)
    assert queue.claim("w3", 1, 5.0) == []
    final = queue.get(job.id)
    assert final.state is JobState.FAILED
    assert final.error == "lease expired"


def test_heartbeat_keeps_lease_and_reports_cancel(queue: SqliteJobQueue, clock: FakeClock) -> None:
    a = queue.enqueue("t.x", {})
    b = queue.enqueue("t.x", {})
    queue.claim("w1", 2, 5.0)
    for _ in range(3):
        clock.advance(4)
        assert queue.heartbeat("w1", [a.id, b.id], 5.0) == HeartbeatResult(frozenset({a.id, b.id}))
        assert queue.claim("w2", 10, 5.0) == []
    assert queue.cancel(b.id).cancel_requested
    assert queue.heartbeat("w1", [a.id, b.id], 5.0) == HeartbeatResult(
        frozenset({a.id, b.id}), frozenset({b.id})
    )
    assert queue.heartbeat("w1", [], 5.0) == HeartbeatResult()
    # Another worker's heartbeat changes nothing.
    before = queue.get(a.id).lease_until
    clock.advance(1)
    assert queue.heartbeat("w2", [a.id], 5.0) == HeartbeatResult()
    assert queue.get(a.id).lease_until == before


def test_stale_worker_cannot_finish_a_job_it_lost(queue: SqliteJobQueue, clock: FakeClock) -> None:
    job = queue.enqueue("t.x", {})
    queue.claim("old", 1, 1.0)
    clock.advance(2)
    [taken] = queue.claim("new", 1, 30.0)
    assert taken.worker_id == "new"
    assert not queue.complete(job.id, "old", "stale result")
    assert not queue.fail(job.id, "old", "stale error", retryable=False)
    assert not queue.requeue(job.id, "old")
    assert not queue.mark_cancelled(job.id, "old")
    current = queue.get(job.id)
    assert current.state is JobState.RUNNING
    assert current.worker_id == "new"
    assert current.result is None
    assert queue.complete(job.id, "new", {"by": "new"})
    done = queue.get(job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.result == {"by": "new"}
    # And a finished job cannot be finished again.
    assert not queue.complete(job.id, "new", "twice")
    assert not queue.fail(job.id, "new", "late")


def test_complete_rejects_unserialisable_result(queue: SqliteJobQueue) -> None:
    job = queue.enqueue("t.x", {})
    queue.claim("w1", 1, 30.0)
    with pytest.raises(UsageError, match="result is not JSON"):
        queue.complete(job.id, "w1", object())
    assert queue.get(job.id).state is JobState.RUNNING


def test_requeue_keeps_the_attempt(queue: SqliteJobQueue, clock: FakeClock) -> None:
    first = queue.enqueue("t.x", {})
    clock.advance(1)
    second = queue.enqueue("t.x", {})
    queue.claim("w1", 2, 30.0)
    assert queue.requeue(first.id, "w1")
    back = queue.get(first.id)
    assert back.state is JobState.QUEUED
    assert back.attempts == 0
    assert back.worker_id is None
    assert back.lease_until is None
    # Handed back now: due now, so behind the jobs that were due before it.
    assert back.available_at == clock.now
    assert queue.fail(second.id, "w1", "x")
    clock.advance(100)
    assert [j.id for j in queue.claim("w2", 2, 30.0)] == [first.id, second.id]


def test_cancel_in_each_state(queue: SqliteJobQueue, log_stream: io.StringIO) -> None:
    queued = queue.enqueue("t.x", {})
    out = queue.cancel(queued.id)
    assert out.state is JobState.CANCELLED
    assert out.finished_at is not None
    assert queue.claim("w1", 10, 30.0) == []

    running = queue.enqueue("t.x", {})
    queue.claim("w1", 1, 30.0)
    out = queue.cancel(running.id)
    assert out.state is JobState.RUNNING
    assert out.cancel_requested
    assert queue.mark_cancelled(running.id, "w1")
    assert queue.get(running.id).state is JobState.CANCELLED

    done = queue.enqueue("t.x", {})
    queue.claim("w1", 1, 30.0)
    queue.complete(done.id, "w1", 42)
    out = queue.cancel(done.id)
    assert out.state is JobState.SUCCEEDED
    assert out.result == 42
    assert not out.cancel_requested
    assert "job already succeeded; nothing to cancel" in log_stream.getvalue()


def test_failure_after_cancel_request_is_not_retried(queue: SqliteJobQueue) -> None:
    job = queue.enqueue("t.x", {}, max_attempts=5)
    queue.claim("w1", 1, 30.0)
    queue.cancel(job.id)
    assert queue.fail(job.id, "w1", "interrupted")
    assert queue.get(job.id).state is JobState.CANCELLED


def test_expired_lease_of_cancelled_job_ends_cancelled(
    queue: SqliteJobQueue, clock: FakeClock
) -> None:
    job = queue.enqueue("t.x", {})
    queue.claim("dead", 1, 1.0)
    queue.cancel(job.id)
    clock.advance(2)
    assert queue.claim("w2", 1, 1.0) == []
    assert queue.get(job.id).state is JobState.CANCELLED


def test_list_and_counts(queue: SqliteJobQueue, clock: FakeClock) -> None:
    ids = []
    for n in range(4):
        ids.append(queue.enqueue("a.x" if n % 2 else "b.x", {"n": n}).id)
        clock.advance(1)
    queue.cancel(ids[0])
    assert [j.id for j in queue.list()] == ids[::-1]
    assert [j.id for j in queue.list(limit=2)] == ids[:1:-1]
    assert [j.id for j in queue.list(type="a.x")] == [ids[3], ids[1]]
    assert [j.id for j in queue.list(state=JobState.CANCELLED)] == [ids[0]]
    assert [j.id for j in queue.list(state=JobState.QUEUED, type="b.x")] == [ids[2]]
    counts = queue.counts()
    assert counts == {
        JobState.QUEUED: 3,
        JobState.RUNNING: 0,
        JobState.SUCCEEDED: 0,
        JobState.FAILED: 0,
        JobState.CANCELLED: 1,
    }
    with pytest.raises(UsageError, match="limit"):
        queue.list(limit=0)
    with pytest.raises(UsageError, match="invalid job type"):
        queue.list(type="Bad")


def test_corrupt_json_column_is_shown_damaged_and_never_run(
    queue: SqliteJobQueue, clock: FakeClock, log_stream: io.StringIO
) -> None:
    bad_payload = queue.enqueue("t.x", {"n": 1})
    clock.advance(1)
    bad_result = queue.enqueue("t.x", {"n": 2})
    clock.advance(1)
    good = queue.enqueue("t.x", {"n": 3})
    raw = sqlite3.connect(queue.path)
    try:
        with raw:
            raw.execute("UPDATE jobs SET payload = '{oops' WHERE id = ?", (bad_payload.id,))
            raw.execute(
                "UPDATE jobs SET state = 'succeeded', result = 'not json' WHERE id = ?",
                (bad_result.id,),
            )
    finally:
        raw.close()
    # Reads that only show jobs list every row: the damaged ones say what is damaged.
    listed = {j.id: j for j in queue.list()}
    assert set(listed) == {bad_payload.id, bad_result.id, good.id}
    assert listed[good.id].damaged is None
    assert listed[bad_payload.id].payload == {}
    assert listed[bad_payload.id].damaged.startswith("corrupt payload column (not JSON: ")
    assert listed[bad_result.id].result is None
    assert listed[bad_result.id].damaged.startswith("corrupt result column (not JSON: ")
    assert queue.get(bad_payload.id).damaged == listed[bad_payload.id].damaged
    assert queue.list(state=JobState.QUEUED)[-1].damaged is not None
    assert queue.list(state=JobState.QUEUED, limit=1)[0].id == good.id
    # A claim does not hand out (or keep re-claiming) a row it cannot read: it fails it.
    assert [j.id for j in queue.claim("w1", 10, 30.0)] == [good.id]
    raw = sqlite3.connect(queue.path)
    try:
        state, error = raw.execute(
            "SELECT state, error FROM jobs WHERE id = ?", (bad_payload.id,)
        ).fetchone()
    finally:
        raw.close()
    assert state == "failed"
    assert "corrupt payload" in error
    assert "corrupt job row; job failed" in log_stream.getvalue()


def test_created_since_counts_every_process_s_enqueues(
    queue: SqliteJobQueue, clock: FakeClock, state_dir: Path
) -> None:
    queue.enqueue("t.a", {})
    clock.advance(10)
    since = clock.now
    queue.enqueue("t.a", {})
    # Another process's queue on the same file (what `jobs enqueue` is to a worker).
    other = SqliteJobQueue(state_dir / "jobs" / "jobs.db", clock=clock)
    try:
        other.enqueue("t.b", {})
        other.enqueue("t.a", {})
    finally:
        other.close()
    assert queue.created_since(since) == 3
    assert queue.created_since(since, types=["t.a"]) == 2
    assert queue.created_since(since, types=["t.c"]) == 0
    assert queue.created_since(since - 10) == 4
    # The backlog a worker finds at `since`: enqueued before it and still waiting.
    [claimed] = queue.claim("w1", 1, 30.0)
    assert queue.created_since(since, queued_before=True) == 0
    assert claimed.created_at < since
