"""Metrics registry, logfmt lines, Prometheus text and the periodic emitter."""

from __future__ import annotations

import asyncio
import io
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from homeops.core.errors import OperationalError, UsageError
from homeops.core.metrics import (
    SEED_METRICS,
    WORKER_METRICS,
    MetricKind,
    MetricsEmitter,
    MetricsRegistry,
    format_logfmt,
    format_value,
    prometheus_text,
)

LINE_RE = re.compile(
    r"metric=[a-zA-Z_:][a-zA-Z0-9_:]* value=-?[0-9.e+]+ ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
)
# 2026-11-22T00:00:00Z
T0 = 1795305600.0


def test_counters_and_gauges() -> None:
    reg = MetricsRegistry()
    reg.inc("jobs_enqueued_total")
    reg.inc("jobs_enqueued_total", 2)
    reg.set("queue_depth", 5)
    reg.set("queue_depth", 3)
    assert reg.snapshot() == {"jobs_enqueued_total": 3.0, "queue_depth": 3.0}


def test_registry_satisfies_job_worker_sink() -> None:
    from homeops.core.jobs.queue import MetricsSink as WorkerSink

    reg = MetricsRegistry()
    assert isinstance(reg, WorkerSink)
    sink: WorkerSink = reg
    sink.set("jobs_running", 2)
    assert reg.snapshot() == {"jobs_running": 2.0}


def test_seed_metrics_start_at_zero() -> None:
    reg = MetricsRegistry.with_seed_metrics()
    want = dict.fromkeys(sorted(s.name for s in (*SEED_METRICS, *WORKER_METRICS)), 0.0)
    assert reg.snapshot() == want
    assert {s.kind for s in SEED_METRICS} == {MetricKind.COUNTER}
    assert len(SEED_METRICS) == 6


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("1abc", id="leading-digit"),
        pytest.param("jobs-total", id="dash"),
        pytest.param("jobs total", id="space"),
        pytest.param("jöbs", id="non-ascii"),
        pytest.param("jobs\n", id="trailing-newline"),
    ],
)
def test_invalid_names_refused(name: str) -> None:
    reg = MetricsRegistry()
    with pytest.raises(UsageError, match="invalid metric name"):
        reg.inc(name)
    with pytest.raises(UsageError):
        reg.set(name, 1)
    assert reg.snapshot() == {}


@pytest.mark.parametrize("name", ["a", "_x", "ns:sub_total", "A1:b_2"])
def test_valid_names_accepted(name: str) -> None:
    reg = MetricsRegistry()
    reg.inc(name)
    assert reg.snapshot() == {name: 1.0}


def test_counter_cannot_decrease_or_be_set() -> None:
    reg = MetricsRegistry()
    reg.inc("x_total")
    with pytest.raises(UsageError, match="cannot decrease"):
        reg.inc("x_total", -1)
    with pytest.raises(UsageError, match="counter"):
        reg.set("x_total", 0)
    assert reg.snapshot() == {"x_total": 1.0}


def test_gauge_may_go_down_by_inc() -> None:
    reg = MetricsRegistry()
    reg.describe("inflight", MetricKind.GAUGE, "in flight")
    reg.inc("inflight")
    reg.inc("inflight", -1)
    assert reg.snapshot() == {"inflight": 0.0}


def test_describe_rejects_unknown_kind() -> None:
    with pytest.raises(UsageError, match="unknown kind"):
        MetricsRegistry().describe("x", "histogram", "h")


def test_inc_is_thread_safe() -> None:
    reg = MetricsRegistry()

    def work() -> None:
        for _ in range(5000):
            reg.inc("n_total")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.snapshot()["n_total"] == 40000


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(0.0, "0", id="zero"),
        pytest.param(3.0, "3", id="int"),
        pytest.param(-2.0, "-2", id="negative-int"),
        pytest.param(1.5, "1.5", id="fraction"),
        pytest.param(float("nan"), "NaN", id="nan"),
        pytest.param(float("inf"), "+Inf", id="inf"),
        pytest.param(float("-inf"), "-Inf", id="-inf"),
        pytest.param(1e300, "1e+300", id="huge"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_logfmt_lines_exact() -> None:
    lines = format_logfmt({"b_total": 2.0, "a_total": 0.0, "g": 0.25}, T0 + 0.5)
    assert lines == [
        "metric=a_total value=0 ts=2026-11-22T00:00:00.500Z",
        "metric=b_total value=2 ts=2026-11-22T00:00:00.500Z",
        "metric=g value=0.25 ts=2026-11-22T00:00:00.500Z",
    ]
    assert all(LINE_RE.fullmatch(line) for line in lines)


def test_prometheus_text_exact() -> None:
    reg = MetricsRegistry()
    reg.describe("jobs_failed_total", "counter", "Total jobs failed")
    reg.describe("weird", MetricKind.GAUGE, 'back\\slash\nnewline "quoted"')
    reg.inc("jobs_failed_total", 2)
    reg.set("weird", 0.5)
    reg.inc("undescribed_total")
    assert prometheus_text(reg) == (
        "# HELP jobs_failed_total Total jobs failed\n"
        "# TYPE jobs_failed_total counter\n"
        "jobs_failed_total 2\n"
        "# HELP undescribed_total undescribed_total (no description registered)\n"
        "# TYPE undescribed_total counter\n"
        "undescribed_total 1\n"
        '# HELP weird back\\\\slash\\nnewline "quoted"\n'
        "# TYPE weird gauge\n"
        "weird 0.5\n"
    )


def test_prometheus_text_empty_registry() -> None:
    assert prometheus_text(MetricsRegistry()) == ""


class FakeTime:
    """A clock plus a sleep that advances it and sets ``stop`` after ``stop_after`` sleeps."""

    def __init__(self, stop: asyncio.Event, stop_after: int) -> None:
        self.now = T0
        self.sleeps: list[float] = []
        self.stop = stop
        self.stop_after = stop_after

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        if len(self.sleeps) >= self.stop_after:
            self.stop.set()
            # Block like a real sleep would; the emitter must notice stop and cancel us.
            await asyncio.Event().wait()


async def test_emitter_writes_blocks_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    reg = MetricsRegistry.with_seed_metrics()
    reg.inc("aloha_runs_total")
    stop = asyncio.Event()
    fake = FakeTime(stop, stop_after=3)
    emitter = MetricsEmitter(reg, interval_s=30, clock=fake.clock, sleep=fake.sleep)
    await asyncio.wait_for(emitter.run(stop), 5)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    # Two full intervals, then the third sleep is interrupted by stop: the final block.
    assert len(lines) == 3 * (len(SEED_METRICS) + len(WORKER_METRICS))
    assert all(LINE_RE.fullmatch(line) for line in lines)
    assert fake.sleeps == [30, 30, 30]
    assert lines[0] == "metric=aloha_runs_total value=1 ts=2026-11-22T00:00:30.000Z"
    assert lines[-1].endswith("ts=2026-11-22T00:01:30.000Z")
    assert out.err == ""


async def test_emitter_final_block_when_already_stopped(tmp_path: Path) -> None:
    reg = MetricsRegistry()
    reg.set("g", 7)
    stop = asyncio.Event()
    stop.set()
    fake = FakeTime(stop, stop_after=99)
    path = tmp_path / "metrics.log"
    await MetricsEmitter(reg, interval_s=1, path=path, clock=fake.clock, sleep=fake.sleep).run(stop)
    assert fake.sleeps == []
    assert path.read_text() == "metric=g value=7 ts=2026-11-22T00:00:00.000Z\n"


async def test_emitter_stops_promptly_with_real_sleep(tmp_path: Path) -> None:
    stop = asyncio.Event()
    emitter = MetricsEmitter(MetricsRegistry(), interval_s=3600, path=tmp_path / "m.log")
    task = asyncio.create_task(emitter.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5.0)
    # Stopping writes the final block (nothing was counted, so it is empty but the file exists).
    assert (tmp_path / "m.log").exists()


async def test_emitter_file_appends_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "metrics.log"
    path.write_text("previous line\n")
    path.chmod(0o600)
    reg = MetricsRegistry()
    reg.inc("a_total")
    stop = asyncio.Event()
    fake = FakeTime(stop, stop_after=2)
    emitter = MetricsEmitter(reg, interval_s=10, path=path, clock=fake.clock, sleep=fake.sleep)
    await emitter.run(stop)
    assert path.read_text().splitlines() == [
        "previous line",
        "metric=a_total value=1 ts=2026-11-22T00:00:10.000Z",
        "metric=a_total value=1 ts=2026-11-22T00:00:20.000Z",
    ]
    # An existing file keeps the mode its owner gave it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_emit_once_creates_file_0640(tmp_path: Path) -> None:
    path = tmp_path / "new.log"
    reg = MetricsRegistry()
    reg.inc("a_total", 4)
    emitter = MetricsEmitter(reg, interval_s=1, path=path, clock=lambda: T0)
    # Under a strict umask a file created without an explicit chmod would be 0600:
    # only the emitter's own chmod can make it 0640.
    old_umask = os.umask(0o077)
    try:
        assert emitter.emit_once() == ["metric=a_total value=4 ts=2026-11-22T00:00:00.000Z"]
    finally:
        os.umask(old_umask)
    emitter.emit_once()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert len(path.read_text().splitlines()) == 2


async def test_emitter_survives_unwritable_path(tmp_path: Path, log_stream: io.StringIO) -> None:
    stop = asyncio.Event()
    fake = FakeTime(stop, stop_after=2)
    path = tmp_path / "missing-dir" / "m.log"
    emitter = MetricsEmitter(
        MetricsRegistry(), interval_s=1, path=path, clock=fake.clock, sleep=fake.sleep
    )
    await emitter.run(stop)
    assert log_stream.getvalue().count("metrics block not written") == 2


@pytest.mark.timeout(20)  # the bug was a hang: fail in seconds, not at the suite's limit
def test_emitter_refuses_a_fifo_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    emitter = MetricsEmitter(MetricsRegistry.with_seed_metrics(), interval_s=1, path=fifo)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OperationalError, match="cannot write metrics: a FIFO with no reader"):
        emitter.emit_once()
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OperationalError, match="not a regular file or device"):
            emitter.emit_once()
        assert os.read(reader, 100) == b""  # nothing was written into it
    finally:
        os.close(reader)
    assert len(os.listdir("/proc/self/fd")) == before, "file descriptor leaked"


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_emitter_refuses_a_symlinked_path(tmp_path: Path, dangling: bool) -> None:
    # A root worker must not append to whatever a planted link points at (/etc/passwd), nor
    # create the link's target.
    target = tmp_path / "victim"
    if not dangling:
        target.write_text("root:x:0:0\n")
    link = tmp_path / "metrics.log"
    link.symlink_to(target)
    emitter = MetricsEmitter(MetricsRegistry.with_seed_metrics(), interval_s=1, path=link)
    with pytest.raises(OperationalError, match="symlink; refusing to follow"):
        emitter.emit_once()
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text() == "root:x:0:0\n"


def test_emitter_writes_to_a_device() -> None:
    # /dev/null (or a terminal) is a fine place for metrics: only FIFOs, sockets and
    # directories are refused.
    emitter = MetricsEmitter(
        MetricsRegistry.with_seed_metrics(), interval_s=1, path=Path("/dev/null")
    )
    assert len(emitter.emit_once()) == 7


def test_emitter_rejects_bad_interval() -> None:
    with pytest.raises(UsageError, match="interval"):
        MetricsEmitter(MetricsRegistry(), interval_s=0)


# A strict reader of text format 0.0.4 as `promtool check metrics` lints it (prometheus_client
# is not in the dev lock): every family has one HELP and one TYPE before its samples, families
# are contiguous, names and values are well formed.
_PROM_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP_RE = re.compile(rf"# HELP ({_PROM_NAME}) (.*)")
_TYPE_RE = re.compile(rf"# TYPE ({_PROM_NAME}) (counter|gauge|histogram|summary|untyped)")
_SAMPLE_RE = re.compile(rf"({_PROM_NAME}) (\S+)")


def parse_prometheus(text: str) -> dict[str, dict[str, object]]:
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, dict[str, object]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if m := _HELP_RE.fullmatch(line):
            name, field, value = m[1], "help", m[2]
        elif m := _TYPE_RE.fullmatch(line):
            name, field, value = m[1], "type", m[2]
        elif m := _SAMPLE_RE.fullmatch(line):
            name, field, value = m[1], "samples", m[2]
            float(value)  # NaN, +Inf, -Inf and decimals all parse; anything else raises
        else:
            raise AssertionError(f"not a text-format line: {line!r}")
        if name != current:
            assert name not in families, f"{name}: family split across the exposition"
            families[name] = {"samples": []}
            current = name
        family = families[name]
        if field == "samples":
            family["samples"].append(float(value))  # type: ignore[attr-defined]
            continue
        assert field not in family, f"{name}: second {field.upper()} line"
        assert not family["samples"], f"{name}: {field.upper()} after a sample"
        family[field] = value
    return families


def test_every_prometheus_metric_has_help_and_type() -> None:
    # What the job worker's registry holds once it has run: the seed's counters, its own
    # gauge (set with no describe) and a domain's counter nobody described.
    reg = MetricsRegistry.with_seed_metrics()
    reg.set("jobs_running", 2)
    reg.inc("jobs_completed_total")
    reg.inc("builds_cache_hits_total")
    families = parse_prometheus(prometheus_text(reg))
    assert set(families) == {
        *(s.name for s in SEED_METRICS),
        "jobs_running",
        "builds_cache_hits_total",
    }
    for name, family in families.items():
        assert family.get("help"), f"{name}: no HELP"
        assert family.get("type") in ("counter", "gauge"), f"{name}: no TYPE"
        assert len(family["samples"]) == 1  # type: ignore[arg-type]
    assert families["jobs_running"]["type"] == "gauge"
    assert families["jobs_running"]["samples"] == [2.0]
    assert families["builds_cache_hits_total"]["type"] == "counter"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("x 1\n# HELP x late\n", id="help-after-sample"),
        pytest.param("# TYPE x gauge\n# TYPE x gauge\nx 1\n", id="two-types"),
        pytest.param("# HELP x a\n# TYPE x gauge\nx 1\ny 2\nx 3\n", id="split-family"),
        pytest.param("# TYPE x gauge\nx one\n", id="bad-value"),
        pytest.param("# TYPE x gauge\nx 1", id="no-final-newline"),
    ],
)
def test_prometheus_parser_is_strict(bad: str) -> None:
    with pytest.raises((AssertionError, ValueError)):
        parse_prometheus(bad)


def test_raise_to_never_lowers_a_counter_and_refuses_a_gauge() -> None:
    reg = MetricsRegistry.with_seed_metrics()
    reg.inc("jobs_enqueued_total", 2)
    reg.raise_to("jobs_enqueued_total", 5)
    reg.raise_to("jobs_enqueued_total", 3)  # e.g. the store pruned some rows meanwhile
    assert reg.snapshot()["jobs_enqueued_total"] == 5.0
    reg.set("queue_depth", 1)
    with pytest.raises(UsageError, match="queue_depth is a gauge"):
        reg.raise_to("queue_depth", 2)


async def test_emitter_refreshes_before_each_block_and_survives_a_failed_refresh(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = MetricsRegistry.with_seed_metrics()
    refreshes = 0

    async def refresh() -> None:
        nonlocal refreshes
        refreshes += 1
        if refreshes == 1:
            raise OperationalError("store busy")
        reg.raise_to("jobs_enqueued_total", 7)

    stop = asyncio.Event()
    sleeps = 0

    async def sleep(_: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 2:
            stop.set()

    emitter = MetricsEmitter(reg, interval_s=1, path=None, sleep=sleep, refresh=refresh)
    await emitter.run(stop)
    values = [
        line.split()[1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("metric=jobs_enqueued_total ")
    ]
    # The block after a failed refresh is still written, with the value it had.
    assert (refreshes, values) == (2, ["value=0", "value=7"])
