"""SqliteJobQueue hardening: one connection per file per process, read-only opens, corrupt
files, cancel requests against hand-backs, claim order and the backoff cap."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeops.core.errors import OperationalError, UsageError
from homeops.core.housekeeping import sweep_artifacts
from homeops.core.jobs import JobState, SqliteJobQueue
from tests.core.test_jobs_sqlite import FakeClock

pytestmark = pytest.mark.integration


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteJobQueue]:
    q = SqliteJobQueue(tmp_path / "jobs.db", clock=clock)
    yield q
    q.close()


def other_process_reads_and_closes(path: Path) -> None:
    """What `jobs list` in another shell does to the file: open, read, close."""
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('SELECT COUNT(*) FROM jobs').fetchone()\n"
        "c.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=30)


def wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


# -- one connection per file per process (the lost-writes bug) --------------------------


@pytest.mark.parametrize(
    "second_open",
    [
        pytest.param(lambda p: SqliteJobQueue(p).close(), id="second-queue"),
        pytest.param(lambda p: SqliteJobQueue(p, readonly=True).close(), id="readonly-queue"),
        pytest.param(lambda p: sweep_artifacts(p.parent / "artifacts", p, 0.0), id="sweep-handler"),
    ],
)
def test_second_open_in_a_process_keeps_the_owners_locks(tmp_path: Path, second_open) -> None:
    # The worker holds the store; something in the same process opens it again (the sweep
    # handler did). Closing any stray descriptor of the file drops every POSIX lock this
    # process holds on it; the next process to close its connection then believes it is the
    # last one, checkpoints and deletes the WAL under the worker, whose later commits are lost.
    path = tmp_path / "jobs.db"
    worker = SqliteJobQueue(path)
    try:
        job = worker.enqueue("t.x", {})
        assert wal_of(path).exists()
        second_open(path)
        other_process_reads_and_closes(path)
        assert wal_of(path).exists(), "WAL deleted under a live connection"
        [claimed] = worker.claim("w1", 1, 30.0)
        assert worker.complete(claimed.id, "w1", "done")
        # What the worker wrote is what another process reads.
        with SqliteJobQueue(path, readonly=True) as reader:
            assert reader.get(job.id).state is JobState.SUCCEEDED
    finally:
        worker.close()


def test_queues_on_one_file_share_a_connection_until_the_last_closes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteJobQueue(path)
    # Another spelling of the same file is the same file.
    os.symlink(path, tmp_path / "alias.db")
    second = SqliteJobQueue(tmp_path / "alias.db")
    job = first.enqueue("t.x", {})
    first.close()
    first.close()  # idempotent: does not take the second queue's share with it
    assert second.get(job.id).id == job.id
    with pytest.raises(OperationalError, match="closed"):
        first.get(job.id)
    second.close()
    with pytest.raises(OperationalError, match="closed"):
        second.get(job.id)


def test_new_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "jobs.db"
    old = os.umask(0o000)
    try:
        with SqliteJobQueue(path) as q:
            q.enqueue("t.x", {})
            assert stat.S_IMODE(wal_of(path).stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fork_child_opens_its_own_connection(tmp_path: Path) -> None:
    # A child must not reuse (nor close) the connection it inherited: it opens its own.
    path = tmp_path / "jobs.db"
    with SqliteJobQueue(path) as parent:
        job = parent.enqueue("t.x", {})
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            ok = False
            try:
                with SqliteJobQueue(path) as child:
                    ok = child.get(job.id).id == job.id and child.enqueue("t.x", {}) is not None
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sum(parent.counts().values()) == 2
        assert wal_of(path).exists()


# -- a cancel request wins over every hand-back ------------------------------------------


def test_requeue_of_a_job_whose_cancel_was_requested_cancels_it(
    queue: SqliteJobQueue, clock: FakeClock
) -> None:
    job = queue.enqueue("t.x", {}, max_attempts=5)
    queue.claim("w1", 1, 30.0)
    assert queue.cancel(job.id).cancel_requested
    clock.advance(1)
    # The worker is shutting down and hands the job back before it saw the request.
    assert queue.requeue(job.id, "w1")
    after = queue.get(job.id)
    assert after.state is JobState.CANCELLED
    assert after.finished_at == clock.now
    assert after.error == "cancelled"
    assert after.attempts == 1
    assert queue.claim("w2", 10, 30.0) == []
    assert queue.counts()[JobState.QUEUED] == 0


def test_claim_never_takes_a_queued_job_with_a_cancel_request(tmp_path: Path) -> None:
    # What an earlier version left behind: queued, with its cancel request still set.
    path = tmp_path / "jobs.db"
    with SqliteJobQueue(path) as q:
        stale = q.enqueue("t.x", {})
        other = q.enqueue("t.x", {})
        raw = sqlite3.connect(path)
        try:
            with raw:
                raw.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (stale.id,))
        finally:
            raw.close()
        assert [j.id for j in q.claim("w1", 10, 30.0)] == [other.id]
        assert q.get(stale.id).state is JobState.QUEUED
    # The next writer to open the store finishes it, so a draining worker is not held up.
    with SqliteJobQueue(path) as q:
        assert q.get(stale.id).state is JobState.CANCELLED
        assert q.counts()[JobState.QUEUED] == 0


# -- hand-backs go behind the jobs already due -------------------------------------------


def test_handed_back_job_goes_behind_jobs_already_due(
    queue: SqliteJobQueue, clock: FakeClock
) -> None:
    first = queue.enqueue("t.x", {})
    clock.advance(1)
    waiting = [queue.enqueue("t.x", {"n": n}) for n in range(3)]
    clock.advance(1)
    # One worker after another takes the oldest job and is stopped before it finishes.
    order = []
    for n in range(4):
        [got] = queue.claim(f"w{n}", 1, 30.0)
        order.append(got.id)
        assert queue.requeue(got.id, f"w{n}")
        clock.advance(0.5)
    assert order == [first.id, *(j.id for j in waiting)]


# -- claim order and the backoff cap -----------------------------------------------------


def test_claim_orders_by_due_time_not_creation(queue: SqliteJobQueue, clock: FakeClock) -> None:
    # An older job failed and waits for its retry; a newer one is due before that retry.
    old = queue.enqueue("t.x", {}, max_attempts=3)
    queue.claim("w1", 1, 30.0)
    assert queue.fail(old.id, "w1", "boom")  # retry due at +1 s (backoff base 1 s)
    clock.advance(0.5)
    new = queue.enqueue("t.x", {})
    clock.advance(10)
    assert queue.get(old.id).available_at > queue.get(new.id).available_at
    assert [j.id for j in queue.claim("w2", 1, 30.0)] == [new.id]
    assert [j.id for j in queue.claim("w2", 1, 30.0)] == [old.id]


def test_backoff_is_capped_by_backoff_max(tmp_path: Path, clock: FakeClock) -> None:
    with SqliteJobQueue(
        tmp_path / "j.db", clock=clock, backoff_base_s=10.0, backoff_max_s=15.0
    ) as q:
        job = q.enqueue("t.x", {}, max_attempts=4)
        waits = []
        for _ in range(3):
            [got] = q.claim("w1", 1, 30.0)
            assert got.id == job.id
            assert q.fail(job.id, "w1", "boom")
            waits.append(q.get(job.id).available_at - clock.now)
            clock.advance(100)
    assert waits == [10.0, 15.0, 15.0]


# -- read-only opens -----------------------------------------------------------------------


def test_readonly_open_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.db"
    with SqliteJobQueue(path, readonly=True) as q:
        assert not q.exists
        assert q.list() == []
        assert sum(q.counts().values()) == 0
        assert q.integrity_check() == []
        with pytest.raises(UsageError, match="no such job"):
            q.get("nope1")
        with pytest.raises(OperationalError, match="read-only"):
            q.enqueue("t.x", {})
    assert not (tmp_path / "state").exists()


def test_readonly_open_takes_no_lock_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with SqliteJobQueue(path) as q:
        job = q.enqueue("t.x", {})
    os.chmod(path, 0o640)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # a writer in another process, mid-transaction
        with SqliteJobQueue(path, readonly=True, busy_timeout_s=0.05) as q:
            assert [j.id for j in q.list()] == [job.id]
            assert q.get(job.id).state is JobState.QUEUED
            for call in (
                lambda: q.claim("w1", 1, 30.0),
                lambda: q.cancel(job.id),
                lambda: q.heartbeat("w1", [job.id], 30.0),
            ):
                with pytest.raises(OperationalError, match="read-only"):
                    call()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_readonly_open_of_an_empty_file_has_no_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.touch()  # a writer died between creating the file and setting it up
    with SqliteJobQueue(path, readonly=True) as q:
        assert q.list() == []
    assert path.stat().st_size == 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory that user nobody can reach (tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="homeops-ro-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def _as_nobody(fn) -> int:
    """Run ``fn`` in a forked child as user nobody; its exit status (0 when it returned True)."""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            os.setgid(65534)
            os.setuid(65534)
            ok = bool(fn())
        except BaseException as exc:
            os.write(2, f"as nobody: {exc!r}\n".encode())
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another user")
def test_readonly_open_by_another_user_without_shm(shared_dir: Path) -> None:
    # The store's owner is not running: no -shm, and the reader may not create one.
    path = shared_dir / "jobs.db"
    with SqliteJobQueue(path) as q:
        job = q.enqueue("t.x", {})
    os.chmod(path, 0o644)
    assert not path.with_name("jobs.db-shm").exists()

    def read() -> bool:
        with SqliteJobQueue(path, readonly=True) as q:
            return [j.id for j in q.list()] == [job.id]

    assert _as_nobody(read) == 0
    # A -wal left without its -shm (a crash) cannot be read safely: a clean error instead.
    wal_of(path).write_bytes(b"")
    os.chmod(wal_of(path), 0o644)

    def refused() -> bool:
        try:
            SqliteJobQueue(path, readonly=True).close()
        except OperationalError as exc:
            return "cannot read it read-only" in str(exc) and "\n" not in str(exc)
        return False

    assert _as_nobody(refused) == 0


# -- corrupt files -------------------------------------------------------------------------


def fill_store(path: Path, n: int = 300) -> list[str]:
    with SqliteJobQueue(path) as q:
        return [q.enqueue("t.x", {"pad": "x" * 200, "n": i}).id for i in range(n)]


def overwrite_pages(path: Path) -> None:
    """Bytes overwritten inside the file: the header of every page but the first."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        for offset in range(4096, size, 4096):
            fh.seek(offset)
            fh.write(b"\x5a" * 64)


def swap_index_roots(path: Path) -> None:
    """Two indexes swap their b-trees: every page reads fine, the index content is wrong."""
    raw = sqlite3.connect(path)
    try:
        raw.execute("PRAGMA writable_schema = ON")
        roots = dict(raw.execute("SELECT name, rootpage FROM sqlite_schema WHERE type = 'index'"))
        raw.execute(
            "UPDATE sqlite_schema SET rootpage = ? WHERE name = 'jobs_state'",
            (roots["jobs_created"],),
        )
        raw.execute(
            "UPDATE sqlite_schema SET rootpage = ? WHERE name = 'jobs_created'",
            (roots["jobs_state"],),
        )
        raw.commit()
    finally:
        raw.close()


def test_overwritten_pages_are_reported_as_corrupt(tmp_path: Path) -> None:
    from homeops.core.jobs import StoreCorrupt
    from homeops.core.jobs.sqlite import check_store

    path = tmp_path / "jobs.db"
    fill_store(path)
    overwrite_pages(path)
    with SqliteJobQueue(path, readonly=True) as q, pytest.raises(StoreCorrupt, match="malformed"):
        q.list()
    for quick in (True, False):
        found = check_store(path, quick=quick)
        assert found.exists
        assert not found.ok
        assert found.problems


def test_broken_index_is_found_by_the_full_check_only(tmp_path: Path) -> None:
    from homeops.core.jobs.sqlite import check_store

    path = tmp_path / "jobs.db"
    fill_store(path, 20)
    swap_index_roots(path)
    assert check_store(path, quick=True).ok
    full = check_store(path)
    assert not full.ok
    assert any("missing from index" in p for p in full.problems)
    assert check_store(tmp_path / "absent.db").exists is False


def test_not_a_database_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    from homeops.core.jobs import StoreCorrupt
    from homeops.core.jobs.sqlite import check_store

    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not sqlite" * 500)
    found = check_store(path)
    assert not found.ok
    assert "not a database" in found.problems[0]
    with pytest.raises(StoreCorrupt):
        SqliteJobQueue(path)


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    for readonly in (False, True):
        with pytest.raises(OperationalError, match="not a regular file"):
            SqliteJobQueue(tmp_path, readonly=readonly)
