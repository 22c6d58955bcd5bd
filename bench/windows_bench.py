"""The windows domain's two targets (issue 7), against a loopback sshd.

Run: ``.venv/bin/python bench/windows_bench.py [--jobs 2000] [--concurrency 10] [--repeats 15]
[--rounds 3]``.

1. ``windows.exec`` jobs through ``win-automation worker --concurrency 10 --drain``: the jobs
   (``echo hi``) are queued first, then the worker's wall time from start to drained,
   process start-up included; the median of ``--rounds`` rounds, each on a fresh store.
   Target: >= 200 jobs/s.
2. ``win-automation windows exec -- echo hi`` vs a plain ``ssh … echo hi`` to the same sshd,
   each a fresh process, alternated, median of ``--repeats``. Target: <= 1.5x. ``windows
   exec`` runs OpenSSH's ssh over a master that stays 60 s after its last session
   (core/ssh/oneshot.py): the target's figure is the warm one (a master from an earlier call
   is there, as in any burst of calls); the cold figure (its master stopped before every
   call, so each call logs in itself) is measured and recorded beside it.

The sshd is tests/fixtures/sshd.py's (as root it logs in as ``homeops-test``, whose /bin/sh
reads ``echo hi`` as cmd.exe would). Writes bench/results/windows.json and windows.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.sshd import SshdHandle, start_sshd  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WIN = str(Path(sys.executable).with_name("win-automation"))
JOBS_TARGET = 200.0
EXEC_TARGET = 1.5


def _config(sshd: SshdHandle, path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "windows": {
                    "ssh_host": sshd.host,
                    "ssh_port": sshd.port,
                    "ssh_user": sshd.user,
                    "ssh_identity_file": str(sshd.identity_file),
                    "known_hosts": str(sshd.known_hosts),
                }
            }
        )
    )
    return path


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "HOMEOPS_STATE_DIR": str(state), "HOMEOPS_LOG_LEVEL": "warn"}


def bench_jobs(
    sshd: SshdHandle, work: Path, jobs: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """``rounds`` times: a fresh store, then one worker's drain timed; the median round."""
    runs = [_jobs_round(sshd, work / f"round-{n}", jobs, concurrency) for n in range(rounds)]
    rates = [r["jobs_per_s"] for r in runs]
    median = sorted(runs, key=lambda r: r["jobs_per_s"])[len(runs) // 2]
    return {**median, "rounds": rounds, "jobs_per_s_each": rates}


def _jobs_round(sshd: SshdHandle, work: Path, jobs: int, concurrency: int) -> dict[str, float]:
    """Queue ``jobs`` windows.exec jobs, then time one worker draining them."""
    sys.path.insert(0, str(ROOT / "src"))
    from homeops.core.jobs.sqlite import SqliteJobQueue

    work.mkdir()
    state = work / "state-jobs"
    state.mkdir()
    config = _config(sshd, work / "win.json")
    queue = SqliteJobQueue(state / "jobs.sqlite3")
    try:
        payload = {"cmd": "echo hi", "powershell": False, "idempotent_check": None}
        for _ in range(jobs):
            queue.enqueue("windows.exec", payload)
    finally:
        queue.close()
    start = time.perf_counter()
    done = subprocess.run(
        [WIN, "--config", str(config), "worker", "--concurrency", str(concurrency), "--drain"],
        env=_env(state),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"worker failed: {done.stderr[-2000:]}")
    queue = SqliteJobQueue(state / "jobs.sqlite3")
    try:
        counts = queue.counts()
    finally:
        queue.close()
    succeeded = counts.get("succeeded", 0)
    if succeeded != jobs:
        raise RuntimeError(f"only {succeeded}/{jobs} jobs succeeded: {counts}")
    return {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed}


def bench_exec(sshd: SshdHandle, work: Path, repeats: int) -> dict[str, float]:
    """Median wall time of ``windows exec -- echo hi`` and of plain ``ssh … echo hi``."""
    state = work / "state-exec"
    state.mkdir()
    config = _config(sshd, work / "win.json")
    ours_argv = [WIN, "--config", str(config), "windows", "exec", "--", "echo", "hi"]
    ssh_argv = [*sshd.ssh_argv(), "echo", "hi"]
    env = _env(state)
    ours: list[float] = []
    cold: list[float] = []
    plain: list[float] = []

    def timed(argv: list[str], into: list[float]) -> None:
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
        into.append(time.perf_counter() - start)
        if done.returncode != 0 or done.stdout.strip() != b"hi":
            raise RuntimeError(f"{argv[0]} failed: {done.stderr[-500:]!r}")

    timed(ours_argv, [])  # leaves the master the warm calls use
    for _ in range(repeats):
        timed(ours_argv, ours)
        timed(ssh_argv, plain)
    for _ in range(repeats):
        _stop_master(sshd, state)
        timed(ours_argv, cold)
        timed(ssh_argv, plain)
    _stop_master(sshd, state)
    ours_ms = statistics.median(ours) * 1000
    cold_ms = statistics.median(cold) * 1000
    plain_ms = statistics.median(plain) * 1000
    return {
        "windows_exec_ms": ours_ms,
        "windows_exec_cold_ms": cold_ms,
        "plain_ssh_ms": plain_ms,
        "ratio": ours_ms / plain_ms,
        "cold_ratio": cold_ms / plain_ms,
    }


def _stop_master(sshd: SshdHandle, state: Path) -> None:
    """``ssh -O exit`` every master under ``state`` (the CLI names its socket by its target)."""
    sockets = state / "ssh-mux"
    for path in sockets.iterdir() if sockets.is_dir() else ():
        argv = ["ssh", "-F", "none", "-o", f"ControlPath={path}", "-O", "exit", sshd.host]
        subprocess.run(argv, capture_output=True, timeout=10, check=False)
    for _ in range(500):  # the master removes its socket as it exits
        if not sockets.is_dir() or not any(sockets.iterdir()):
            return
        time.sleep(0.01)
    raise RuntimeError(f"a master under {sockets} did not exit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="job-drain rounds (median kept)")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    with tempfile.TemporaryDirectory(prefix="homeops-winbench-") as tmp, start_sshd() as sshd:
        work = Path(tmp)
        exec_result = bench_exec(sshd, work, args.repeats)
        jobs_result = bench_jobs(sshd, work, args.jobs, args.concurrency, args.rounds)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "concurrency": args.concurrency,
        "exec": exec_result,
        "jobs": jobs_result,
        "targets": {"jobs_per_s": JOBS_TARGET, "exec_ratio": EXEC_TARGET},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "windows.json").write_text(json.dumps(result, indent=2) + "\n")
    jobs_ok = jobs_result["jobs_per_s"] >= JOBS_TARGET
    exec_ok = exec_result["ratio"] <= EXEC_TARGET
    md = [
        f"# windows benchmarks ({result['date']}, {result['cpus']} cpus)",
        "",
        "| benchmark | result | target | met |",
        "|---|---|---|---|",
        f"| windows.exec jobs, concurrency {args.concurrency}, {jobs_result['jobs']:.0f} jobs, "
        f"median of {args.rounds} rounds "
        f"| {jobs_result['jobs_per_s']:.0f} jobs/s ({jobs_result['seconds']:.2f} s; each round: "
        f"{', '.join(f'{r:.0f}' for r in jobs_result['jobs_per_s_each'])}) "
        f"| >= {JOBS_TARGET:.0f} jobs/s | {'yes' if jobs_ok else 'no'} |",
        f"| `windows exec -- echo hi` vs `ssh … echo hi` (median of {args.repeats}) "
        f"| {exec_result['windows_exec_ms']:.0f} ms vs {exec_result['plain_ssh_ms']:.0f} ms = "
        f"{exec_result['ratio']:.2f}x | <= {EXEC_TARGET}x | {'yes' if exec_ok else 'no'} |",
        f"| the same, cold: no master, each call logs in (median of {args.repeats}) "
        f"| {exec_result['windows_exec_cold_ms']:.0f} ms vs {exec_result['plain_ssh_ms']:.0f} ms = "
        f"{exec_result['cold_ratio']:.2f}x | (not the target) | - |",
        "",
    ]
    (RESULTS / "windows.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
