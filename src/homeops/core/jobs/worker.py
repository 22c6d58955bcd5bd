"""Runs jobs from a :class:`~homeops.core.jobs.queue.LeaseQueue` in N async slots.

One loop claims as many jobs as there are free slots (one transaction for the batch), each job
runs as its own task, and one heartbeat task extends every lease this worker holds in a single
call and learns which jobs were asked to cancel and which it no longer holds. Shutdown
(``request_stop`` or SIGTERM/SIGINT) stops claiming, gives running jobs ``grace_s`` to finish,
then cancels them and hands them back with ``requeue`` so another worker runs them; a second
signal skips the grace period. If ``run()`` itself is cancelled, running jobs (and those of a
claim still in flight) are stopped and handed back the same way, without the grace period,
before the cancellation goes on.

Each job runs its :class:`~homeops.core.jobs.types.JobType`'s handler with the stored payload
parsed by the type's model (one that no longer parses fails at once, not retried), and the
type's retry rule decides whether a failed attempt gets another. The handler's
:class:`JobContext` carries the job's artifact directory (``ctx.artifacts``) and a progress
callback (``ctx.progress``; the latest report is :meth:`Worker.progress`).

A queue call that finds the store damaged (:class:`~homeops.core.jobs.queue.StoreCorrupt`)
ends the worker: running jobs are stopped as for a cancelled ``run()`` and ``run()`` raises
the error, because every later call would fail the same way (a worker that retried would
poll forever and a ``--drain`` would never end).

Queue calls never run on the event loop: they go, one at a time, to a thread of the worker's
own, so a database lock held by another process (SQLite waits up to its busy timeout) delays
only bookkeeping, never handlers, per-job timeouts, cancels or the heartbeat's lease checks.

At most one local run per job, and none after the lease is gone:

* The heartbeat reports which ids the worker still holds; a running job that is not held any
  more (its lease lapsed and another claim took it) is cancelled locally, and nothing is
  recorded for it: the job's new owner owns its state.
* Every run knows when its lease runs out by the worker's own clock (claim or last successful
  heartbeat + ``lease_s``, counted from before the call was made, so never later than the
  database's view). If no heartbeat got through by one heartbeat interval before that, the
  worker stops the run itself ("fencing"), so a stalled or failing heartbeat cannot leave it
  running next to the run of whoever claims the job after the lease. (Handlers that ignore
  cancellation defeat this; they are also the ones that hold up shutdown.)
* A claim may hand this worker a job it is still running itself: the lease lapsed (by the
  database's clock) just before the run was fenced, and the claim re-took it. The worker never
  starts a second run of an id it is running. If the local run is live, it keeps going under
  the fresh lease (the claim counted one more attempt, which is the record of the lapse; the
  run's outcome is recorded under the new lease, as the worker id is the same). If the local
  run is already stopping because its lease was lost, it will record nothing, so the job is
  handed straight back with ``requeue`` (which gives the attempt back) for a later claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, TypeVar

from homeops.core.errors import HomeopsError, OperationalError, UsageError
from homeops.core.jobs.model import Job, JobState, validate_job_id
from homeops.core.jobs.queue import LeaseQueue, MetricsSink, StoreCorrupt
from homeops.core.jobs.types import JobType, PayloadError, parse_payload, should_retry
from homeops.core.logging import Logger, get_logger, timed

if TYPE_CHECKING:
    from homeops.core.artifacts import Artifact, ArtifactStore, Manifest

_log = get_logger("core.jobs")

# Cancel requests are seen through heartbeats; this bounds how late a cancel takes effect.
MAX_HEARTBEAT_INTERVAL_S: Final = 0.25
# After the grace period, cancelled handlers get this long to unwind before we stop waiting
# (a handler that swallows cancellation keeps its lease until it expires, then is re-run).
_UNWIND_S: Final = 5.0
# A job type's close() (an SSH pool waiting for its kills) gets this long at worker stop.
CLOSE_TIMEOUT_S: Final = 15.0

# Why a run is being stopped: a cancel request, worker shutdown, or the lease is gone.
_StopReason = Literal["cancel", "shutdown", "lost"]
_P = ParamSpec("_P")
_T = TypeVar("_T")


# A handler reporting progress per file or per line would flood the log: at most one
# progress line per job per this many seconds (the latest value is always kept).
PROGRESS_LOG_INTERVAL_S: Final = 2.0
# Progress messages go into log lines; a handler passing a whole output chunk gets it cut.
MAX_PROGRESS_MESSAGE: Final = 200


@dataclass(frozen=True)
class Progress:
    """A handler's latest progress report: done fraction (0..1, or unknown) and a message."""

    fraction: float | None
    message: str
    at: float
    """Wall clock (seconds since the epoch) of the report."""


@dataclass
class _ProgressState:
    latest: Progress | None = None
    logged_at: float | None = None
    skipped: int = 0


class JobArtifacts:
    """The artifact directory of one job, bound to its job id and trace id.

    A thin view of :class:`~homeops.core.artifacts.ArtifactStore`: every write goes through
    the store (atomic files, locked manifest, validated paths); what this adds is that the
    job's manifest is created, by the first write and in the same update, with the job's
    trace id, so every file a handler writes is listed under the right job and trace.
    Nothing is created until the first write: a job that stores nothing leaves no directory
    behind. :meth:`write_files` stores several files with one manifest update.
    """

    def __init__(self, store: ArtifactStore, job_id: str, trace_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.trace_id = trace_id
        self._ensured = False

    @property
    def path(self) -> Path:
        """The job's directory (it exists once something was written)."""
        return self.store.job_dir(self.job_id)

    async def ensure(self) -> Path:
        """Create the job's directory and manifest (with its trace id) if they are absent."""
        if not self._ensured:
            await asyncio.to_thread(self.store.ensure_job, self.job_id, self.trace_id)
            self._ensured = True
        return self.path

    async def write_bytes(self, rel_path: str, data: bytes, *, type: str) -> Artifact:
        """Store ``data`` as ``rel_path`` (``a/b.txt``) of this job, typed ``type``."""
        return await self.store.add_bytes(
            self.job_id, rel_path, data, type=type, trace_id=self.trace_id
        )

    async def write_files(self, files: Mapping[str, bytes], *, type: str) -> list[Artifact]:
        """Store ``{rel_path: data}`` together: one manifest update, one flush (cheaper than
        a write per file for the small outputs every job leaves)."""
        return await self.store.add_many(self.job_id, files, type=type, trace_id=self.trace_id)

    async def write_text(
        self, rel_path: str, text: str, *, type: str, encoding: str = "utf-8"
    ) -> Artifact:
        """Store ``text`` (encoded as ``encoding``) as ``rel_path`` of this job."""
        return await self.write_bytes(rel_path, text.encode(encoding), type=type)

    async def add_file(self, rel_path: str, src: Path, *, type: str) -> Artifact:
        """Copy the file ``src`` into this job's directory as ``rel_path``."""
        return await self.store.add_file(
            self.job_id, rel_path, src, type=type, trace_id=self.trace_id
        )

    async def add_stream(
        self,
        rel_path: str,
        chunks: Iterable[bytes] | AsyncIterable[bytes],
        *,
        type: str,
    ) -> Artifact:
        """Store chunks as they arrive (constant memory) as ``rel_path`` of this job."""
        return await self.store.add_stream(
            self.job_id, rel_path, chunks, type=type, trace_id=self.trace_id
        )

    async def manifest(self) -> Manifest:
        """This job's manifest as it is on disk now."""
        return await asyncio.to_thread(self.store.manifest, self.job_id)


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: the job, a logger bound to it, cancel state, artifacts, progress.

    The parsed payload is the handler's second argument; ``job.payload`` is the stored dict.
    """

    job: Job
    log: Logger
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    artifact_store: ArtifactStore | None = field(default=None, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    metrics: MetricsSink | None = field(default=None, repr=False)
    _unrepeatable: list[str] = field(default_factory=list, repr=False)
    _progress: _ProgressState = field(default_factory=_ProgressState, repr=False)
    _artifacts: list[JobArtifacts] = field(default_factory=list, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested; the handler's task is cancelled right after."""
        return self.cancel_event.is_set()

    @property
    def artifacts(self) -> JobArtifacts:
        """This job's artifact directory; OperationalError if the worker was given none."""
        if self.artifact_store is None:
            raise OperationalError(
                f"job {self.job.id}: this worker has no artifact store to write artifacts to"
            )
        if not self._artifacts:
            self._artifacts.append(
                JobArtifacts(self.artifact_store, self.job.id, self.job.trace_id)
            )
        return self._artifacts[0]

    @property
    def unrepeatable(self) -> str | None:
        """Why this attempt must not be run again (see :meth:`mark_unrepeatable`), or None."""
        return self._unrepeatable[-1] if self._unrepeatable else None

    def mark_unrepeatable(self, reason: str | None) -> None:
        """Say the handler has started something that must not happen twice (a GUI task
        posted to a client), and why; ``None`` takes it back (it turned out not to have
        happened). While marked, a failure of this attempt is final and a stopping worker
        fails the job instead of handing it back to the queue."""
        self._unrepeatable.clear()
        if reason is not None:
            self._unrepeatable.append(reason)

    def count(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to the worker's counter ``name`` (``aloha_runs_total``), if any."""
        if self.metrics is not None:
            self.metrics.inc(name, value)

    @property
    def last_progress(self) -> Progress | None:
        """The latest :meth:`progress` report of this run, if any."""
        return self._progress.latest

    def progress(self, fraction: float | None = None, message: str = "") -> None:
        """Report progress: ``fraction`` done in [0, 1] (None: unknown) and a short message.

        The latest report is kept (``last_progress``, ``Worker.progress``) and logged, at
        most one line per :data:`PROGRESS_LOG_INTERVAL_S` (the line says how many reports
        were folded into it). A fraction outside [0, 1] is a bug in the handler: ValueError.
        """
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, int | float):
                raise ValueError(f"progress fraction must be a number or None, got {fraction!r}")
            if not math.isfinite(fraction) or not 0 <= fraction <= 1:
                raise ValueError(f"progress fraction must be within [0, 1], got {fraction!r}")
            fraction = float(fraction)
        text = str(message)
        if len(text) > MAX_PROGRESS_MESSAGE:
            text = text[: MAX_PROGRESS_MESSAGE - 3] + "..."
        state = self._progress
        state.latest = Progress(fraction, text, time.time())
        now = self.clock()
        if state.logged_at is not None and now - state.logged_at < PROGRESS_LOG_INTERVAL_S:
            state.skipped += 1
            return
        extra: dict[str, object] = {"skipped": state.skipped} if state.skipped else {}
        if fraction is not None:
            extra["fraction"] = round(fraction, 4)
        self.log.info("progress", text or "progress", **extra)
        state.logged_at = now
        state.skipped = 0


@dataclass
class _Running:
    ctx: JobContext
    # Worker clock: when the lease runs out unless a heartbeat renews it first.
    deadline: float
    task: asyncio.Task[None] | None = None
    reason: _StopReason | None = None
    started: bool = False
    # The handler is done and the outcome is being recorded: never cancelled from here on.
    finishing: bool = False


class _QueueThread:
    """Runs queue calls in one thread of its own, batched per event-loop iteration.

    One thread, so calls keep their order (a heartbeat's answer never overtakes the claim made
    before it) and never compete for the queue's connection lock. Calls made in the same loop
    iteration (the completions of a batch of jobs that finished together, the next claim)
    go over in one hand-off and come back in one, which keeps the thread hops off the
    per-job cost: throughput stays within the benchmark's targets. The price: a call that
    waits for a database lock also holds up the answers of the calls handed over with it,
    which the shared connection would make wait anyway.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="homeops-jobs")
        self._batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._closed = False

    def call(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        if self._closed:
            future.set_exception(OperationalError("job queue calls stopped: the worker ended"))
            return future
        if not self._batch:
            loop.call_soon(self._flush, loop)
        self._batch.append((fn, future))
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            self._executor.submit(self._run, loop, batch)
        except RuntimeError as exc:  # shut down
            for _fn, future in batch:
                if not future.done():
                    future.set_exception(OperationalError(f"job queue calls stopped: {exc}"))

    @staticmethod
    def _run(
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
    ) -> None:
        outcomes: list[tuple[bool, Any]] = []
        for fn, _future in batch:
            try:
                outcomes.append((True, fn()))
            except BaseException as exc:  # handed to the awaiting task as is
                outcomes.append((False, exc))
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(_QueueThread._deliver, batch, outcomes)

    @staticmethod
    def _deliver(
        batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
        outcomes: list[tuple[bool, Any]],
    ) -> None:
        for (_fn, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():  # the waiting task was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def close(self) -> None:
        """Accept no more calls; calls already handed over finish in the thread."""
        self._closed = True
        self._executor.shutdown(wait=False)


def default_worker_id() -> str:
    """``host-pid-random``, cleaned to the job-id alphabet."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", raw).replace("..", ".").lstrip("._-")
    return validate_job_id(cleaned[-128:] or f"worker-{os.getpid()}")


class Worker:
    """Claims and runs jobs of the given job types; see the module docstring.

    Each job's stored payload is parsed with its type's model before the handler sees it;
    one that no longer parses (stored before the model changed) fails at once, not retried.
    A failed attempt is retried (attempts left) if the type's retry rule says so.
    ``artifacts`` is the store behind each handler's ``ctx.artifacts``.
    """

    def __init__(
        self,
        queue: LeaseQueue,
        job_types: Iterable[JobType[Any]],
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
        artifacts: ArtifactStore | None = None,
        only_ids: Sequence[str] | None = None,
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
        self.job_types: dict[str, JobType[Any]] = {}
        for job_type in job_types:
            if job_type.name in self.job_types:
                raise ValueError(f"job type {job_type.name!r} given twice")
            self.job_types[job_type.name] = job_type
        self.artifacts = artifacts
        # Claim only the types this worker can run, so each domain's worker can share one
        # store. ``any_type`` takes everything and fails what has no handler (not retried).
        self._types: list[str] | None = None if any_type else sorted(self.job_types)
        # A command running its own jobs here (core.jobs.here) claims those and no other.
        self._only: list[str] | None = None if only_ids is None else sorted(set(only_ids))
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
        self._calls = _QueueThread()
        # A claim whose answer run()'s cancellation left behind (its jobs go back at once).
        self._claim_in_flight: asyncio.Future[list[Job]] | None = None
        # Set when a queue call found the store damaged: run() stops and raises it.
        self._fatal: StoreCorrupt | None = None

    @property
    def running_ids(self) -> list[str]:
        """Ids of the jobs running in this worker right now."""
        return list(self._running)

    def progress(self, job_id: str) -> Progress | None:
        """The latest progress report of a job running in this worker (None: none, or gone)."""
        entry = self._running.get(job_id)
        return entry.ctx.last_progress if entry is not None else None

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
        self._check_busy_timeout()
        shut_down = False
        try:
            await self._claim_loop(drain)
            await self._shutdown()
            shut_down = True
            if self._fatal is not None:  # found while the last runs were being recorded
                raise self._fatal
        finally:
            try:
                if not shut_down:
                    # run() itself was cancelled (or failed): hand back whatever is still ours,
                    # while the heartbeat keeps the leases and the call thread still takes calls.
                    await self._hand_back_all()
            finally:
                for task in (watcher, beat):
                    if task is not None:
                        task.cancel()
                try:
                    await asyncio.gather(*(t for t in (watcher, beat) if t), return_exceptions=True)
                    await self._close_job_types()
                finally:
                    # Calls already handed to the thread finish there; nothing new is accepted.
                    self._calls.close()
                    self._set_running_gauge()
                    self._log.info("stop", "worker stopped")

    async def _close_job_types(self) -> None:
        """Await each distinct ``JobType.close`` once; a failing or slow one is logged only."""
        closers = list(dict.fromkeys(t.close for t in self.job_types.values() if t.close))
        for close in closers:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await close()
            except Exception as exc:  # a leak at exit is not worth failing the stop for
                self._log.warn("stop", "releasing a job type's resources failed", err=exc)

    def _check_busy_timeout(self) -> None:
        # A queue call can wait for the database's write lock up to its busy timeout; with a
        # lease no longer than that, one slow heartbeat can cost this worker its running jobs
        # (they are fenced and run again elsewhere: safe, but wasted work).
        busy = getattr(self.queue, "busy_timeout_s", None)
        if isinstance(busy, int | float) and self.lease_s <= busy:
            self._log.warn(
                "start",
                "lease is not longer than the queue's busy timeout; a locked database can "
                "cost this worker its running jobs",
                lease_s=self.lease_s,
                busy_timeout_s=busy,
            )

    async def _call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run one queue call in the worker's queue thread, off the event loop."""
        try:
            return await self._calls.call(functools.partial(fn, *args, **kwargs))
        except StoreCorrupt as exc:
            self._corrupt(exc)
            raise

    def _corrupt(self, exc: StoreCorrupt) -> None:
        """A damaged store: every later call would fail the same way, so stop the worker."""
        if self._fatal is None:
            self._fatal = exc
            self._log.error("store", "job store is corrupt; stopping the worker", err=exc)
        self._wake.set()

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.request_stop()

    async def _claim_loop(self, drain: bool) -> None:
        while not self._stop.is_set():
            if self._fatal is not None:
                # Out through run()'s hand-back path: running jobs are stopped at once, as
                # their outcomes cannot be recorded anyway.
                raise self._fatal
            self._wake.clear()
            free = self.slots - len(self._running)
            claimed = 0
            if free > 0:
                asked = self._clock()
                claim = self._calls.call(
                    functools.partial(
                        self.queue.claim,
                        self.worker_id,
                        free,
                        self.lease_s,
                        types=self._types,
                        ids=self._only,
                    )
                )
                try:
                    # Shielded: if run() is cancelled meanwhile, the claim still happens in the
                    # thread, and its jobs are handed back (see _hand_back_all).
                    jobs = await asyncio.shield(claim)
                except asyncio.CancelledError:
                    self._claim_in_flight = claim
                    raise
                except StoreCorrupt as exc:
                    self._corrupt(exc)
                    raise
                except HomeopsError as exc:
                    self._log.error("claim", "claim failed; will retry", err=exc)
                    jobs = []
                    await asyncio.sleep(min(1.0, self.poll_interval * 10))
                give_back = [job for job in jobs if not self._start(job, asked + self.lease_s)]
                if give_back:
                    await self._give_back(give_back)
                claimed = len(jobs)
            if drain and not claimed and not self._running and await self._queue_idle():
                await self._log_drained()
                return
            if not self._wake.is_set() and len(self._running) >= self.slots:
                # Every slot busy: nothing can be claimed until a job ends, a stop is asked
                # for or the store fails, and each of those sets _wake. Polling here woke the
                # loop 100 times a second for the whole of a long job (a CPU-bound restic
                # backup beside it lost the time).
                await self._wake.wait()
            elif not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
            # Let other jobs that finish in the same tick free their slots: one bigger claim.
            await asyncio.sleep(0)

    async def _give_back(self, jobs: list[Job]) -> None:
        for job in jobs:
            try:
                await self._call(self.queue.requeue, job.id, self.worker_id)
            except HomeopsError as exc:
                # Its lease runs out and it is claimed again; nothing is lost.
                self._log.warn("claim", "could not hand job back", job_id=job.id, err=exc)
        # Until the local run has unwound, the job would come straight back to us.
        await asyncio.sleep(min(1.0, self.poll_interval * 10))

    async def _log_drained(self) -> None:
        # "No jobs left" read as "the queue is empty" when only this worker's types were: say
        # what is still waiting for a worker of other types.
        try:
            every = await self._call(self.queue.counts)
        except HomeopsError:
            every = None
        others = 0 if every is None else every[JobState.QUEUED]
        if others:
            self._log.info(
                "drain",
                "no jobs of this worker's types left; stopping "
                f"({others} queued job(s) of other types wait for a worker that runs them)",
                types=",".join(sorted(self._types)) if self._types is not None else "",
            )
        else:
            self._log.info("drain", "no jobs left; stopping")

    async def _queue_idle(self) -> bool:
        if self._only is not None:
            return await self._only_finished()
        try:
            counts = await self._call(self.queue.counts, types=self._types)
        except StoreCorrupt:
            raise
        except HomeopsError as exc:
            self._log.warn("drain", "cannot read job counts; not idle", err=exc)
            return False
        return counts[JobState.QUEUED] == 0 and counts[JobState.RUNNING] == 0

    async def _only_finished(self) -> bool:
        """Drained when every job of ``only_ids`` has ended (or is gone from the store)."""
        assert self._only is not None
        for job_id in self._only:
            try:
                job = await self._call(self.queue.get, job_id)
            except StoreCorrupt:
                raise
            except UsageError:
                continue  # pruned meanwhile: nothing left to run
            except HomeopsError as exc:
                self._log.warn("drain", "cannot read a job; not idle", err=exc)
                return False
            if not job.state.terminal:
                return False
        return True

    def _start(self, job: Job, deadline: float) -> bool:
        """Start a claimed job; False if it must be handed back (see the module docstring)."""
        current = self._running.get(job.id)
        if current is not None:
            # The claim re-took a job this worker is still running: never run it twice.
            if current.reason == "lost":
                current.ctx.log.warn(
                    "claim",
                    "claimed a job whose lost local run is still stopping; handing it back",
                    attempt=job.attempts,
                )
                return False
            current.deadline = max(current.deadline, deadline)
            current.ctx.log.warn(
                "claim",
                "lease lapsed and was re-taken by this worker; the local run continues",
                attempt=job.attempts,
            )
            return True
        log = _log.bind(job_id=job.id, trace_id=job.trace_id, job_type=job.type)
        ctx = JobContext(
            job=job,
            log=log,
            artifact_store=self.artifacts,
            clock=self._clock,
            metrics=self._metrics,
        )
        entry = _Running(ctx, deadline=deadline)
        self._running[job.id] = entry
        entry.task = asyncio.create_task(self._execute(entry), name=f"job:{job.id}")
        entry.task.add_done_callback(lambda _t: self._finished(entry))
        self._set_running_gauge()
        return True

    def _finished(self, entry: _Running) -> None:
        if self._running.get(entry.ctx.job.id) is entry:
            del self._running[entry.ctx.job.id]
        self._set_running_gauge()
        self._wake.set()

    def _stop_run(self, entry: _Running, reason: _StopReason) -> bool:
        """Ask a run to stop; False if it is already stopping or recording its outcome."""
        if entry.reason is not None or entry.finishing:
            return False
        entry.reason = reason
        if reason == "cancel":
            entry.ctx.cancel_event.set()
        # A task that has not taken its first step sees ``reason`` when it does.
        if entry.started and entry.task is not None:
            entry.task.cancel()
        return True

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
            if entry.reason is not None:  # stopped before it began
                entry.finishing = True
                await self._stopped(entry, 0.0)
                return
            job_type = self.job_types.get(job.type)
            if job_type is None:
                entry.finishing = True
                await self._fail(ctx, f"no handler for job type {job.type!r}", False, elapsed())
                return
            try:
                payload = parse_payload(job_type, job.payload)
            except PayloadError as exc:
                # Stored before its model changed (or written past enqueue's check): no
                # attempt of this job can parse it, so it fails for good, saying which field.
                entry.finishing = True
                await self._fail(ctx, f"stored {exc}", False, elapsed())
                return
            await self._run_handler(entry, job_type, payload, elapsed)
        except HomeopsError as exc:
            # The queue itself failed (database gone?). The lease runs out and the job is
            # picked up again; nothing more we can do here.
            log.error("run", "could not record job outcome", err=exc)  # noqa: TRY400

    async def _run_handler(
        self,
        entry: _Running,
        job_type: JobType[Any],
        payload: Any,  # noqa: ANN401 (the type's own model instance)
        elapsed: Callable[[], float],
    ) -> None:
        ctx = entry.ctx
        job, log = ctx.job, ctx.log
        log.info("run", "job started", attempt=job.attempts, of=job.max_attempts)
        timeout_cm = asyncio.timeout(job.timeout_s) if job.timeout_s is not None else None
        error: str | None = None
        retryable = True
        result: Any = None
        stopped = False
        try:
            if timeout_cm is not None:
                async with timeout_cm:
                    result = await job_type.handler(ctx, payload)
            else:
                result = await job_type.handler(ctx, payload)
        except asyncio.CancelledError:
            if entry.reason is None:
                raise
            stopped = True
        except TimeoutError as exc:
            if timeout_cm is not None and timeout_cm.expired():
                error = f"timed out after {job.timeout_s:g}s"
            else:
                error = _describe(exc)
            retryable = should_retry(job_type, exc)
        except Exception as exc:  # any handler failure is a job failure
            error, retryable = _describe(exc), should_retry(job_type, exc)
        # From here on the run is only recording its outcome: no stop request cancels that.
        entry.finishing = True
        task = asyncio.current_task()
        while task is not None and task.cancelling():
            task.uncancel()  # our own stop request was delivered (and handled) above
        ms = elapsed()
        if entry.reason == "lost":
            # The job's new owner (or the next claim) records its state, not us.
            log.warn(
                "run",
                "local run ended after the lease was lost; outcome not recorded",
                attempt=job.attempts,
                duration_ms=ms,
            )
        elif stopped:
            await self._stopped(entry, ms)
        elif error is not None:
            await self._fail(ctx, error, retryable, ms)
        else:
            if entry.reason == "cancel":
                # The handler swallowed the cancellation and finished its work: the result is
                # real, so the job succeeds, but say so loudly.
                log.warn(
                    "run",
                    "cancel requested but handler completed; recording success",
                    attempt=job.attempts,
                )
            await self._complete(ctx, result, ms)

    async def _complete(self, ctx: JobContext, result: Any, ms: float) -> None:  # noqa: ANN401
        job = ctx.job
        try:
            owned = await self._call(self.queue.complete, job.id, self.worker_id, result)
        except UsageError as exc:
            await self._fail(ctx, str(exc), False, ms)
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

    async def _fail(self, ctx: JobContext, error: str, retryable: bool, ms: float) -> None:
        job = ctx.job
        if ctx.unrepeatable is not None:
            retryable = False
        owned = await self._call(
            self.queue.fail, job.id, self.worker_id, error, retryable=retryable
        )
        if not owned:
            ctx.log.warn(
                "run",
                "lease lost before failure was recorded",
                err=error,
                attempt=job.attempts,
                duration_ms=ms,
            )
            return
        will_retry = retryable and job.attempts < job.max_attempts and not ctx.cancelled
        if not will_retry:
            # The seed's "jobs failed": a job that ends failed, not each failed attempt.
            self._inc("jobs_failed_total")
        ctx.log.log(
            "warn" if will_retry else "error",
            "run",
            "job failed; will retry" if will_retry else "job failed",
            err=error,
            duration_ms=ms,
            attempt=job.attempts,
            of=job.max_attempts,
        )

    async def _stopped(self, entry: _Running, ms: float) -> None:
        ctx = entry.ctx
        job = ctx.job
        if entry.reason == "lost":
            return  # not ours any more: the new owner records the job's state
        if entry.reason == "cancel":
            if await self._call(self.queue.mark_cancelled, job.id, self.worker_id):
                self._inc("jobs_cancelled_total")
                ctx.log.info("run", "job cancelled", attempt=job.attempts, duration_ms=ms)
        elif ctx.unrepeatable is not None:
            # Handing it back would run it again: what it started may still be going on.
            error = f"worker stopped mid-run; not run again ({ctx.unrepeatable})"
            await self._fail(ctx, error, False, ms)
        elif await self._call(self.queue.requeue, job.id, self.worker_id):
            ctx.log.info(
                "run",
                "worker stopping; job handed back to the queue",
                attempt=job.attempts,
                duration_ms=ms,
            )

    async def _heartbeat_loop(self) -> None:
        beat: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                self._fence()
                if beat is not None and not beat.done():
                    continue  # the last heartbeat is still waiting for the database
                sent = {i: e for i, e in self._running.items() if e.reason != "lost"}
                if sent:
                    beat = asyncio.create_task(self._beat(sent))
        finally:
            if beat is not None:
                beat.cancel()

    def _fence(self) -> None:
        """Stop runs whose lease may run out before the next heartbeat tick could renew it."""
        now = self._clock()
        for entry in list(self._running.values()):
            if now >= entry.deadline - self.heartbeat_interval and self._stop_run(entry, "lost"):
                entry.ctx.log.warn(
                    "heartbeat",
                    "lease lost; stopping local run",
                    why="no heartbeat got through in time",
                    attempt=entry.ctx.job.attempts,
                )

    async def _beat(self, sent: dict[str, _Running]) -> None:
        asked = self._clock()
        try:
            held = await self._call(self.queue.heartbeat, self.worker_id, list(sent), self.lease_s)
        except HomeopsError as exc:
            self._log.warn("heartbeat", "heartbeat failed; will retry", err=exc)
            return
        for job_id, entry in sent.items():
            if self._running.get(job_id) is not entry:
                continue  # finished meanwhile
            if job_id in held.held:
                entry.deadline = max(entry.deadline, asked + self.lease_s)
                if job_id in held.cancel_requested:
                    self._stop_run(entry, "cancel")
            elif self._stop_run(entry, "lost"):
                entry.ctx.log.warn(
                    "heartbeat",
                    "lease lost; stopping local run",
                    why="another worker holds the job now",
                    attempt=entry.ctx.job.attempts,
                )

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
            self._stop_run(entry, "shutdown")
        if left:
            unwind = self._unwind_s(left)
            self._log.info(
                "stop",
                "grace period over; handing running jobs back",
                running=len(left),
                unwind_s=unwind,
            )
            await asyncio.wait({everything}, timeout=unwind)
        if not everything.done():
            everything.cancel()
            self._log.warn(
                "stop",
                "some handlers ignored cancellation; their leases will expire",
                running=len(self._running),
            )

    def _unwind_s(self, entries: list[_Running]) -> float:
        """How long cancelled ``entries`` may take to unwind: the longest their job types
        ask for (``JobType.unwind_s``), never less than ``_UNWIND_S``."""
        asked = [_UNWIND_S]
        for entry in entries:
            job_type = self.job_types.get(entry.ctx.job.type)
            if job_type is not None and job_type.unwind_s is not None:
                asked.append(job_type.unwind_s)
        return max(asked)

    async def _hand_back_all(self) -> None:
        """Stop every local run and wait, bounded by :meth:`_unwind_s`, for it to be recorded.

        For when run() itself is cancelled (or fails) instead of shutting down: each stopped
        run hands its job back with ``requeue`` (a run stopping for a cancel request records
        that instead), and those calls must reach the queue before its call thread closes,
        or the jobs stay ``running``, attempt used, until their leases expire. A further
        cancellation of run() does not cut the wait short (it is bounded anyway); it is
        raised once the wait is over.
        """
        waits: list[asyncio.Future[Any]] = []
        claim, self._claim_in_flight = self._claim_in_flight, None
        if claim is not None:
            waits.append(asyncio.ensure_future(self._hand_back_claimed(claim)))
        left = [e for e in self._running.values() if e.task is not None and not e.task.done()]
        for entry in left:
            self._stop_run(entry, "shutdown")  # no-op for a run already stopping or recording
        waits.extend(e.task for e in left if e.task is not None)
        if not waits:
            return
        self._log.info("stop", "worker interrupted; handing running jobs back", running=len(left))
        everything = asyncio.gather(*waits, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._unwind_s(left)
        cancelled_again = False
        while not everything.done() and (remaining := deadline - loop.time()) > 0:
            try:
                # asyncio.wait never cancels what it waits for: the runs go on unwinding.
                await asyncio.wait({everything}, timeout=remaining)
            except asyncio.CancelledError:
                cancelled_again = True
        if not everything.done():
            self._log.warn(
                "stop",
                "some handlers ignored cancellation; their leases will expire",
                running=len(self._running),
            )
        if cancelled_again:
            raise asyncio.CancelledError

    async def _hand_back_claimed(self, claim: asyncio.Future[list[Job]]) -> None:
        """Requeue the jobs of a claim that run()'s cancellation left unanswered."""
        try:
            jobs = await asyncio.shield(claim)
        except HomeopsError:
            return  # the claim failed: it took nothing
        for job in jobs:
            try:
                await self._call(self.queue.requeue, job.id, self.worker_id)
            except HomeopsError as exc:
                # Its lease runs out and it is claimed again; nothing is lost.
                self._log.warn("stop", "could not hand job back", job_id=job.id, err=exc)


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
