"""A worker process for the multi-process job tests: ``python jobs_worker_proc.py DB RUNS …``.

Runs handler ``t.rec``, which appends ``<pid> <job_id> <attempt> start|done|stop <t>`` lines to
RUNS (O_APPEND writes of one short line are atomic, so several processes can share the file;
``t`` is CLOCK_MONOTONIC, the same clock in every process). ``--sweep ROOT`` also serves the
core's real ``core.artifacts-sweep`` handler on ROOT, which reads the store inside this process.
Once the worker has its queue open, ``<pid> - 0 ready <t>`` is written.
Payload ``sleep`` makes the job take that long (capped by ``--cap-sleep``); ``hang_first``
makes the first attempt hang, so a test can kill the process mid-job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from homeops.core import logging as hlog
from homeops.core.housekeeping import SWEEP_ARTIFACTS, sweep_handler
from homeops.core.jobs import Handler, JobContext, SqliteJobQueue, Worker, install_signal_handlers


def record(runs: Path, line: str) -> None:
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {line} {time.monotonic():.6f}\n".encode())
    finally:
        os.close(fd)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--cap-sleep", type=float, default=None)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--sweep", type=Path, default=None, help="artifacts root")
    args = parser.parse_args()
    hlog.configure(stream=sys.stderr)

    async def rec(ctx: JobContext) -> int:
        job = ctx.job
        record(args.runs, f"{job.id} {job.attempts} start")
        delay = float(job.payload.get("sleep", 0))
        if job.payload.get("hang_first") and job.attempts == 1:
            delay = 3600.0
        if args.cap_sleep is not None:
            delay = min(delay, args.cap_sleep)
        try:
            if delay:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            record(args.runs, f"{job.id} {job.attempts} stop")
            raise
        record(args.runs, f"{job.id} {job.attempts} done")
        return os.getpid()

    handlers: dict[str, Handler] = {"t.rec": rec}
    if args.sweep is not None:
        handlers[SWEEP_ARTIFACTS] = sweep_handler(args.sweep, args.db, 0.0)
    queue = SqliteJobQueue(args.db)
    worker = Worker(queue, handlers, slots=args.slots, lease_s=args.lease, grace_s=args.grace)
    record(args.runs, "- 0 ready")
    install_signal_handlers(worker)
    await worker.run(drain=args.drain)
    queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
