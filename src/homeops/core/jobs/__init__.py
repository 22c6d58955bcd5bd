"""Durable jobs: the model every domain shares, the queue contract and its SQLite backend,
job types (payload model, handler, retry rule) and the async worker that runs them.

Import the pieces from here::

    from homeops.core.jobs import Job, JobState, JobType, Worker, open_store, open_worker_queue
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homeops.core.jobs.model import (
        TERMINAL_STATES,
        Job,
        JobState,
        backoff_delay,
        new_job_id,
        new_trace_id,
        validate_idempotency_key,
        validate_job_id,
        validate_job_type,
        validate_trace_id,
    )
    from homeops.core.jobs.queue import (
        HeartbeatResult,
        JobClient,
        JobQueue,
        LeaseQueue,
        MetricsSink,
        StoreBusy,
        StoreCorrupt,
    )
    from homeops.core.jobs.sqlite import SqliteJobQueue
    from homeops.core.jobs.store import open_store, open_store_at, open_worker_queue
    from homeops.core.jobs.types import (
        JobType,
        PayloadError,
        RetryRule,
        parse_payload,
        should_retry,
        validate_enqueue,
    )
    from homeops.core.jobs.worker import (
        JobArtifacts,
        JobContext,
        Progress,
        Worker,
        default_worker_id,
        install_signal_handlers,
    )

# Loaded on first use (PEP 562): `homeops jobs list` needs the model and the store, not the
# asyncio worker or pydantic's job types (tens of ms of start-up on every command).
_HOMES = {
    "homeops.core.jobs.model": (
        "TERMINAL_STATES",
        "Job",
        "JobState",
        "backoff_delay",
        "new_job_id",
        "new_trace_id",
        "validate_idempotency_key",
        "validate_job_id",
        "validate_job_type",
        "validate_trace_id",
    ),
    "homeops.core.jobs.queue": (
        "HeartbeatResult",
        "JobClient",
        "JobQueue",
        "LeaseQueue",
        "MetricsSink",
        "StoreBusy",
        "StoreCorrupt",
    ),
    "homeops.core.jobs.sqlite": ("SqliteJobQueue",),
    "homeops.core.jobs.store": (
        "open_store",
        "open_store_at",
        "open_worker_queue",
    ),
    "homeops.core.jobs.types": (
        "JobType",
        "PayloadError",
        "RetryRule",
        "parse_payload",
        "should_retry",
        "validate_enqueue",
    ),
    "homeops.core.jobs.worker": (
        "JobArtifacts",
        "JobContext",
        "Progress",
        "Worker",
        "default_worker_id",
        "install_signal_handlers",
    ),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:  # noqa: ANN401
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = [
    "TERMINAL_STATES",
    "HeartbeatResult",
    "Job",
    "JobArtifacts",
    "JobClient",
    "JobContext",
    "JobQueue",
    "JobState",
    "JobType",
    "LeaseQueue",
    "MetricsSink",
    "PayloadError",
    "Progress",
    "RetryRule",
    "SqliteJobQueue",
    "StoreBusy",
    "StoreCorrupt",
    "Worker",
    "backoff_delay",
    "default_worker_id",
    "install_signal_handlers",
    "new_job_id",
    "new_trace_id",
    "open_store",
    "open_store_at",
    "open_worker_queue",
    "parse_payload",
    "should_retry",
    "validate_enqueue",
    "validate_idempotency_key",
    "validate_job_id",
    "validate_job_type",
    "validate_trace_id",
]
