"""Several worker processes on one SQLite file: sharing, SIGKILL recovery, SIGTERM shutdown."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from homeops.core.jobs import JobState, SqliteJobQueue

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("jobs_worker_proc.py")
ROOT = Path(__file__).resolve().parents[2]


class Procs:
    """Starts worker processes with the venv's python and kills leftovers at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "state" / "jobs.db"
        self.runs = tmp / "runs.log"
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"worker{len(self.started)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), str(self.db), str(self.runs), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
            )
        self.started.append(proc)
        return proc, log

    def run_lines(self) -> list[list[str]]:
        if not self.runs.exists():
            return []
        return [line.split() for line in self.runs.read_text().splitlines()]

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_two_processes_share_work_without_double_runs(procs: Procs) -> None:
    with SqliteJobQueue(procs.db) as q:
        ids = [q.enqueue("t.rec", {"sleep": 0.02}).id for _ in range(400)]
    a, _ = procs.start("--drain")
    b, _ = procs.start("--drain")
    assert a.wait(60) == 0
    assert b.wait(60) == 0

    starts = collections.Counter(line[1] for line in procs.run_lines() if line[3] == "start")
    by_pid = collections.Counter(line[0] for line in procs.run_lines() if line[3] == "done")
    assert sorted(starts) == sorted(ids)
    assert set(starts.values()) == {1}
    assert set(by_pid) == {str(a.pid), str(b.pid)}
    with SqliteJobQueue(procs.db) as q:
        jobs = q.list(limit=1000)
    assert len(jobs) == 400
    assert {(j.state, j.attempts) for j in jobs} == {(JobState.SUCCEEDED, 1)}
    assert {j.result for j in jobs} == {a.pid, b.pid}


def test_sigkilled_worker_job_runs_again_after_lease(procs: Procs) -> None:
    with SqliteJobQueue(procs.db) as q:
        victim = q.enqueue("t.rec", {"hang_first": True}).id
        others = [q.enqueue("t.rec", {"sleep": 0.01}).id for _ in range(20)]
    first, _ = procs.start("--slots", "1", "--lease", "1")
    wait_until(lambda: any(line[1] == victim for line in procs.run_lines()))
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    killed_at = time.monotonic()
    with SqliteJobQueue(procs.db) as q:
        orphan = q.get(victim)
    assert orphan.state is JobState.RUNNING
    assert orphan.attempts == 1

    second, _ = procs.start("--drain", "--lease", "1")
    assert second.wait(30) == 0
    with SqliteJobQueue(procs.db) as q:
        done = q.get(victim)
        rest = [q.get(i) for i in others]
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 2
    assert done.result == second.pid
    assert orphan.lease_until is not None
    assert done.started_at is not None
    assert done.started_at >= orphan.lease_until
    assert all(j.state is JobState.SUCCEEDED and j.attempts == 1 for j in rest)
    # The re-run started only once the dead worker's 1 s lease had run out.
    victim_runs = [line for line in procs.run_lines() if line[1] == victim]
    assert [(line[0], line[2], line[3]) for line in victim_runs] == [
        (str(first.pid), "1", "start"),
        (str(second.pid), "2", "start"),
        (str(second.pid), "2", "done"),
    ]
    assert time.monotonic() - killed_at < 20


def test_sigterm_stops_claiming_and_hands_back_running_jobs(procs: Procs) -> None:
    with SqliteJobQueue(procs.db) as q:
        quick = q.enqueue("t.rec", {"sleep": 0.2}).id
        stuck = q.enqueue("t.rec", {"sleep": 30}).id
    first, log = procs.start("--slots", "2", "--grace", "0.8")
    wait_until(lambda: {line[1] for line in procs.run_lines()} >= {quick, stuck})
    first.send_signal(signal.SIGTERM)
    wait_until(lambda: "stop requested" in log.read_text())
    with SqliteJobQueue(procs.db) as q:
        late = [q.enqueue("t.rec", {}).id for _ in range(5)]
    t0 = time.monotonic()
    assert first.wait(10) == 0
    assert time.monotonic() - t0 < 3.0

    with SqliteJobQueue(procs.db) as q:
        assert q.get(quick).state is JobState.SUCCEEDED
        back = q.get(stuck)
        assert back.state is JobState.QUEUED
        assert back.attempts == 0
        assert all(q.get(i).state is JobState.QUEUED for i in late)
    assert "grace period over; handing running jobs back" in log.read_text()
    assert not any(line[1] in late for line in procs.run_lines())

    second, _ = procs.start("--drain", "--cap-sleep", "0")
    assert second.wait(30) == 0
    with SqliteJobQueue(procs.db) as q:
        jobs = q.list()
    assert len(jobs) == 7
    assert all(j.state is JobState.SUCCEEDED for j in jobs)
    assert {j.id: j.attempts for j in jobs}[stuck] == 1
