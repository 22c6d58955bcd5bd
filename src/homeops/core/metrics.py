"""In-memory metrics: counters and gauges, logfmt blocks, Prometheus text.

Seed 001: the worker keeps metrics in memory only (reset on restart) and, with
``--metrics``, writes ``metric=<name> value=<n> ts=<RFC3339>`` lines every interval to
stdout or to ``WIN_AUTOMATION_METRICS_PATH``. No external telemetry dependency; the
Prometheus text rendering exists so a scrape endpoint can be added without a client library.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from homeops.core.errors import HomeopsError, OperationalError, UsageError
from homeops.core.logging import format_ts, get_logger

if TYPE_CHECKING:
    # asyncio costs ~15 ms of start-up; only the emitter's loop needs it (jobs list does not).
    import asyncio

    from homeops.core.asyncutil import Sleep

_log = get_logger("core.metrics")

_NAME_RE: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Integers above 2**53 are not exact in a float; print those in float notation instead.
_EXACT_INT_LIMIT: Final = 2.0**53
FILE_MODE: Final = 0o640


class MetricKind(StrEnum):
    """Prometheus metric types homeops uses."""

    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class MetricSpec:
    """A described metric: its name, kind and HELP text."""

    name: str
    kind: MetricKind
    help: str


SEED_METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("jobs_enqueued_total", MetricKind.COUNTER, "Total jobs enqueued"),
    MetricSpec("jobs_completed_total", MetricKind.COUNTER, "Total jobs completed successfully"),
    MetricSpec("jobs_failed_total", MetricKind.COUNTER, "Total jobs failed"),
    MetricSpec("jobs_cancelled_total", MetricKind.COUNTER, "Total jobs cancelled"),
    MetricSpec("playwright_sessions_total", MetricKind.COUNTER, "Total Playwright sessions"),
    MetricSpec("aloha_runs_total", MetricKind.COUNTER, "Total Aloha runs"),
)
WORKER_METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("jobs_running", MetricKind.GAUGE, "Jobs this worker is running now"),
)


@runtime_checkable
class MetricsSink(Protocol):
    """What the job worker needs from a metrics registry."""

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to counter ``name``."""

    def set(self, name: str, value: float) -> None:
        """Set gauge ``name`` to ``value``."""


def validate_metric_name(name: str) -> str:
    """Return ``name`` if it is a valid Prometheus metric name, else :class:`UsageError`."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise UsageError(f"invalid metric name {name!r}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")
    return name


class MetricsRegistry:
    """Thread-safe counters and gauges keyed by name; satisfies :class:`MetricsSink`.

    Metrics spring into existence on first use; ``describe`` (or ``specs``) registers HELP
    and TYPE up front and makes the metric show up with value 0 before anything happened,
    which is what a reader of the first metrics block expects.
    """

    def __init__(self, specs: Iterable[MetricSpec] = ()) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._kinds: dict[str, MetricKind] = {}
        self._help: dict[str, str] = {}
        for spec in specs:
            self.describe(spec.name, spec.kind, spec.help)

    @classmethod
    def with_seed_metrics(cls) -> MetricsRegistry:
        """A registry holding the seed's six counters and the worker's gauge, at 0."""
        return cls((*SEED_METRICS, *WORKER_METRICS))

    def describe(self, name: str, kind: MetricKind | str, help: str) -> None:
        """Register HELP and TYPE for ``name``; the value starts at 0 if unset."""
        validate_metric_name(name)
        try:
            chosen = MetricKind(kind)
        except ValueError:
            raise UsageError(f"metric {name}: unknown kind {kind!r} (counter, gauge)") from None
        with self._lock:
            previous = self._kinds.get(name)
            if previous is not None and previous != chosen and name in self._help:
                raise UsageError(f"metric {name}: already described as {previous}")
            self._kinds[name] = chosen
            self._help[name] = help
            self._values.setdefault(name, 0.0)

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to ``name`` (a counter unless described as a gauge)."""
        validate_metric_name(name)
        with self._lock:
            kind = self._kinds.setdefault(name, MetricKind.COUNTER)
            # A counter that goes down breaks every rate() computed from it.
            if kind is MetricKind.COUNTER and value < 0:
                raise UsageError(f"counter {name}: cannot decrease (inc by {value})")
            self._values[name] = self._values.get(name, 0.0) + value

    def set(self, name: str, value: float) -> None:
        """Set gauge ``name`` to ``value``."""
        validate_metric_name(name)
        with self._lock:
            kind = self._kinds.setdefault(name, MetricKind.GAUGE)
            if kind is MetricKind.COUNTER:
                raise UsageError(f"metric {name} is a counter: use inc, not set")
            self._values[name] = float(value)

    def raise_to(self, name: str, value: float) -> None:
        """Counter ``name`` becomes ``value`` if that is more: for a count read from
        elsewhere (the job store), which must still never go down."""
        validate_metric_name(name)
        with self._lock:
            kind = self._kinds.setdefault(name, MetricKind.COUNTER)
            if kind is not MetricKind.COUNTER:
                raise UsageError(f"metric {name} is a gauge: use set, not raise_to")
            self._values[name] = max(self._values.get(name, 0.0), float(value))

    def snapshot(self) -> dict[str, float]:
        """A copy of every current value, sorted by name."""
        with self._lock:
            return dict(sorted(self._values.items()))

    def specs(self) -> list[MetricSpec]:
        """Kind and HELP of every known metric, sorted by name (HELP empty if undescribed)."""
        with self._lock:
            return [
                MetricSpec(name, self._kinds[name], self._help.get(name, ""))
                for name in sorted(self._values)
            ]


def format_value(value: float) -> str:
    """A metric value as text: integers without ``.0``; ``NaN``/``+Inf``/``-Inf`` spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
        return str(int(value))
    return repr(float(value))


def format_logfmt(snapshot: Mapping[str, float], now: float) -> list[str]:
    """The seed's ``metric=<name> value=<n> ts=<RFC3339>`` lines, sorted by name."""
    ts = format_ts(now)
    return [
        f"metric={name} value={format_value(snapshot[name])} ts={ts}" for name in sorted(snapshot)
    ]


def _escape_help(text: str) -> str:
    # Exposition format 0.0.4: in HELP only backslash and line feed are escaped.
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def prometheus_text(registry: MetricsRegistry) -> str:
    """The registry in Prometheus text exposition format 0.0.4 (ends with a newline).

    Every metric gets HELP and TYPE, described or not: ``promtool check metrics`` flags a
    metric without HELP, and one that sprang into existence by ``inc``/``set`` has none.
    """
    values = registry.snapshot()
    lines: list[str] = []
    for spec in registry.specs():
        if spec.name not in values:
            continue
        text = spec.help or f"{spec.name} (no description registered)"
        lines.append(f"# HELP {spec.name} {_escape_help(text)}")
        lines.append(f"# TYPE {spec.name} {spec.kind}")
        lines.append(f"{spec.name} {format_value(values[spec.name])}")
    return "".join(line + "\n" for line in lines)


class MetricsEmitter:
    """Writes one block of logfmt metric lines per interval, and a last one on stop.

    ``path=None`` writes to stdout (the payload stream; logs stay on stderr). A file is
    opened in append mode for each block, so a log rotator moving it away is harmless.
    """

    def __init__(
        self,
        registry: MetricsRegistry,
        *,
        interval_s: float,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise UsageError(f"metrics interval must be positive, got {interval_s:g}s")
        self.registry = registry
        self.interval_s = interval_s
        self.path = path
        self._clock = clock
        # Called before each block: values counted elsewhere (the store) are read then.
        self._refresh = refresh
        if sleep is None:
            import asyncio

            sleep = asyncio.sleep
        self._sleep = sleep

    def emit_once(self) -> list[str]:
        """Write the current snapshot as one block; returns the lines written."""
        lines = format_logfmt(self.registry.snapshot(), self._clock())
        block = "".join(line + "\n" for line in lines)
        if self.path is None:
            sys.stdout.write(block)
            sys.stdout.flush()
        else:
            self._append(block)
        return lines

    def _append(self, block: str) -> None:
        assert self.path is not None
        existed = self.path.exists()
        try:
            # O_NONBLOCK: opening a FIFO for writing waits for a reader, and this runs on the
            # worker's event loop: a FIFO as metrics.path kept the worker alive after SIGTERM.
            # O_NOFOLLOW: a worker often runs as root; a symlink planted at metrics.path must
            # not make it append to /etc/passwd or create a file where the link points.
            flags = (
                os.O_WRONLY
                | os.O_APPEND
                | os.O_CREAT
                | os.O_NONBLOCK
                | os.O_CLOEXEC
                | os.O_NOFOLLOW
            )
            fd = os.open(self.path, flags, FILE_MODE)
            try:
                mode = os.fstat(fd).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
                    raise OperationalError(
                        f"{self.path}: cannot write metrics: not a regular file or device"
                    )
                # Back to blocking writes: a terminal may otherwise refuse a block half-way.
                os.set_blocking(fd, True)
                if not existed:
                    # The umask may have widened or narrowed the mode; metrics files are 0640.
                    os.fchmod(fd, FILE_MODE)
                os.write(fd, block.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            reasons = {
                errno.ENXIO: "a FIFO with no reader",
                errno.ELOOP: "it is a symlink; refusing to follow it",
            }
            reason = reasons.get(exc.errno or 0, exc.strerror)
            raise OperationalError(f"{self.path}: cannot write metrics: {reason}") from exc

    async def run(self, stop: asyncio.Event) -> None:
        """Emit every ``interval_s`` until ``stop`` is set, then emit a final block."""
        from homeops.core.asyncutil import sleep_or_stop

        _log.debug("run", "metrics emitter started", interval_s=self.interval_s, path=self.path)
        while True:
            stopped = await sleep_or_stop(self._sleep, self.interval_s, stop)
            if self._refresh is not None:
                try:
                    await self._refresh()
                except HomeopsError as exc:
                    # A busy store costs this block its fresh count, not the block.
                    _log.warn("emit", "metrics not refreshed", err=exc)
            try:
                self.emit_once()
            except OperationalError as exc:
                # A full disk must not take the worker down with it; try again next interval.
                _log.error("emit", "metrics block not written", err=exc)
            if stopped:
                break
        _log.debug("run", "metrics emitter stopped")
