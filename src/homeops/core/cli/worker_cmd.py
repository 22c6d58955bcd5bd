"""``homeops jobs worker``: run the registered job types against the configured store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import typer

from homeops.core.cli.common import domain_context, duration_flag, load_core

if TYPE_CHECKING:
    from pathlib import Path

    from homeops.core.registry import Registry


def run_worker(
    ctx: typer.Context,
    registry: Registry,
    *,
    slots: int | None,
    drain: bool,
    metrics: bool,
    metrics_interval: str | None,
    only: list[str] | None,
) -> int:
    """Work until SIGTERM/SIGINT (or, with ``drain``, until no job of ours is left)."""
    from homeops.core.artifacts import ArtifactStore
    from homeops.core.asyncutil import sleep_or_stop
    from homeops.core.cli.signals import install, log_signal
    from homeops.core.errors import UsageError
    from homeops.core.jobs.queue import LeaseQueue, StoreBusy
    from homeops.core.jobs.store import open_worker_queue
    from homeops.core.jobs.worker import Worker
    from homeops.core.logging import get_logger
    from homeops.core.metrics import MetricsEmitter, MetricsRegistry

    settings = load_core(ctx).settings
    jobs = settings.jobs
    registry.check_domains(only or ())
    job_types = registry.collect_job_types(domain_context(ctx), only or ())
    if not job_types:
        raise UsageError("no job types registered for the selected domains")
    interval = (
        settings.metrics.interval
        if metrics_interval is None
        else duration_flag("--metrics-interval", metrics_interval)
    )
    emit = metrics or settings.metrics.enabled
    metrics_path = settings.metrics.path
    if emit and metrics_path is not None:
        # Found now rather than as one error per block for the worker's whole life.
        _check_metrics_path(metrics_path)
    counters = MetricsRegistry.with_seed_metrics()
    _log = get_logger("core.jobs")

    async def open_queue(stopping: asyncio.Event) -> LeaseQueue | None:
        # Another process holding the write lock for longer than SQLite's busy timeout is
        # not a reason to give up: keep trying until it lets go or we are told to stop.
        while not stopping.is_set():
            try:
                return await asyncio.to_thread(open_worker_queue, settings, metrics=counters)
            except StoreBusy as exc:
                _log.warn("start", "job store is locked; retrying", err=exc)
                await sleep_or_stop(asyncio.sleep, 1.0, stopping)
        return None

    async def main() -> None:
        stopping = asyncio.Event()
        workers: list[Worker] = []

        def on_signal(signum: int) -> None:
            if stopping.is_set() and not workers:
                return
            log_signal(signum, "stopping" if not stopping.is_set() else "stopping now")
            stopping.set()
            for worker in workers:
                worker.request_stop()  # a second request skips the grace period

        remove = install(on_signal)
        queue = None
        stop_metrics = asyncio.Event()
        emitter_task = None
        try:
            started = time.time()
            queue = await open_queue(stopping)
            if queue is None:
                return
            worker = Worker(
                queue,
                job_types.values(),
                slots=slots or jobs.slots,
                lease_s=jobs.lease,
                poll_interval=jobs.poll_interval,
                grace_s=jobs.grace,
                metrics=counters,
                artifacts=ArtifactStore(settings.artifacts_root),
            )
            workers.append(worker)
            if emit:
                types = sorted(job_types)
                # Jobs are enqueued by other processes (`jobs enqueue`): the store, not this
                # process, knows how many arrived. The worker's count is the backlog of its
                # types it found at start plus every one enqueued since, so that it covers
                # the jobs its completed/failed/cancelled counters count.
                backlog = await asyncio.to_thread(
                    queue.created_since, started, types=types, queued_before=True
                )

                async def refresh() -> None:
                    n = await asyncio.to_thread(queue.created_since, started, types=types)
                    counters.raise_to("jobs_enqueued_total", backlog + n)

                emitter = MetricsEmitter(
                    counters, interval_s=interval, path=metrics_path, refresh=refresh
                )
                emitter_task = asyncio.create_task(emitter.run(stop_metrics))
            if stopping.is_set():
                worker.request_stop()
            await worker.run(drain=drain)
        finally:
            stop_metrics.set()
            if emitter_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await emitter_task
            if queue is not None:
                queue.close()
            remove()

    _run_without_joining_handlers(main)
    return 0


def _check_metrics_path(path: Path) -> None:
    """metrics.path must be a file (or device) the worker can append to, or a new file in an
    existing directory: a directory, FIFO or unwritable place would lose every block."""
    from homeops.core.errors import UsageError

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise UsageError(f"metrics.path: {path.parent} is not a directory") from None
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"metrics.path: {path.parent} is not writable") from None
        return
    except OSError as exc:
        raise UsageError(f"metrics.path: {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(mode):
        # The emitter never follows one (a root worker must not write where a link points).
        raise UsageError(f"metrics.path: {path} is a symlink")
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise UsageError(f"metrics.path: {path} is not a regular file")
    if not os.access(path, os.W_OK):
        raise UsageError(f"metrics.path: {path} is not writable")


def _run_without_joining_handlers(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())``, except that the loop's thread pool is not waited for.

    ``asyncio.run`` joins the default executor's threads on the way out, so a handler thread
    that outlived its job's hand-back kept the "stopped" worker alive.
    """
    from concurrent.futures import ThreadPoolExecutor

    from homeops.core.errors import HomeopsError

    executor = ThreadPoolExecutor(thread_name_prefix="homeops-worker")

    async def with_executor() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        await main()

    def release() -> None:
        executor.shutdown(wait=False, cancel_futures=True)
        # Idle pool threads see the shutdown and end at once; only busy ones remain.
        for thread in list(getattr(executor, "_threads", ())):
            thread.join(timeout=0.2)

    with asyncio.Runner() as runner:
        try:
            runner.run(with_executor())
        except HomeopsError as exc:
            release()
            _exit_if_handler_threads_linger(int(exc.exit_code), f"error: {exc}")
            raise
        except BaseException:
            release()
            _exit_if_handler_threads_linger(1, "error: worker stopped by an unexpected error")
            raise
        release()
        _exit_if_handler_threads_linger(0, None)


def _exit_if_handler_threads_linger(code: int, message: str | None) -> None:
    """End the process now if a handler's thread outlived its job's hand-back.

    Python cannot stop a thread: a handler blocked in ``asyncio.to_thread`` (or ignoring
    cancellation) keeps running after its job was handed back and may already be running
    elsewhere, and the interpreter would join that thread at exit, so a "stopped" worker stayed
    alive doing the work. Ending the process is the only way to stop that work; everything the
    worker owed the store was written before this point.
    """
    import sys
    import threading

    from homeops.core.logging import get_logger

    lingering = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if not lingering:
        return
    get_logger("core.jobs").warn(
        "stop",
        "handler threads still running after the worker stopped; exiting without them",
        threads=len(lingering),
    )
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    if message is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(message.replace("\n", " ") + "\n")
            sys.stderr.flush()
    os._exit(code)
