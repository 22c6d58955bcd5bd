"""Job types for tests of the worker's machinery, where the payload's shape is not the point.

``types({"t.x": handler})`` turns old-style handlers (``handler(ctx)``, reading
``ctx.job.payload``) into :class:`JobType` s whose model takes any JSON object, so a test
about leases or shutdown states only what it is about. Tests of payload models and retry
rules build real job types instead (test_job_types.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from homeops.core.jobs import JobContext
from homeops.core.jobs.types import JobType, RetryRule

CtxHandler = Callable[[JobContext], Awaitable[Any]]


class AnyPayload(BaseModel):
    """Any JSON object (extra keys are kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)


def job_type(name: str, fn: CtxHandler, *, retryable: bool | RetryRule = True) -> JobType[Any]:
    """``fn(ctx)`` as the handler of job type ``name``."""

    async def handle(ctx: JobContext, _payload: AnyPayload) -> Any:
        return await fn(ctx)

    return JobType(name, AnyPayload, handle, retryable=retryable)


def types(handlers: Mapping[str, CtxHandler]) -> list[JobType[Any]]:
    """One :func:`job_type` per entry."""
    return [job_type(name, fn) for name, fn in handlers.items()]
