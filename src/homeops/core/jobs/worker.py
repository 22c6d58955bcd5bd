"""Runs jobs from a :class:`~homeops.core.jobs.queue.JobQueue` in N async slots.

One loop claims as many jobs as there are free slots (one transaction for the batch), each job
runs as its own task, and one heartbeat task extends every lease this worker holds in a single
call and learns which jobs were asked to cancel. Shutdown (``request_stop`` or SIGTERM/SIGINT)
stops claiming, gives running jobs ``grace_s`` to finish, then cancels them and hands them back
with ``requeue`` so another worker runs them; a second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from homeops.core.errors import HomeopsError, UsageError
from homeops.core.jobs.model import Job, JobState, validate_job_id
from homeops.core.jobs.queue import JobQueue, MetricsSink
from homeops.core.logging import Logger, get_logger, timed

_log = get_logger("core.jobs")

# Cancel requests are seen through heartbeats; this bounds how late a cancel takes effect.
MAX_HEARTBEAT_INTERVAL_S: Final = 0.25
# After the grace period, cancelled handlers get this long to unwind before we stop waiting
# (a handler that swallows cancellation keeps its lease until it expires, then is re-run).
_UNWIND_S: Final = 5.0

_StopReason = Literal["cancel", "shutdown"]


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: the job, a logger bound to it, and whether cancel was requested."""

    job: Job
    log: Logger
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested; the handler's task is cancelled right after."""
        return self.cancel_event.is_set()


Handler = Callable[[JobContext], Awaitable[Any]]


@dataclass
class _Running:
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    reason: _StopReason | None = None
    started: bool = False


def default_worker_id() -> str:
    """``host-pid-random``, cleaned to the job-id alphabet."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", raw).replace("..", ".").lstrip("._-")
    return validate_job_id(cleaned[-128:] or f"worker-{os.getpid()}")


class Worker:
    """Claims and runs jobs with ``handlers[job.type]``; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        *,
        slots: int = 10,
        lease_s: float = 30.0,
        poll_interval: float = 0.01,
        heartbeat_interval: float | None = None,
        worker_id: str | None = None,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = 10.0,
        any_type: bool = False,
    ) -> None:
        if slots < 1:
            raise UsageError(f"slots must be >= 1, got {slots}")
        if lease_s <= 0 or poll_interval <= 0 or grace_s < 0:
            raise UsageError("lease_s and poll_interval must be > 0, grace_s >= 0")
        default_hb = min(lease_s / 3, MAX_HEARTBEAT_INTERVAL_S)
        if heartbeat_interval is not None and not 0 < heartbeat_interval <= default_hb:
            raise UsageError(
                f"heartbeat_interval must be in (0, {default_hb:g}] "
                f"(lease/3 and {MAX_HEARTBEAT_INTERVAL_S}s for prompt cancels)"
            )
        self.queue = queue
        self.handlers = dict(handlers)
        # Claim only the types this worker can run, so each domain's worker can share one
        # store. ``any_type`` takes everything and fails what has no handler (not retried).
        self._types: list[str] | None = None if any_type else sorted(self.handlers)
        self.slots = slots
        self.lease_s = lease_s
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval or default_hb
        self.worker_id = validate_job_id(worker_id) if worker_id else default_worker_id()
        self.grace_s = grace_s
        self._metrics = metrics
        self._clock = clock
        self._running: dict[str, _Running] = {}
        self._stop = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._wake = asyncio.Event()
        self._log = _log.bind(worker_id=self.worker_id)

    @property
    def running_ids(self) -> list[str]:
        """Ids of the jobs running in this worker right now."""
        return list(self._running)

    def request_stop(self) -> None:
        """Stop claiming and shut down gracefully; called a second time, skip the grace period."""
        if self._stop.is_set():
            if not self._stop_now.is_set():
                self._log.warn("stop", "second stop request; not waiting for running jobs")
            self._stop_now.set()
        else:
            self._log.info(
                "stop", "stop requested; no new jobs will be claimed", running=len(self._running)
            )
        self._stop.set()
        self._wake.set()

    async def run(self, stop: asyncio.Event | None = None, *, drain: bool = False) -> None:
        """Run until ``stop`` is set or :meth:`request_stop` is called (a worker runs once).

        With ``drain``, also return once this worker is idle and the queue holds no queued or
        running job (delayed retries included), i.e. all work is done.
        """
        watcher: asyncio.Task[None] | None = None
        if stop is not None and stop.is_set():
            self.request_stop()
        elif stop is not None:
            watcher = asyncio.create_task(self._watch(stop))
        beat = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat:{self.worker_id}")
        self._log.info("start", "worker started", slots=self.slots, lease_s=self.lease_s)
        try:
            await self._claim_loop(drain)
            await self._shutdown()
        finally:
            for task in (watcher, beat):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (watcher, beat) if t), return_exceptions=True)
            # If run() itself was cancelled, hand back whatever is still ours.
            for entry in list(self._running.values()):
                if entry.task is not None and not entry.task.done():
                    entry.reason = "shutdown"
                    entry.task.cancel()
            self._set_running_gauge()
            self._log.info("stop", "worker stopped")

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.request_stop()

    async def _claim_loop(self, drain: bool) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            free = self.slots - len(self._running)
            claimed = 0
            if free > 0:
                try:
                    jobs = self.queue.claim(self.worker_id, free, self.lease_s, types=self._types)
                except HomeopsError as exc:
                    self._log.error("claim", "claim failed; will retry", err=exc)
                    jobs = []
                    await asyncio.sleep(min(1.0, self.poll_interval * 10))
                for job in jobs:
                    self._start(job)
                claimed = len(jobs)
            if drain and not claimed and not self._running and self._queue_idle():
                self._log.info("drain", "no jobs left; stopping")
                return
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
            # Let other jobs that finish in the same tick free their slots: one bigger claim.
            await asyncio.sleep(0)

    def _queue_idle(self) -> bool:
        try:
            counts = self.queue.counts(types=self._types)
        except HomeopsError as exc:
            self._log.warn("drain", "cannot read job counts; not idle", err=exc)
            return False
        return counts[JobState.QUEUED] == 0 and counts[JobState.RUNNING] == 0

    def _start(self, job: Job) -> None:
        log = _log.bind(job_id=job.id, trace_id=job.trace_id, job_type=job.type)
        entry = _Running(JobContext(job=job, log=log))
        self._running[job.id] = entry
        entry.task = asyncio.create_task(self._execute(entry), name=f"job:{job.id}")
        entry.task.add_done_callback(lambda _t: self._finished(entry))
        self._set_running_gauge()

    def _finished(self, entry: _Running) -> None:
        # A task cancelled before its first step never runs its body (no except, no finally),
        # so the outcome of such a job is recorded here.
        if not entry.started and entry.reason is not None:
            try:
                self._stopped(entry, 0.0)
            except HomeopsError as exc:
                entry.ctx.log.error("run", "could not record job outcome", err=exc)  # noqa: TRY400
        self._running.pop(entry.ctx.job.id, None)
        self._set_running_gauge()
        self._wake.set()

    def _set_running_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.set("jobs_running", float(len(self._running)))

    def _inc(self, name: str) -> None:
        if self._metrics is not None:
            self._metrics.inc(name)

    async def _execute(self, entry: _Running) -> None:
        ctx = entry.ctx
        job, log = ctx.job, ctx.log
        entry.started = True
        elapsed = timed(self._clock)
        try:
            handler = self.handlers.get(job.type)
            if handler is None:
                self._fail(ctx, f"no handler for job type {job.type!r}", False, elapsed())
                return
            log.info("run", "job started", attempt=job.attempts, of=job.max_attempts)
            timeout_cm = asyncio.timeout(job.timeout_s) if job.timeout_s is not None else None
            try:
                if timeout_cm is not None:
                    async with timeout_cm:
                        result = await handler(ctx)
                else:
                    result = await handler(ctx)
            except asyncio.CancelledError:
                if entry.reason is None:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                self._stopped(entry, elapsed())
            except TimeoutError as exc:
                if timeout_cm is not None and timeout_cm.expired():
                    self._fail(ctx, f"timed out after {job.timeout_s:g}s", True, elapsed())
                else:
                    self._fail(ctx, _describe(exc), True, elapsed())
            except UsageError as exc:
                self._fail(ctx, _describe(exc), False, elapsed())
            except Exception as exc:  # any handler failure is a job failure
                self._fail(ctx, _describe(exc), True, elapsed())
            else:
                self._complete(ctx, result, elapsed())
        except HomeopsError as exc:
            # The queue itself failed (database gone?). The lease runs out and the job is
            # picked up again; nothing more we can do here.
            log.error("run", "could not record job outcome", err=exc)  # noqa: TRY400

    def _complete(self, ctx: JobContext, result: Any, ms: float) -> None:  # noqa: ANN401
        job = ctx.job
        try:
            owned = self.queue.complete(job.id, self.worker_id, result)
        except UsageError as exc:
            self._fail(ctx, str(exc), False, ms)
            return
        if owned:
            self._inc("jobs_completed_total")
            ctx.log.info("run", "job succeeded", attempt=job.attempts, duration_ms=ms)
        else:
            ctx.log.warn(
                "run",
                "lease lost before completion; result dropped",
                attempt=job.attempts,
                duration_ms=ms,
            )

    def _fail(self, ctx: JobContext, error: str, retryable: bool, ms: float) -> None:
        job = ctx.job
        owned = self.queue.fail(job.id, self.worker_id, error, retryable=retryable)
        if not owned:
            ctx.log.warn(
                "run",
                "lease lost before failure was recorded",
                err=error,
                attempt=job.attempts,
                duration_ms=ms,
            )
            return
        self._inc("jobs_failed_total")
        will_retry = retryable and job.attempts < job.max_attempts and not ctx.cancelled
        ctx.log.log(
            "warn" if will_retry else "error",
            "run",
            "job failed; will retry" if will_retry else "job failed",
            err=error,
            duration_ms=ms,
            attempt=job.attempts,
            of=job.max_attempts,
        )

    def _stopped(self, entry: _Running, ms: float) -> None:
        ctx = entry.ctx
        job = ctx.job
        if entry.reason == "cancel":
            if self.queue.mark_cancelled(job.id, self.worker_id):
                self._inc("jobs_cancelled_total")
                ctx.log.info("run", "job cancelled", attempt=job.attempts, duration_ms=ms)
        elif self.queue.requeue(job.id, self.worker_id):
            ctx.log.info(
                "run",
                "worker stopping; job handed back to the queue",
                attempt=job.attempts,
                duration_ms=ms,
            )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if not self._running:
                continue
            try:
                to_cancel = self.queue.heartbeat(self.worker_id, list(self._running), self.lease_s)
            except HomeopsError as exc:
                self._log.warn("heartbeat", "heartbeat failed; will retry", err=exc)
                continue
            for job_id in to_cancel:
                entry = self._running.get(job_id)
                if entry is not None and entry.reason is None and entry.task is not None:
                    entry.reason = "cancel"
                    entry.ctx.cancel_event.set()
                    entry.task.cancel()

    async def _shutdown(self) -> None:
        tasks = [e.task for e in self._running.values() if e.task is not None]
        if not tasks:
            return
        self._log.info("stop", "waiting for running jobs", running=len(tasks), grace_s=self.grace_s)
        everything = asyncio.gather(*tasks, return_exceptions=True)
        now = asyncio.create_task(self._stop_now.wait())
        waiters: set[asyncio.Future[Any]] = {everything, now}
        await asyncio.wait(waiters, timeout=self.grace_s, return_when=asyncio.FIRST_COMPLETED)
        now.cancel()
        left = [e for e in self._running.values() if e.task is not None and not e.task.done()]
        for entry in left:
            if entry.reason is None:
                entry.reason = "shutdown"
            assert entry.task is not None
            entry.task.cancel()
        if left:
            self._log.info(
                "stop", "grace period over; handing running jobs back", running=len(left)
            )
            await asyncio.wait({everything}, timeout=_UNWIND_S)
        if not everything.done():
            everything.cancel()
            self._log.warn(
                "stop",
                "some handlers ignored cancellation; their leases will expire",
                running=len(self._running),
            )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def install_signal_handlers(worker: Worker) -> Callable[[], None]:
    """SIGTERM/SIGINT call ``worker.request_stop()`` (a second one skips the grace period).

    Must be called from the running event loop; returns a function that removes the handlers.
    """
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
        loop.add_signal_handler(sig, worker.request_stop)

    def remove() -> None:
        for sig in sigs:
            loop.remove_signal_handler(sig)

    return remove
