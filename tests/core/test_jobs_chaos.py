"""Chaos: worker processes SIGKILLed at random while `jobs list` runs in a loop and the
artifact-sweep handler reads the store inside the workers. Bounded to a few seconds.

At the end: the file passes PRAGMA integrity_check, the -wal was never missing while a worker
had the store open, no attempt was claimed twice, no two runs of one job overlapped, and every
job finished.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from homeops.core.housekeeping import SWEEP_ARTIFACTS
from homeops.core.jobs import JobState, SqliteJobQueue
from tests.core.test_cli import HOMEOPS
from tests.core.test_jobs_procs import ROOT, SCRIPT

pytestmark = pytest.mark.integration

CHAOS_S = 4.0
LEASE = "1"


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.state.mkdir()
        self.db = self.state / "jobs.sqlite3"
        self.wal = self.db.with_name("jobs.sqlite3-wal")
        self.runs = tmp / "runs.log"
        self.artifacts = self.state / "artifacts"
        self.tmp = tmp
        self.live: list[subprocess.Popen[bytes]] = []
        self.all: list[subprocess.Popen[bytes]] = []
        self.killed_at: dict[int, float] = {}
        self.lock = threading.Lock()

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker{len(self.all)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [
                    *(sys.executable, str(SCRIPT), str(self.db), str(self.runs)),
                    *("--slots", "4", "--lease", LEASE, "--sweep", str(self.artifacts)),
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
            )
        with self.lock:
            self.all.append(proc)
            self.live.append(proc)
        return proc

    def kill_one(self, rng: random.Random) -> None:
        with self.lock:
            victim = rng.choice(self.live)
            self.live.remove(victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        self.killed_at[victim.pid] = time.monotonic()

    def lines(self) -> list[list[str]]:
        if not self.runs.exists():
            return []
        return [line.split() for line in self.runs.read_text().splitlines()]

    def ready_live_pids(self) -> set[int]:
        ready = {int(line[0]) for line in self.lines() if line[3] == "ready"}
        with self.lock:
            return {p.pid for p in self.live if p.poll() is None} & ready

    def close(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def list_loop(h: Harness, stop: threading.Event, failures: list[str], count: list[int]) -> None:
    """`homeops jobs list` from another shell, again and again."""
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(h.state)}
    while not stop.is_set():
        proc = subprocess.run(
            [HOMEOPS, "jobs", "list", "--json", "--limit", "5"],
            capture_output=True,
            env=env,
            timeout=60,
        )
        count[0] += 1
        if proc.returncode != 0:
            failures.append(proc.stderr.decode(errors="replace").strip()[-300:])


def wal_watch(h: Harness, stop: threading.Event, missing: list[str]) -> None:
    """The -wal must exist whenever a worker that opened the store is alive."""
    while not stop.is_set():
        pids = h.ready_live_pids()
        # Checked after the pids: a worker still alive now was alive during the check.
        if pids and not h.wal.exists() and h.ready_live_pids() & pids:
            missing.append(f"-wal missing while workers {sorted(pids)} were running")
        time.sleep(0.02)


def test_sigkilled_workers_with_list_loop_and_sweeps_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    h = Harness(tmp_path)
    ids: list[str] = []
    sweeps: list[str] = []

    def enqueue(q: SqliteJobQueue, n: int) -> None:
        ids.extend(q.enqueue("t.rec", {"sleep": 0.05}, max_attempts=100).id for _ in range(n))
        sweeps.append(q.enqueue(SWEEP_ARTIFACTS, {}, max_attempts=100).id)

    with SqliteJobQueue(h.db) as q:
        enqueue(q, 40)
    stop = threading.Event()
    list_failures: list[str] = []
    lists = [0]
    wal_missing: list[str] = []
    threads = [
        threading.Thread(target=list_loop, args=(h, stop, list_failures, lists)),
        threading.Thread(target=wal_watch, args=(h, stop, wal_missing)),
    ]
    try:
        h.start()
        h.start()
        for t in threads:
            t.start()
        end = time.monotonic() + CHAOS_S
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.2, 0.6))
            h.kill_one(rng)
            h.start()
            # The enqueuer is one more process holding the store for a moment.
            with SqliteJobQueue(h.db) as q:
                enqueue(q, 5)
        stop.set()
        for t in threads:
            t.join(60)
        for proc in list(h.live):
            proc.send_signal(signal.SIGTERM)
        for proc in list(h.live):
            proc.wait(30)
        h.live.clear()
        final = h.start("--drain")
        assert final.wait(120) == 0
    finally:
        stop.set()
        h.close()

    assert not wal_missing, wal_missing[:3]
    assert not list_failures, list_failures[:3]
    assert lists[0] >= 1
    with SqliteJobQueue(h.db, readonly=True) as q:
        assert q.integrity_check() == []
        jobs = {j.id: j for j in q.list(limit=10_000)}
    # Nothing lost: every job is there and done.
    assert set(jobs) == set(ids) | set(sweeps)
    assert {jobs[i].state for i in ids} == {JobState.SUCCEEDED}
    assert {jobs[i].state for i in sweeps} == {JobState.SUCCEEDED}
    # No attempt claimed twice; no two runs of one job at the same time.
    lines = [line for line in h.lines() if line[3] in ("start", "done", "stop")]
    starts = collections.Counter((line[1], line[2]) for line in lines if line[3] == "start")
    assert max(starts.values()) == 1, [k for k, n in starts.items() if n > 1][:3]
    runs: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    ends = {(line[0], line[1], line[2]): float(line[4]) for line in lines if line[3] != "start"}
    for pid, job_id, attempt, event, t in lines:
        if event == "start":
            end_t = ends.get((pid, job_id, attempt), h.killed_at.get(int(pid), float("inf")))
            runs[job_id].append((float(t), end_t))
    for job_id, spans in runs.items():
        busy_until = float("-inf")
        for start_t, end_t in sorted(spans):
            assert start_t >= busy_until, f"two runs of {job_id} overlapped"
            busy_until = max(busy_until, end_t)
