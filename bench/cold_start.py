"""Cold start of the CLI: every command's `--help`, `version`, `jobs list`, vs `python -c pass`.

Targets: `homeops --help` and `version` <= 120 ms median (issue 2); every subcommand's
`--help` and `jobs list` on an empty store <= 100 ms median (issue 6). The command list is
read from the app itself, so a new command is measured without editing this file. Each
command runs N times after two warm-up runs; the package is byte-compiled first, as any
packaged install is. Medians are recorded in
bench/results/cold_start.json and .md.

Run: .venv/bin/python bench/cold_start.py [--runs 20] [--only 'jobs list']
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

ROOT = Path(__file__).resolve().parents[1]
TARGET_TOP_MS = 120.0
TARGET_SUB_MS = 100.0


def measure(cases: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    """Wall-clock milliseconds of ``runs`` runs of each case (after two warm-up rounds).

    Round-robin, one run of every case per round: a machine that speeds up or slows down
    during the minutes this takes shifts every case alike instead of the last ones only.
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(runs + 2):
        for name, argv in cases.items():
            start = time.perf_counter()
            subprocess.run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True
            )
            if i >= 2:
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def command_paths() -> list[list[str]]:
    """Every group and command of the umbrella app, as argv prefixes, in help order."""
    import typer

    from homeops.cli import build_app

    root: Any = typer.main.get_command(build_app())
    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:  # noqa: ANN401
        if path:
            paths.append(path)
        sub = getattr(command, "commands", None)
        if sub is None:
            return
        for name in command.list_commands(None):
            walk(command.get_command(None, name), [*path, name])

    walk(root, [])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", action="append", default=[], help="Only these commands.")
    args = parser.parse_args()
    homeops = str(Path(sys.executable).with_name("homeops"))
    # As a packaged install is: byte-compiled. Under PYTHONDONTWRITEBYTECODE=1 a module
    # edited since bootstrap would otherwise be compiled from source on every run.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "homeops")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    state = tempfile.mkdtemp(prefix="homeops-bench-state-")
    env = {**os.environ, "HOMEOPS_STATE_DIR": state}
    for name in ("HOMEOPS_CONFIG", "HOMEOPS_JOBS_DB_PATH"):
        env.pop(name, None)
    cases: dict[str, tuple[list[str], float | None]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        "homeops version": ([homeops, "version"], TARGET_TOP_MS),
        "homeops --help": ([homeops, "--help"], TARGET_TOP_MS),
    }
    for path in command_paths():
        if path == ["version"]:
            continue
        cases[f"homeops {' '.join(path)} --help"] = ([homeops, *path, "--help"], TARGET_SUB_MS)
    cases["homeops jobs list (empty store)"] = ([homeops, "jobs", "list"], TARGET_SUB_MS)
    if args.only:
        cases = {
            k: v
            for k, v in cases.items()
            if k == "python -c pass" or any(o in k for o in args.only)
        }
    results: dict[str, dict[str, Any]] = {}
    measured = measure({name: argv for name, (argv, _) in cases.items()}, args.runs, env)
    for name, samples in measured.items():
        results[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "p90_ms": round(sorted(samples)[max(int(len(samples) * 0.9) - 1, 0)], 1),
            "min_ms": round(min(samples), 1),
        }
        print(f"{name}: {results[name]['median_ms']} ms", file=sys.stderr)
    base = results["python -c pass"]["median_ms"]
    top = results.get("homeops --help", {}).get("median_ms")
    for name, (_, target) in cases.items():
        if target is None:
            continue
        results[name]["ratio_to_python"] = round(results[name]["median_ms"] / base, 2)
        if top:
            # Robust to a slow or busy machine: what a subcommand costs beyond the app itself.
            results[name]["ratio_to_help"] = round(results[name]["median_ms"] / top, 2)
        results[name]["target_ms"] = target
        results[name]["pass"] = results[name]["median_ms"] <= target
    record = {
        "benchmark": "cold_start",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": args.runs,
        "results": results,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_start.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# CLI cold start",
        "",
        f"{record['date']}, {args.runs} runs each, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}.",
        f"Targets: median <= {TARGET_TOP_MS:g} ms for `--help` and `version` (issue 2), "
        f"<= {TARGET_SUB_MS:g} ms for every subcommand's `--help` and `jobs list` (issue 6).",
        "",
        "| command | median ms | p90 ms | min ms | x python | x `--help` | target ms | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ratio = r.get("ratio_to_python", 1.0)
        ok = {True: "yes", False: "NO"}.get(r.get("pass"), "-")  # type: ignore[arg-type]
        target = r.get("target_ms", "-")
        to_help = r.get("ratio_to_help", "-")
        lines.append(
            f"| `{name}` | {r['median_ms']} | {r['p90_ms']} | {r['min_ms']} | {ratio} "
            f"| {to_help} | {target} | {ok} |"
        )
    (out / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
