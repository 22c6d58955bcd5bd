"""The services domain's two targets (issue 8).

Run: ``.venv/bin/python bench/services_bench.py [--mb 500] [--rounds 3] [--services 50]``.

1. ``svc backup local bench`` vs a bare ``restic backup`` of the same tree (``--mb`` MB of
   incompressible files in a few hundred files and directories), each into a fresh
   repository of its own, alternated, ``--rounds`` pairs, median of the pairs' ratios.
   ``svc`` is a fresh process each time (start-up, settings, the job in the store, hooks
   of none, the forget step included) on one job store, as on a server; restic's own work
   is the same in both. In a fresh repository forget provably removes nothing and is
   skipped (services/retention.py); what a forget costs when it is due is measured apart:
   a second ``svc backup`` of the unchanged tree into the same repository on the same day
   (forget removes the first snapshot) against the same run with forget skipped (policy
   empty). Target: <= 1.05x.
2. ``svc list`` over ``--services`` services, each with a backup recorded in the job store
   (no restic call on this path), median of 15 runs. Target: <= 300 ms.

Writes bench/results/services.json and services.md.
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
RESULTS = ROOT / "bench" / "results"
SVC = str(Path(sys.executable).with_name("svc"))
BACKUP_TARGET = 1.05
LIST_TARGET_MS = 300.0


def make_tree(root: Path, megabytes: int) -> None:
    """``megabytes`` MB of random bytes in files of 64 KiB to 8 MiB under 20 directories."""
    rng = os.urandom
    sizes = [64 << 10, 1 << 20, 8 << 20]
    total = megabytes << 20
    n = 0
    while total > 0:
        size = min(sizes[n % len(sizes)], total)
        folder = root / f"d{n % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{n:05d}.bin").write_bytes(rng(size))
        total -= size
        n += 1


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "HOMEOPS_STATE_DIR": str(state), "HOMEOPS_LOG_LEVEL": "warn"}


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=3600, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return elapsed


def bench_backup(work: Path, megabytes: int, rounds: int) -> dict[str, Any]:
    """Alternate bare restic and svc backup of one tree into fresh repositories."""
    tree = work / "tree"
    make_tree(tree, megabytes)
    password = work / "pw"
    password.write_text("bench\n")
    pairs: list[tuple[float, float]] = []
    state = work / "state-backup"
    for n in range(rounds):
        bare_repo = work / f"bare-{n}"
        svc_repo = work / f"svc-{n}"
        base = {**os.environ, "RESTIC_PASSWORD_FILE": str(password)}
        for repo in (bare_repo, svc_repo):
            subprocess.run(
                ["restic", "init", "--quiet"],
                env={**base, "RESTIC_REPOSITORY": str(repo)},
                check=True,
                capture_output=True,
                timeout=120,
            )
        config = work / f"services-{n}.json"
        config.write_text(
            json.dumps(
                {
                    "repositories": {
                        "local": {"repository": str(svc_repo), "password_file": str(password)}
                    },
                    "services": {
                        "bench": {"backup": {"enable": True, "paths": [str(tree)]}},
                    },
                }
            )
        )
        bare_argv = ["restic", "backup", "--json", "--tag=bench", str(tree)]
        bare_env = {**base, "RESTIC_REPOSITORY": str(bare_repo)}
        svc_argv = [SVC, "--config", str(config), "backup", "local", "bench"]
        # Alternate which goes first, so the page cache favours neither.
        if n % 2:
            svc_s = _timed(svc_argv, _env(state))
            bare_s = _timed(bare_argv, bare_env)
        else:
            bare_s = _timed(bare_argv, bare_env)
            svc_s = _timed(svc_argv, _env(state))
        pairs.append((svc_s, bare_s))
    ratios = [s / b for s, b in pairs]
    forget_s = _forget_cost(work, tree, password, state, rounds)
    return {
        "megabytes": megabytes,
        "rounds": rounds,
        "svc_s": [s for s, _ in pairs],
        "restic_s": [b for _, b in pairs],
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "forget_due_extra_s": forget_s,
    }


def _forget_cost(work: Path, tree: Path, password: Path, state: Path, rounds: int) -> float:
    """Median extra wall time of an incremental ``svc backup`` whose forget is due (removes
    the previous snapshot of the day) over the same backup with no forget policy."""
    extra: list[float] = []
    for n in range(rounds):
        timings = {}
        for label, policy in (("due", {}), ("none", {"daily": 0, "weekly": 0, "monthly": 0})):
            repo = work / f"forget-{label}-{n}"
            subprocess.run(
                ["restic", "init", "--quiet"],
                env={
                    **os.environ,
                    "RESTIC_PASSWORD_FILE": str(password),
                    "RESTIC_REPOSITORY": str(repo),
                },
                check=True,
                capture_output=True,
                timeout=120,
            )
            config = work / f"services-forget-{label}.json"
            backup: dict[str, Any] = {"enable": True, "paths": [str(tree)]}
            if policy:
                backup["policy"] = policy
            config.write_text(
                json.dumps(
                    {
                        "repositories": {
                            "local": {"repository": str(repo), "password_file": str(password)}
                        },
                        "services": {"bench": {"backup": backup}},
                    }
                )
            )
            argv = [SVC, "--config", str(config), "backup", "local", "bench"]
            _timed(argv, _env(state))  # the first snapshot of the day
            timings[label] = _timed(argv, _env(state))  # unchanged tree: forget is due
        extra.append(timings["due"] - timings["none"])
    return statistics.median(extra)


def bench_list(work: Path, services: int, repeats: int = 25) -> dict[str, Any]:
    """``svc list`` over ``services`` services with one recorded backup each."""
    sys.path.insert(0, str(ROOT / "src"))
    from homeops.core.jobs.sqlite import SqliteJobQueue

    state = work / "state-list"
    state.mkdir()
    names = [f"svc{n:02d}" for n in range(services)]
    config = work / "services-list.json"
    config.write_text(
        json.dumps(
            {
                "repositories": {
                    "local": {"repository": str(work / "none"), "password_file": "/dev/null"}
                },
                "services": {
                    name: {"backup": {"enable": True, "paths": [f"/srv/{name}"]}} for name in names
                },
            }
        )
    )
    queue = SqliteJobQueue(state / "jobs.sqlite3")
    try:
        for name in names:
            job = queue.enqueue("services.backup", {"repo": "local", "service": name})
            [claimed] = queue.claim("bench", 1, 30.0, ids=[job.id])
            result = {
                "repo": "local",
                "service": name,
                "state": "ok",
                "snapshot_id": "0123abcd",
                "finished_at": datetime.now(UTC).isoformat(),
                "files": 10,
                "bytes": 1 << 20,
                "data_added": 1 << 10,
            }
            queue.complete(claimed.id, "bench", result)
    finally:
        queue.close()
    argv = [SVC, "--config", str(config), "list"]
    env = _env(state)
    for _ in range(3):
        _timed(argv, env)  # warm the page cache and the byte-code
    # The machine's own speed drifts by tens of percent over minutes here: a bare
    # interpreter start, timed in turn with each run, says how fast it was meanwhile.
    times: list[float] = []
    bare: list[float] = []
    for _ in range(repeats):
        times.append(_timed(argv, env))
        bare.append(_timed([sys.executable, "-c", "pass"], env))
    return {
        "services": services,
        "repeats": repeats,
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "python_pass_median_ms": statistics.median(bare) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--services", type=int, default=50)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    with tempfile.TemporaryDirectory(prefix="homeops-svcbench-") as tmp:
        work = Path(tmp)
        listing = bench_list(work, args.services)
        backup = bench_backup(work, args.mb, args.rounds)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "backup": backup,
        "list": listing,
        "targets": {"backup_ratio": BACKUP_TARGET, "list_ms": LIST_TARGET_MS},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "services.json").write_text(json.dumps(result, indent=2) + "\n")
    backup_ok = backup["ratio"] <= BACKUP_TARGET
    list_ok = listing["median_ms"] <= LIST_TARGET_MS
    each = ", ".join(f"{r:.3f}" for r in backup["ratios"])
    md = [
        f"# services benchmarks ({result['date']}, {result['cpus']} cpus)",
        "",
        "| benchmark | result | target | met |",
        "|---|---|---|---|",
        f"| `svc backup` vs bare `restic backup`, {args.mb} MB tree, fresh repos, "
        f"median of {args.rounds} pairs | {backup['ratio']:.3f}x (pairs: {each}; restic "
        f"{statistics.median(backup['restic_s']):.1f} s) | <= {BACKUP_TARGET}x "
        f"| {'yes' if backup_ok else 'no'} |",
        f"| `svc list` over {args.services} services (median of {listing['repeats']}; "
        f"min {listing['min_ms']:.0f}, max {listing['max_ms']:.0f}; `python -c pass` "
        f"{listing['python_pass_median_ms']:.0f} ms meanwhile) "
        f"| {listing['median_ms']:.0f} ms | <= {LIST_TARGET_MS:.0f} ms "
        f"| {'yes' if list_ok else 'no'} |",
        "",
        f"A forget that is due (it removes a snapshot) adds "
        f"{backup['forget_due_extra_s']:.2f} s to a backup (median of {args.rounds}): one more "
        "restic process, most of it restic's key derivation.",
        "",
    ]
    (RESULTS / "services.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
