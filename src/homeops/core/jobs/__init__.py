"""Durable jobs: the model every domain shares, the queue contract and its SQLite backend,
job types (payload model, handler, retry rule) and the async worker that runs them.

Import the pieces from here::

    from homeops.core.jobs import Job, JobState, JobType, Worker, open_store, open_worker_queue
"""

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
