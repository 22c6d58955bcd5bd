"""SSH per-command cost: homeops' SshPool vs OpenSSH with ControlMaster vs a fresh ssh each time.

Run: ``.venv/bin/python bench/ssh_bench.py [--commands 100] [--repeats 5] [--output-mb 200]``.
Starts its own sshd on 127.0.0.1 (tests/fixtures/sshd.py; as root it logs in as the plain
``homeops-test`` user, whose /bin/sh starts fast). Every variant runs ``--commands``
sequential ``true`` commands, connection setup included; each variant is repeated and the
median total is reported. Target: pool <= 1.0 x ControlMaster.
Then one command printing ``--output-mb`` MB of /dev/urandom, read three ways (default
capture cap, a sink, no cap), each in a fresh process: wall time, the process's peak RSS
growth and the longest event-loop stall (issue 5 measured 1,347 MB and 3.4 s for 200 MB).
Writes bench/results/ssh.json and bench/results/ssh.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The sshd fixture lives in tests/; the bench is run as a script, not through pytest.
sys.path.insert(0, str(ROOT))

from tests.fixtures.sshd import SshdHandle, start_sshd  # noqa: E402

from homeops.core.ssh import DEFAULT_MAX_OUTPUT, SshPool  # noqa: E402

TARGET_RATIO = 1.0
RESULTS = ROOT / "bench" / "results"
COMMAND = "true"


def bench_pool(sshd: SshdHandle, commands: int) -> float:
    """Seconds for ``commands`` sequential commands over a fresh SshPool (connect included)."""

    async def go() -> float:
        start = time.perf_counter()
        async with SshPool() as pool:
            for _ in range(commands):
                result = await pool.run(sshd.target(), COMMAND, timeout=30)
                if not result.ok:
                    raise RuntimeError(f"pool command failed: {result}")
        return time.perf_counter() - start

    return asyncio.run(go())


def _ssh(argv: list[str]) -> None:
    # DEVNULL, not pipes: the backgrounded ControlMaster would hold a pipe open forever.
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ssh failed ({done.returncode}): {argv}")


def bench_controlmaster(sshd: SshdHandle, commands: int) -> float:
    """Seconds for ``commands`` ssh runs sharing one ControlMaster (the first one starts it)."""
    with tempfile.TemporaryDirectory(prefix="homeops-cm-") as tmp:
        opts = [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={tmp}/cm-%C",
            "-o",
            "ControlPersist=60",
        ]
        argv = [*sshd.ssh_argv(*opts), COMMAND]
        start = time.perf_counter()
        try:
            for _ in range(commands):
                _ssh(argv)
            return time.perf_counter() - start
        finally:
            subprocess.run(
                [*sshd.ssh_argv(*opts, "-O", "exit")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )


def bench_fresh(sshd: SshdHandle, commands: int) -> float:
    """Seconds for ``commands`` independent ssh runs (a full handshake each)."""
    argv = [*sshd.ssh_argv("-o", "ControlMaster=no", "-o", "ControlPath=none"), COMMAND]
    start = time.perf_counter()
    for _ in range(commands):
        _ssh(argv)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Measured:
    """One variant's repeated totals and their median."""

    runs_s: list[float]
    median_s: float
    per_command_ms: float


def measure(
    fn: Callable[[SshdHandle, int], float], sshd: SshdHandle, commands: int, repeats: int
) -> Measured:
    """Run ``fn`` ``repeats`` times and keep the median total."""
    runs = [fn(sshd, commands) for _ in range(repeats)]
    median = statistics.median(runs)
    return Measured(
        [round(r, 4) for r in runs], round(median, 4), round(median / commands * 1000, 3)
    )


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) := current RSS


def output_child(sshd: SshdHandle, mode: str, size_mb: int) -> dict[str, float | int | bool]:
    """In a fresh process: read ``size_mb`` MB of random bytes one way; time, memory, stalls."""

    async def go() -> dict[str, float | int | bool]:
        async with SshPool() as pool:
            await pool.run(sshd.target(), "true", timeout=30)  # connected, asyncssh loaded
            _reset_peak_rss()
            base = _status_mib("VmRSS")
            stall = 0.0
            ticking = True

            async def ticker() -> None:
                nonlocal stall
                last = time.perf_counter()
                while ticking:
                    await asyncio.sleep(0.005)
                    now = time.perf_counter()
                    stall = max(stall, now - last - 0.005)
                    last = now

            tick = asyncio.create_task(ticker())
            digest = hashlib.sha256()  # a sink doing real work per chunk
            command = f"head -c {size_mb * 1000 * 1000} /dev/urandom"
            start = time.perf_counter()
            if mode == "sink":
                result = await pool.run(sshd.target(), command, timeout=300, stdout=digest.update)
            else:
                cap = DEFAULT_MAX_OUTPUT if mode == "capture-default-cap" else None
                result = await pool.run(sshd.target(), command, timeout=300, max_output=cap)
            elapsed = time.perf_counter() - start
            ticking = False
            await tick
            return {
                "seconds": round(elapsed, 3),
                "peak_rss_growth_mib": round(_status_mib("VmHWM") - base, 1),
                "max_loop_stall_ms": round(stall * 1000, 1),
                "kept_bytes": len(result.stdout),
                "dropped_bytes": result.stdout_dropped,
                "ok": result.ok,
            }

    return asyncio.run(go())


def bench_output(sshd: SshdHandle, size_mb: int) -> dict[str, dict[str, float | int | bool]]:
    """Each output mode in its own process, so one's peak RSS does not hide another's."""
    modes = ("capture-default-cap", "sink", "capture-no-cap")
    out = {}
    for mode in modes:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
            out[mode] = ex.submit(output_child, sshd, mode, size_mb).result()
    return out


def host_info() -> dict[str, str | int | None]:
    import asyncssh

    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10).stderr
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "openssh": ssh_version.strip(),
        "user": "root" if os.geteuid() == 0 else "non-root",
    }


def write_results(
    data: dict[str, object],
    host: dict[str, str | int | None],
    variants: dict[str, Measured],
    ratio: float,
    passed: bool,
    output: dict[str, dict[str, float | int | bool]],
) -> None:
    """Write bench/results/ssh.json (all numbers) and ssh.md (the table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ssh.json").write_text(json.dumps(data, indent=2) + "\n")
    labels = {
        "pool": "homeops SshPool (asyncssh, one connection)",
        "controlmaster": "OpenSSH ssh, ControlMaster=auto",
        "fresh": "OpenSSH ssh, new connection per command",
    }
    rows = [
        f"| {labels[name]} | {v.median_s:.3f} | {v.per_command_ms:.2f} |"
        for name, v in variants.items()
    ]
    md = [
        "# SSH bench",
        "",
        f"{data['commands']} sequential `{COMMAND}` commands to a local sshd on 127.0.0.1,"
        f" connection setup included, median of {data['repeats']} runs."
        f" Measured {data['date']} on {host['platform']}"
        f" ({host['cpus']} CPUs, {host['openssh']}, asyncssh {host['asyncssh']}).",
        "",
        "| variant | total (s) | per command (ms) |",
        "|---|---:|---:|",
        *rows,
        "",
        f"Ratio pool / ControlMaster: **{ratio}** (target <= {TARGET_RATIO}):"
        f" **{'pass' if passed else 'FAIL'}**.",
        "",
        f"One command printing {data['output_mb']} MB of /dev/urandom, each way in a fresh"
        " process (peak RSS growth after connecting; longest event-loop stall seen by a 5 ms"
        " ticker):",
        "",
        "| output | time (s) | peak RSS growth (MiB) | max loop stall (ms)"
        " | kept / dropped bytes |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {mode} | {o['seconds']} | {o['peak_rss_growth_mib']} | {o['max_loop_stall_ms']}"
            f" | {o['kept_bytes']:,} / {o['dropped_bytes']:,} |"
            for mode, o in output.items()
        ),
        "",
        "Before issue 5 (text results, no cap, no sinks) the same 200 MB peaked at 1,347 MB RSS"
        " and stalled the loop 3.4 s.",
        "",
        "Regenerate: `.venv/bin/python bench/ssh_bench.py`.",
        "",
    ]
    (RESULTS / "ssh.md").write_text("\n".join(md))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-mb", type=int, default=200)
    args = parser.parse_args()

    import_start = time.perf_counter()
    import asyncssh  # noqa: F401  (timed separately: a once-per-process cost, not per command)

    import_s = time.perf_counter() - import_start
    with start_sshd() as sshd:
        bench_pool(sshd, 3)  # warm caches (sshd's first fork, page cache) for every variant
        variants = {
            "pool": measure(bench_pool, sshd, args.commands, args.repeats),
            "controlmaster": measure(bench_controlmaster, sshd, args.commands, args.repeats),
            "fresh": measure(bench_fresh, sshd, args.commands, args.repeats),
        }
        output = bench_output(sshd, args.output_mb)
    ratio = round(variants["pool"].median_s / variants["controlmaster"].median_s, 3)
    passed = ratio <= TARGET_RATIO
    host = host_info()
    data: dict[str, object] = {
        "bench": "ssh",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host,
        "command": COMMAND,
        "commands": args.commands,
        "repeats": args.repeats,
        "asyncssh_import_s": round(import_s, 3),
        "variants": {name: asdict(v) for name, v in variants.items()},
        "ratio_pool_vs_controlmaster": ratio,
        "target_ratio_max": TARGET_RATIO,
        "pass": passed,
        "output_mb": args.output_mb,
        "output": output,
    }
    write_results(data, host, variants, ratio, passed, output)
    for name, v in variants.items():
        print(f"{name:>14}: {v.median_s:.3f} s total, {v.per_command_ms:.2f} ms/command")
    verdict = "PASS" if passed else "FAIL"
    print(f"pool / controlmaster = {ratio} (target <= {TARGET_RATIO}): {verdict}")
    print(f"asyncssh import (once per process, not included): {import_s:.3f} s")
    for mode, o in output.items():
        print(f"{mode:>20}: {o}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
