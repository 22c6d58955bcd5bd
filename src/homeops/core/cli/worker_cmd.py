"""``homeops jobs worker``: run the registered job handlers against the configured store."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING

import typer

from homeops.core.cli.common import load_core, options

if TYPE_CHECKING:
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
    from homeops.core.durations import parse_duration
    from homeops.core.errors import UsageError
    from homeops.core.jobs.sqlite import SqliteJobQueue
    from homeops.core.jobs.worker import Worker, install_signal_handlers
    from homeops.core.metrics import MetricsEmitter, MetricsRegistry
    from homeops.core.registry import DomainContext

    settings = load_core(ctx).settings
    jobs = settings.jobs
    unknown = sorted(set(only or ()) - set(registry.domains()))
    if unknown:
        raise UsageError(f"unknown domain {unknown[0]!r} for --only")
    dctx = DomainContext(os.environ, options(ctx).config, settings)
    handlers = registry.collect_handlers(dctx, only or ())
    if not handlers:
        raise UsageError("no job handlers registered for the selected domains")
    interval = settings.metrics.interval
    if metrics_interval is not None:
        try:
            interval = parse_duration(metrics_interval)
        except ValueError as exc:
            raise UsageError(f"--metrics-interval: {exc}") from None
        if interval <= 0:
            raise UsageError("--metrics-interval: must be greater than 0")
    emit = metrics or settings.metrics.enabled
    counters = MetricsRegistry.with_seed_metrics()

    async def main() -> None:
        queue = SqliteJobQueue(settings.jobs_db, metrics=counters)
        worker = Worker(
            queue,
            handlers,
            slots=slots or jobs.slots,
            lease_s=jobs.lease,
            poll_interval=jobs.poll_interval,
            grace_s=jobs.grace,
            metrics=counters,
        )
        remove = install_signal_handlers(worker)
        stop_metrics = asyncio.Event()
        emitter_task = None
        if emit:
            emitter = MetricsEmitter(counters, interval_s=interval, path=settings.metrics.path)
            emitter_task = asyncio.create_task(emitter.run(stop_metrics))
        try:
            await worker.run(drain=drain)
        finally:
            remove()
            stop_metrics.set()
            if emitter_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await emitter_task
            queue.close()

    asyncio.run(main())
    return 0
