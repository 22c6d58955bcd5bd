"""A worker process for the multi-process job tests: ``python jobs_worker_proc.py DB RUNS …``.

Runs handler ``t.rec``, which appends ``<pid> <job_id> <attempt> start|done|stop <t>`` lines to
RUNS (O_APPEND writes of one short line are atomic, so several processes can share the file;
``t`` is CLOCK_MONOTONIC, the same clock in every process). ``--sweep ROOT`` also serves the
core's real ``core.artifacts-sweep`` job type on ROOT, which reads the store inside this process.
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
from typing import Any

from pydantic import BaseModel, ConfigDict

from homeops.core import logging as hlog
from homeops.core.housekeeping import sweep_job_type
from homeops.core.jobs import JobContext, SqliteJobQueue, Worker, install_signal_handlers
from homeops.core.jobs.types import JobType
from homeops.core.settings import CoreSettings


class Rec(BaseModel):
    """``t.rec``'s payload."""

    model_config = ConfigDict(extra="forbid")

    sleep: float = 0.0
    hang_first: bool = False


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

    async def rec(ctx: JobContext, payload: Rec) -> int:
        job = ctx.job
        record(args.runs, f"{job.id} {job.attempts} start")
        delay = payload.sleep
        if payload.hang_first and job.attempts == 1:
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

    job_types: list[JobType[Any]] = [JobType("t.rec", Rec, rec)]
    if args.sweep is not None:
        # The core's own sweep on this store and root; artifact dirs expire at once.
        settings = CoreSettings.model_validate(
            {
                "state_dir": str(args.db.parent),
                "jobs": {"db_path": str(args.db)},
                "artifacts": {"root": str(args.sweep), "retention_days": 0},
            }
        )
        job_types.append(sweep_job_type(settings))
    queue = SqliteJobQueue(args.db)
    worker = Worker(queue, job_types, slots=args.slots, lease_s=args.lease, grace_s=args.grace)
    record(args.runs, "- 0 ready")
    install_signal_handlers(worker)
    await worker.run(drain=args.drain)
    queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
