"""``python blocking_worker_cli.py jobs worker …``: the real CLI plus job type ``t.block``.

``t.block`` sleeps in a thread (``asyncio.to_thread``) for ``payload["sleep"]`` seconds, the
way a handler calling blocking library code does; cancellation cannot reach it. The test of
``jobs worker`` shutdown uses it to show the process ends even then.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

import homeops.cli as cli
from homeops.core.jobs import Handler, JobContext
from homeops.core.registry import DomainContext, Registry

_real_build = cli.build_registry


def _build() -> Registry:
    registry = _real_build()

    async def block(ctx: JobContext) -> dict[str, Any]:
        print(f"started {ctx.job.id}", file=sys.stderr, flush=True)
        await asyncio.to_thread(time.sleep, float(ctx.job.payload.get("sleep", 60)))
        return {}

    def handlers(_ctx: DomainContext) -> Mapping[str, Handler]:
        return {"t.block": block}

    registry.add_handlers("t", handlers)
    return registry


cli.build_registry = _build

if __name__ == "__main__":
    cli.main(sys.argv[1:])
