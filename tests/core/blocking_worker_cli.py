"""``python blocking_worker_cli.py jobs worker …``: the real CLI plus job type ``t.block``.

``t.block`` sleeps in a thread (``asyncio.to_thread``) for ``sleep`` seconds (payload), the
way a handler calling blocking library code does; cancellation cannot reach it. The test of
``jobs worker`` shutdown uses it to show the process ends even then.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

import homeops.cli as cli
from homeops.core.jobs import JobContext
from homeops.core.jobs.types import JobType
from homeops.core.registry import DomainContext, Registry

_real_build = cli.build_registry


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sleep: float = 60.0


def _build() -> Registry:
    registry = _real_build()

    async def block(ctx: JobContext, payload: Block) -> dict[str, Any]:
        print(f"started {ctx.job.id}", file=sys.stderr, flush=True)
        await asyncio.to_thread(time.sleep, payload.sleep)
        return {}

    def job_types(_ctx: DomainContext) -> Sequence[JobType[Any]]:
        return [JobType("t.block", Block, block)]

    registry.add_job_types("t", job_types)
    return registry


cli.build_registry = _build

if __name__ == "__main__":
    cli.main(sys.argv[1:])
