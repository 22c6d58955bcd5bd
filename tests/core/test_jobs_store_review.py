"""Store defects from the hostile review: unknown states, missing schema objects, and a
read-only store that a failed write made writable."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeops.core.errors import OperationalError
from homeops.core.jobs import JobState, SqliteJobQueue, StoreCorrupt
from homeops.core.jobs.sqlite import SCHEMA_VERSION, _schema_objects, check_store, repair_store
from tests.core.test_cli import run_main
from tests.core.test_jobs_sqlite import FakeClock
from tests.core.test_jobs_store import _as_nobody

pytestmark = pytest.mark.integration

SWEEP = "core.artifacts-sweep"


def raw_sql(path: Path, *statements: str) -> None:
    """What `sqlite3 $DB "..."` does: another connection, outside homeops."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for stmt in statements:
            raw.execute(stmt)
    finally:
        raw.close()


WEIRD_ROW = (
    "INSERT INTO jobs (id, type, payload, trace_id, state, max_attempts, created_at, "
    f"updated_at, available_at) VALUES ('x1', '{SWEEP}', '{{}}', 't', 'weird', 3, 1, 1, 1)"
)
WEIRD = "job x1 has state 'weird', which this homeops does not know (a newer version's store?)"


# -- 1: a state this version does not know ------------------------------------------------


def test_unknown_state_is_store_corrupt_naming_the_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with SqliteJobQueue(path) as q:
        q.enqueue(SWEEP, {})
    raw_sql(path, WEIRD_ROW)
    for readonly in (False, True):
        with SqliteJobQueue(path, readonly=readonly) as q:
            for call in (q.list, lambda: q.get("x1"), q.counts, lambda: q.counts(types=[SWEEP])):
                with pytest.raises(StoreCorrupt) as caught:
                    call()
                assert str(caught.value) == WEIRD
            # Reads that do not meet the row still work.
            assert q.counts(types=["t.other"])[JobState.QUEUED] == 0
            assert len(q.list(state=JobState.QUEUED)) == 1
    found = check_store(path)
    assert WEIRD in found.problems
    assert any("job_counts counts 1 job(s)" in p and "'weird'" in p for p in found.problems)
    assert not found.repairable  # a recount cannot make 'weird' a state
    # Once the row is gone, its counter at 0 is nothing to complain about.
    raw_sql(path, "DELETE FROM jobs WHERE id = 'x1'")
    with SqliteJobQueue(path) as q:
        assert q.counts()[JobState.QUEUED] == 1
    assert check_store(path).ok


def test_counter_in_an_unknown_state_without_rows_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteJobQueue(path).close()
    raw_sql(path, f"INSERT INTO job_counts VALUES ('{SWEEP}', 'weird', 2)")
    with SqliteJobQueue(path, readonly=True) as q, pytest.raises(StoreCorrupt, match="'weird'"):
        q.counts()
    found = check_store(path)
    assert found.repairable, found.problems
    assert any("'weird'" in p for p in found.problems)
    assert repair_store(path)
    assert check_store(path).ok


def test_cli_unknown_state_is_one_line_and_check_reports_it(capsys, state_dir: Path) -> None:
    path = state_dir / "jobs.sqlite3"
    SqliteJobQueue(path).close()
    raw_sql(path, WEIRD_ROW)
    for args in (("jobs", "list"), ("jobs", "worker", "--drain")):
        code, _, err = run_main(capsys, *args)
        assert code == 1, args
        assert err.strip().splitlines()[-1] == f"error: {WEIRD}", args
        assert "Traceback" not in err
    code, out, _ = run_main(capsys, "jobs", "check")
    assert code == 1
    assert WEIRD in out


# -- 2: a table, index or trigger missing --------------------------------------------------

OBJECTS = _schema_objects(SCHEMA_VERSION)


@pytest.mark.parametrize("name", list(OBJECTS))
def test_check_lists_a_missing_schema_object_and_repair_restores_it(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / "jobs.db"
    clock = FakeClock()
    with SqliteJobQueue(path, clock=clock) as q:
        done = q.enqueue(SWEEP, {"n": 1})
        q.cancel(done.id)
        q.enqueue(SWEEP, {"n": 2})
    kind = OBJECTS[name]
    raw_sql(path, f"DROP {kind.upper()} {name}")
    found = check_store(path)
    assert any(f"{kind} {name} is missing" in p for p in found.problems), found.problems
    assert found.repairable
    assert repair_store(path)
    assert check_store(path).ok
    with SqliteJobQueue(path, clock=clock) as q:
        if name != "jobs":  # the rows of a dropped table are gone; the table is back
            assert q.counts()[JobState.QUEUED] == 1
        q.enqueue("t.a", {})
        assert [j.type for j in q.list(type="t.a", state=JobState.QUEUED)] == ["t.a"]
        clock.advance(10.0)
        assert q.prune(older_than_s=1.0) == (0 if name == "jobs" else 1)
    assert check_store(path).ok


@pytest.mark.parametrize("name", ["jobs_created", "jobs_type", "jobs_state"])
def test_a_missing_index_is_slow_not_fatal(tmp_path: Path, name: str) -> None:
    path = tmp_path / "jobs.db"
    clock = FakeClock()
    with SqliteJobQueue(path, clock=clock) as q:
        q.cancel(q.enqueue(SWEEP, {"n": 1}).id)
        q.enqueue(SWEEP, {"n": 2})
        for i in range(3):  # queued is the common state, cancelled the rare one
            q.enqueue("t.b", {"n": i})
    raw_sql(path, f"DROP INDEX {name}")
    clock.advance(10.0)
    with SqliteJobQueue(path, clock=clock) as q:
        assert len(q.list(type=SWEEP, state=JobState.QUEUED)) == 1
        assert len(q.list(type=SWEEP, state=JobState.CANCELLED)) == 1
        assert q.prune(older_than_s=1.0, dry_run=True) == 1
        assert q.prune(older_than_s=1.0) == 1


def test_cli_check_reports_a_dropped_job_counts_and_repair_restores_it(
    capsys, state_dir: Path
) -> None:
    path = state_dir / "jobs.sqlite3"
    SqliteJobQueue(path).close()
    raw_sql(path, "DROP TABLE job_counts")
    code, out, err = run_main(capsys, "jobs", "check")
    assert code == 1, err
    assert "table job_counts is missing" in out
    code, out, err = run_main(capsys, "jobs", "check", "--repair")
    assert code == 0, err
    assert out.startswith("ok: ")
    code, _, err = run_main(capsys, "jobs", "enqueue", SWEEP)
    assert code == 0, err


# -- 6: a read-only store stays read-only ---------------------------------------------------


@pytest.mark.parametrize(("before", "after"), [(0o400, 0o400), (0o440, 0o400), (0o644, 0o600)])
def test_writable_open_only_ever_tightens_the_mode(tmp_path: Path, before: int, after: int) -> None:
    path = tmp_path / "jobs.db"
    SqliteJobQueue(path).close()
    os.chmod(path, before)
    try:
        SqliteJobQueue(path).close()
    except OperationalError as exc:  # not root: 0400 is refused, which is the point
        assert "is read-only" in str(exc)
    assert stat.S_IMODE(path.stat().st_mode) == after


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory user nobody owns and reaches (tmp_path is 0700 and root's)."""
    path = Path(tempfile.mkdtemp(prefix="homeops-ro-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become user nobody")
def test_read_only_store_gives_one_line_and_keeps_its_mode(nobody_dir: Path) -> None:
    store_dir = nobody_dir / "state"
    path = store_dir / "jobs.db"
    with SqliteJobQueue(path) as q:
        q.enqueue(SWEEP, {})
    for p in (store_dir, *store_dir.iterdir()):
        os.chown(p, 65534, 65534)
    os.chmod(path, 0o400)
    os.chmod(store_dir, 0o555)

    def refused() -> bool:
        try:
            SqliteJobQueue(path).close()
        except OperationalError as exc:
            message = str(exc)
            return message.startswith(f"job store {path} is read-only: ") and "\n" not in message
        return False

    assert _as_nobody(refused) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
