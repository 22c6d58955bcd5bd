"""Cold start of the CLI: `homeops --help` and `homeops version` vs `python -c pass`.

Target (issue 2): <= 120 ms median on this machine. Each command runs N times after two
warm-up runs; the packages are byte-compiled by scripts/bootstrap as by any packaged install
(with PYTHONDONTWRITEBYTECODE=1, warm-ups cannot write .pyc files). Medians are recorded in
bench/results/cold_start.json and .md.

Run: .venv/bin/python bench/cold_start.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 120.0


def measure(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall-clock milliseconds of each of ``runs`` runs of ``argv`` (after two warm-ups)."""
    times = []
    for i in range(runs + 2):
        start = time.perf_counter()
        subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True
        )
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    homeops = str(Path(sys.executable).with_name("homeops"))
    env = {**os.environ, "HOMEOPS_STATE_DIR": "/tmp/homeops-bench-state"}
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "homeops version": [homeops, "version"],
        "homeops --help": [homeops, "--help"],
    }
    results = {}
    for name, argv in cases.items():
        samples = measure(argv, args.runs, env)
        results[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "p90_ms": round(sorted(samples)[int(len(samples) * 0.9) - 1], 1),
            "min_ms": round(min(samples), 1),
        }
    base = results["python -c pass"]["median_ms"]
    for name in ("homeops version", "homeops --help"):
        results[name]["ratio_to_python"] = round(results[name]["median_ms"] / base, 2)
        results[name]["pass"] = results[name]["median_ms"] <= TARGET_MS
    record = {
        "benchmark": "cold_start",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": args.runs,
        "target_median_ms": TARGET_MS,
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
        f"Target: median <= {TARGET_MS:g} ms.",
        "",
        "| command | median ms | p90 ms | min ms | x python | target met |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ratio = r.get("ratio_to_python", 1.0)
        ok = {True: "yes", False: "NO"}.get(r.get("pass"), "-")  # type: ignore[arg-type]
        lines.append(
            f"| `{name}` | {r['median_ms']} | {r['p90_ms']} | {r['min_ms']} | {ratio} | {ok} |"
        )
    (out / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
