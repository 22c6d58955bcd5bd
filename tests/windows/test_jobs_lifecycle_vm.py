r"""``windows.exec`` jobs through a real worker process against the Windows VM emulator
(issue 7): cancel a running job and see its remote process gone, SIGKILL a worker mid-job and
see the job run again, and the seed's metric lines in ``WIN_AUTOMATION_METRICS_PATH``.

The worker is ``win-automation --config CFG worker`` as a subprocess, on the test's state
dir; jobs are enqueued, read and cancelled with the seed's CLI in this process. The VM is
tests/fakes/winvm.py behind a real loopback sshd: its call log records each command with the
pid of the emulator process that ran it, and /proc shows whether that is still running.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fakes import winvm as emulator
from tests.fixtures.winvm import WinVm
from tests.windows.test_exec import run_win
from tests.windows.test_exec_vm import login_user_pids, write_config
from tests.windows.test_jobs import enqueue, job, manifest

pytestmark = pytest.mark.integration

WIN_AUTOMATION = Path(sys.executable).with_name("win-automation")
# Bounds that turn a hang into a failure (not speed assertions).
START_DEADLINE_S = 15.0
STATE_DEADLINE_S = 15.0
GONE_DEADLINE_S = 5.0
STOP_DEADLINE_S = 15.0
POLL_S = 0.05
SEED_COUNTERS = (
    "jobs_enqueued_total",
    "jobs_completed_total",
    "jobs_failed_total",
    "jobs_cancelled_total",
    "playwright_sessions_total",
    "aloha_runs_total",
)
METRIC_LINE = re.compile(r"metric=(?P<name>[a-z_]+) value=(?P<value>\S+) ts=(?P<ts>\S+)")

_T = TypeVar("_T")


def wait_for(
    what: str, probe: Callable[[], _T | None], timeout: float, why: Callable[[], str]
) -> _T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_S) + 1):
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    raise AssertionError(f"{what}: not within {timeout:g}s\n{why()}")


class Workers:
    """Worker subprocesses of one test; each logs to a file; all are killed at teardown."""

    def __init__(self, tmp: Path, config: str, state_dir: Path) -> None:
        self.tmp = tmp
        self.config = config
        self.state_dir = state_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker{len(self.procs)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [str(WIN_AUTOMATION), "--config", self.config, "worker", *args],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOMEOPS_STATE_DIR": str(self.state_dir), **(env or {})},
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[self.procs.index(proc)].read_text(errors="replace")

    def all_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs)

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM ``proc`` and wait (bounded) for its exit code."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(STOP_DEADLINE_S)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_DEADLINE_S)


@pytest.fixture
def workers(tmp_path: Path, state_dir: Path, winvm: WinVm) -> Iterator[Workers]:
    w = Workers(tmp_path, write_config(tmp_path, winvm), state_dir)
    try:
        yield w
    finally:
        w.close()


def job_in(
    capsys: pytest.CaptureFixture[str],
    workers: Workers,
    job_id: str,
    states: tuple[str, ...],
    timeout: float = STATE_DEADLINE_S,
) -> dict[str, Any]:
    """The job, once its state is one of ``states`` (bounded wait)."""
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        last.update(job(capsys, Path(workers.config), job_id))
        return dict(last) if last["state"] in states else None

    return wait_for(
        f"job {job_id} in {states}",
        probe,
        timeout,
        lambda: f"last seen: {last}\n{workers.all_logs()}",
    )


def remote_calls(winvm: WinVm, command: str) -> list[dict[str, Any]]:
    """The VM's call-log records of ``command`` (sent as a cmd.exe line), in start order."""
    return [c for c in winvm.calls() if c["command"] == command]


def wait_remote_started(winvm: WinVm, workers: Workers, command: str, n: int = 1) -> dict[str, Any]:
    """The ``n``-th call of ``command`` once the VM started it (it has a pid)."""

    def probe() -> dict[str, Any] | None:
        calls = remote_calls(winvm, command)
        return calls[n - 1] if len(calls) >= n and calls[n - 1].get("pid") else None

    return wait_for(f"VM ran {command!r} ({n})", probe, STATE_DEADLINE_S, workers.all_logs)


def artifact_bytes(state_dir: Path, job_id: str, rel: str) -> bytes:
    return (state_dir / "artifacts" / job_id / rel).read_bytes()


def assert_manifest_matches_files(state_dir: Path, job_id: str) -> dict[str, dict[str, Any]]:
    files = manifest(state_dir, job_id)
    assert set(files) == {"ssh/stdout.txt", "ssh/stderr.txt", "ssh/exit_code.txt"}
    for rel, entry in files.items():
        body = artifact_bytes(state_dir, job_id, rel)
        assert entry["sha256"] == hashlib.sha256(body).hexdigest(), rel
        assert entry["size_bytes"] == len(body), rel
    return files


# -- 1. cancel a running job ---------------------------------------------------------------


def test_cancelling_a_running_exec_job_kills_the_remote_command_and_the_worker_goes_on(
    capsys: pytest.CaptureFixture[str], state_dir: Path, winvm: WinVm, workers: Workers
) -> None:
    config = Path(workers.config)
    sleeper = "sleep 30.625"  # unique: /proc is searched for it
    long_id = enqueue(capsys, config, "--type", "windows.exec", "--cmd", sleeper)
    worker = workers.start()
    running = job_in(capsys, workers, long_id, ("running",))
    assert running["attempts"] == 1
    call = wait_remote_started(winvm, workers, sleeper)
    uid = os.stat(winvm.home).st_uid  # the login user owns the VM's drive
    # It really runs on the VM: the emulator process and its sleep, before the cancel.
    assert emulator.alive(call["pid"])
    wait_for("the remote sleep", lambda: login_user_pids(sleeper, uid), 5.0, workers.all_logs)

    code, out, err = run_win(capsys, "--config", str(config), "jobs", "cancel", "--id", long_id)
    assert code == 0, err
    assert long_id in out

    done = job_in(capsys, workers, long_id, ("cancelled", "failed", "succeeded"))
    assert (done["state"], done["attempts"]) == ("cancelled", 1), done
    assert done["cancel_requested"] is True
    # Gone on the VM: neither the emulator process that ran it nor the sleep is left.
    deadline = time.monotonic() + GONE_DEADLINE_S
    while (
        (left := login_user_pids(sleeper, uid)) or emulator.alive(call["pid"])
    ) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert left == [], f"remote sleep survived the cancel: {left}"
    assert not emulator.alive(call["pid"])
    assert all(sleeper not in r["command"] for r in winvm.running())
    assert remote_calls(winvm, sleeper)[0]["exit"] is None  # killed: no end record
    assert len(remote_calls(winvm, sleeper)) == 1  # a cancelled job is not run again

    # The worker survived the cancel and runs the next job.
    assert worker.poll() is None, workers.all_logs()
    next_id = enqueue(capsys, config, "--type", "windows.exec", "--cmd", "echo after-cancel")
    after = job_in(capsys, workers, next_id, ("succeeded", "failed", "cancelled"))
    assert after["state"] == "succeeded", after
    assert artifact_bytes(state_dir, next_id, "ssh/stdout.txt") == b"after-cancel\n"

    assert workers.stop(worker) == 0, workers.all_logs()
    log = workers.log(worker)
    assert "job cancelled" in log
    assert "worker stopped" in log


# -- 2. a worker SIGKILLed mid-job ---------------------------------------------------------


def test_a_job_of_a_sigkilled_worker_runs_again_on_the_next_worker(
    capsys: pytest.CaptureFixture[str], state_dir: Path, winvm: WinVm, workers: Workers
) -> None:
    config = Path(workers.config)
    # The shortest lease the core accepts: the dead worker's job is free again within ~1s.
    short_lease = {"HOMEOPS_JOBS_LEASE": "1s"}
    # Long enough that a loaded machine still kills the worker before the command ends.
    slow = "sleep 2.5; echo slow-done"
    job_id = enqueue(capsys, config, "--type", "windows.exec", "--cmd", slow, "--max-attempts", "3")
    first = workers.start(env=short_lease)
    running = job_in(capsys, workers, job_id, ("running",))
    assert running["attempts"] == 1
    wait_remote_started(winvm, workers, slow)

    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(STOP_DEADLINE_S) == -signal.SIGKILL
    orphan = job(capsys, config, job_id)
    assert (orphan["state"], orphan["attempts"]) == ("running", 1)

    second = workers.start(env=short_lease)
    done = job_in(capsys, workers, job_id, ("succeeded", "failed", "cancelled"))
    assert (done["state"], done["attempts"]) == ("succeeded", 2), done
    assert done["worker_id"] != running["worker_id"]
    assert done["result"] == {"state": "succeeded", "exit_code": 0}
    assert "lease expired; running job again" in workers.log(second)
    # The VM saw the command twice: the killed worker's attempt and the re-run.
    calls = remote_calls(winvm, slow)
    assert len(calls) == 2
    assert calls[0]["pid"] != calls[1]["pid"]
    assert calls[1]["exit"] == 0

    assert artifact_bytes(state_dir, job_id, "ssh/stdout.txt") == b"slow-done\n"
    assert artifact_bytes(state_dir, job_id, "ssh/exit_code.txt") == b"0\n"
    assert_manifest_matches_files(state_dir, job_id)

    assert workers.stop(second) == 0, workers.all_logs()


# -- 3. metrics ----------------------------------------------------------------------------


def read_metrics(path: Path) -> list[tuple[str, str, str]]:
    """Every ``metric=<name> value=<n> ts=<RFC3339>`` line as (name, value, ts)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        matched = METRIC_LINE.fullmatch(line)
        assert matched is not None, f"not a metric line: {line!r}"
        found.append((matched["name"], matched["value"], matched["ts"]))
    return found


def latest(lines: list[tuple[str, str, str]]) -> dict[str, str]:
    return {name: value for name, value, _ in lines}


def test_worker_metrics_file_counts_what_the_jobs_did(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    winvm: WinVm,
    workers: Workers,
) -> None:
    config = Path(workers.config)
    metrics = tmp_path / "metrics.log"
    began = datetime.now(UTC).replace(microsecond=0)
    sleeper = "sleep 30.875"
    ok = enqueue(capsys, config, "--type", "windows.exec", "--cmd", "echo fine")
    bad = enqueue(
        capsys, config, "--type", "windows.exec", "--cmd", "exit 1", "--max-attempts", "1"
    )
    cancelled = enqueue(capsys, config, "--type", "windows.exec", "--cmd", sleeper)
    worker = workers.start(
        "--metrics",
        "--metrics-interval",
        "1s",
        env={"WIN_AUTOMATION_METRICS_PATH": str(metrics)},
    )
    job_in(capsys, workers, cancelled, ("running",))
    wait_remote_started(winvm, workers, sleeper)
    code, _, err = run_win(capsys, "--config", str(config), "jobs", "cancel", "--id", cancelled)
    assert code == 0, err
    ends = ("succeeded", "failed", "cancelled")
    assert job_in(capsys, workers, ok, ends)["state"] == "succeeded"
    assert job_in(capsys, workers, bad, ends)["state"] == "failed"
    assert job_in(capsys, workers, cancelled, ends)["state"] == "cancelled"

    # A block written while the worker runs (the interval, not only the last block on exit).
    want = {
        "jobs_completed_total": "1",
        "jobs_failed_total": "1",
        "jobs_cancelled_total": "1",
        "playwright_sessions_total": "0",
        "aloha_runs_total": "0",
    }

    def counted() -> bool:
        now = latest(read_metrics(metrics))
        return all(now.get(k) == v for k, v in want.items())

    def shown() -> str:
        return metrics.read_text() if metrics.exists() else "(no metrics file)"

    wait_for("a metrics block with every job counted", counted, 5.0, shown)
    assert worker.poll() is None, workers.all_logs()
    assert workers.stop(worker) == 0, workers.all_logs()
    ended = datetime.now(UTC)

    lines = read_metrics(metrics)  # every line of the file is a metric line
    names = {name for name, _, _ in lines}
    assert set(SEED_COUNTERS) <= names
    # Two or more blocks: one on the interval (seen above), one when the worker stopped.
    assert sum(1 for name, _, _ in lines if name == "jobs_completed_total") >= 2
    final = latest(lines)
    for name, value in want.items():
        assert final[name] == value, (name, metrics.read_text())
    for _, value, ts in lines:
        assert re.fullmatch(r"\d+", value), value
        stamp = datetime.fromisoformat(ts)  # RFC3339 with an offset (Z)
        assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0), ts
        assert began - timedelta(seconds=1) <= stamp <= ended + timedelta(seconds=1), ts
    # The counters only grow from block to block.
    by_name: dict[str, list[int]] = {}
    for name, value, _ in lines:
        by_name.setdefault(name, []).append(int(value))
    for name in SEED_COUNTERS:
        assert by_name[name] == sorted(by_name[name]), (name, by_name[name])

    # Enqueued by `jobs enqueue` processes: the worker reads the count from the store.
    assert final["jobs_enqueued_total"] == "3", metrics.read_text()
