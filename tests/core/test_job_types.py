"""Job types: payloads validated at enqueue and parsed for the handler, retry rules, the
handler's artifact directory and progress callback; through a real worker on a real SQLite
store, and through the CLI with a test registry (in-process and as a real process)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import homeops.cli as cli
from homeops.core.artifacts import ArtifactStore
from homeops.core.errors import SshAuthError, UsageError
from homeops.core.housekeeping import SWEEP_ARTIFACTS, SweepPayload, core_job_types
from homeops.core.jobs import (
    JobContext,
    JobState,
    JobType,
    PayloadError,
    SqliteJobQueue,
    Worker,
    validate_enqueue,
)
from homeops.core.jobs.model import Job
from homeops.core.jobs.worker import MAX_PROGRESS_MESSAGE, PROGRESS_LOG_INTERVAL_S
from homeops.core.logging import get_logger
from homeops.core.registry import DomainContext, Registry
from homeops.core.settings import CoreSettings
from tests.core.test_cli import run_main
from tests.core.test_jobs_worker import ManualClock, drain

pytestmark = pytest.mark.integration


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)


class Exec(BaseModel):
    """A domain-like payload: nested model, list, datetime, defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Target
    argv: list[str] = Field(min_length=1)
    timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    not_before: datetime | None = None
    dry_run: bool = False


async def _never(ctx: JobContext, payload: Exec) -> None:
    raise AssertionError("not run in this test")


EXEC = JobType("t.exec", Exec, _never)
TYPES = {EXEC.name: EXEC}
GOOD = {"target": {"host": "vm1"}, "argv": ["whoami"]}


@pytest.fixture
def queue(state_dir: Path) -> Iterator[SqliteJobQueue]:
    q = SqliteJobQueue(state_dir / "jobs.sqlite3", backoff_base_s=0.01)
    yield q
    q.close()


# -- validate_enqueue: the type, then the payload ------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param({}, "target: Field required (and 1 more error)", id="missing-two"),
        pytest.param({"argv": ["x"]}, "target: Field required", id="missing"),
        pytest.param(
            {**GOOD, "target": {"host": "vm1", "port": "22"}},
            "target.port: Input should be a valid integer",
            id="nested-string-for-int",
        ),
        pytest.param(
            {**GOOD, "target": {"host": "vm1", "port": 0}},
            "target.port: Input should be greater than or equal to 1",
            id="nested-range",
        ),
        pytest.param(
            {**GOOD, "argv": ["ok", 3]}, "argv.1: Input should be a valid string", id="list-item"
        ),
        pytest.param({**GOOD, "argv": []}, "argv: List should have at least 1 item", id="empty"),
        pytest.param(
            {**GOOD, "timeout_s": True}, "timeout_s: Input should be a valid number", id="true"
        ),
        pytest.param(
            {**GOOD, "dry_run": 1}, "dry_run: Input should be a valid boolean", id="int-for-bool"
        ),
        pytest.param(
            {**GOOD, "comand": "x"},
            "comand: unknown field (known: target, argv, timeout_s, not_before, dry_run)",
            id="unknown-field",
        ),
        pytest.param(
            {**GOOD, "target": {"host": "vm1", "user": "x"}},
            "target.user: unknown field",
            id="nested-unknown-field",
        ),
    ],
)
def test_refused_payload_names_the_dotted_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        validate_enqueue(TYPES, "t.exec", payload)
    text = str(caught.value)
    assert text.startswith(f"payload for job type 't.exec': {message}")
    assert "\n" not in text
    assert caught.value.exit_code == 2


def test_unknown_type_lists_the_registered_types() -> None:
    other = JobType("a.second", Exec, _never)
    with pytest.raises(
        UsageError, match=r"^unknown job type 't\.nope' \(registered: a\.second, t\.exec\)$"
    ):
        validate_enqueue({**TYPES, other.name: other}, "t.nope", GOOD)
    with pytest.raises(UsageError, match=r"\(registered: none\)$"):
        validate_enqueue({}, "t.nope", {})
    # A malformed name is named as such, not as unregistered.
    with pytest.raises(UsageError, match="invalid job type 'Bad/Type'"):
        validate_enqueue(TYPES, "Bad/Type", GOOD)


def test_the_stored_payload_is_the_models_json_dump() -> None:
    stored = validate_enqueue(
        TYPES, "t.exec", {**GOOD, "timeout_s": 5, "not_before": "2030-01-02T03:04:05Z"}
    )
    assert stored == {
        "target": {"host": "vm1", "port": 22},
        "argv": ["whoami"],
        "timeout_s": 5.0,
        "not_before": "2030-01-02T03:04:05Z",
        "dry_run": False,
    }
    json.dumps(stored)  # what the store takes


def _core_types(tmp_path: Path) -> dict[str, JobType[Any]]:
    settings = CoreSettings.model_validate({"state_dir": str(tmp_path)})
    return {jt.name: jt for jt in core_job_types(DomainContext({}, None, settings))}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param({"retention_days": True}, "Input should be a valid number", id="true"),
        pytest.param({"retention_days": "7"}, "Input should be a valid number", id="string"),
        pytest.param({"retention_days": -1}, "greater than or equal to 0", id="negative"),
        pytest.param({"retention_days": float("inf")}, "not JSON", id="inf"),
        pytest.param({"retention_days": float("nan")}, "not JSON", id="nan"),
        pytest.param({"days": 1}, "days: unknown field (known: retention_days)", id="unknown"),
    ],
)
def test_sweep_payload_refusals(tmp_path: Path, payload: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        validate_enqueue(_core_types(tmp_path), SWEEP_ARTIFACTS, payload)
    assert message in str(caught.value)


def test_sweep_model_refuses_infinity_built_in_python() -> None:
    # JSON cannot carry it (refused above as not JSON); the model refuses it all the same.
    with pytest.raises(ValidationError, match="finite number"):
        SweepPayload(retention_days=float("inf"))


@pytest.mark.parametrize(
    ("payload", "stored"),
    [
        ({}, None),
        ({"retention_days": None}, None),
        ({"retention_days": 0}, 0.0),
        ({"retention_days": 1.5}, 1.5),
    ],
)
def test_sweep_payload_accepted(
    tmp_path: Path, payload: dict[str, Any], stored: float | None
) -> None:
    assert validate_enqueue(_core_types(tmp_path), SWEEP_ARTIFACTS, payload) == {
        "retention_days": stored
    }
    assert SweepPayload.model_validate(payload).retention_days == stored


# -- the worker: parsed payloads, payloads that no longer parse ----------------------------


async def test_handler_receives_the_parsed_model(queue: SqliteJobQueue) -> None:
    seen: list[Exec] = []

    async def run(ctx: JobContext, payload: Exec) -> dict[str, Any]:
        seen.append(payload)
        return {"host": payload.target.host}

    stored = validate_enqueue(TYPES, "t.exec", {**GOOD, "not_before": "2030-01-02T03:04:05Z"})
    job = queue.enqueue("t.exec", stored)
    await drain(Worker(queue, [JobType("t.exec", Exec, run)]))
    assert queue.get(job.id).state is JobState.SUCCEEDED
    assert queue.get(job.id).result == {"host": "vm1"}
    [payload] = seen
    assert isinstance(payload, Exec)
    assert payload.target == Target(host="vm1", port=22)
    assert payload.not_before == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_handlers_count_into_the_workers_metrics_and_close_runs_once_at_stop(
    queue: SqliteJobQueue,
) -> None:
    from homeops.core.metrics import MetricsRegistry

    events: list[str] = []

    async def run(ctx: JobContext, payload: Exec) -> None:
        ctx.count("aloha_runs_total")
        events.append("ran")

    async def close() -> None:
        events.append("closed")

    metrics = MetricsRegistry.with_seed_metrics()
    job_types = [
        JobType("t.exec", Exec, run, close=close),
        JobType("t.two", Exec, run, close=close),
    ]
    queue.enqueue("t.exec", validate_enqueue(TYPES, "t.exec", GOOD))
    queue.enqueue("t.two", validate_enqueue(TYPES, "t.exec", GOOD))
    await drain(Worker(queue, job_types, metrics=metrics))
    # Shared by both types, the closer is awaited once, after the last handler.
    assert events == ["ran", "ran", "closed"]
    assert metrics.snapshot()["aloha_runs_total"] == 2


async def test_a_failing_close_is_logged_not_raised(queue: SqliteJobQueue) -> None:
    async def run(ctx: JobContext, payload: Exec) -> None:
        return None

    async def close() -> None:
        raise RuntimeError("pool already gone")

    queue.enqueue("t.exec", validate_enqueue(TYPES, "t.exec", GOOD))
    await drain(Worker(queue, [JobType("t.exec", Exec, run, close=close)]))  # does not raise


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"argv": ["x"]}, "target: Field required", id="model-gained-a-field"),
        pytest.param(
            {**GOOD, "target": {"host": "vm1", "port": 99999}},
            "target.port: Input should be less than or equal to 65535",
            id="model-tightened",
        ),
        pytest.param({**GOOD, "shell": "cmd"}, "shell: unknown field", id="field-removed"),
    ],
)
async def test_a_stored_payload_that_no_longer_parses_fails_for_good(
    queue: SqliteJobQueue, payload: dict[str, Any], field: str
) -> None:
    calls = 0

    async def run(ctx: JobContext, _payload: Exec) -> None:
        nonlocal calls
        calls += 1

    # Written straight to the store, as by an older version whose model accepted it.
    job = queue.enqueue("t.exec", payload, max_attempts=5)
    await drain(Worker(queue, [JobType("t.exec", Exec, run)]))
    final = queue.get(job.id)
    assert calls == 0
    assert (final.state, final.attempts) == (JobState.FAILED, 1)
    assert final.error is not None
    assert final.error.startswith(f"stored payload for job type 't.exec': {field}")


# -- retry rules, as a table through a real worker -----------------------------------------


class Flaky(Exception):
    pass


def _raises_itself(exc: BaseException) -> bool:
    raise RuntimeError("bug in the rule")


@pytest.mark.parametrize(
    ("retryable", "error", "calls"),
    [
        pytest.param(True, RuntimeError("boom"), 3, id="core-rule-transient"),
        pytest.param(True, UsageError("bad input"), 1, id="core-rule-usage"),
        pytest.param(True, SshAuthError("denied"), 1, id="core-rule-auth"),
        pytest.param(False, RuntimeError("boom"), 1, id="never"),
        pytest.param(False, TimeoutError(), 1, id="never-timeout"),
        pytest.param(lambda e: isinstance(e, Flaky), Flaky("again"), 3, id="own-rule-yes"),
        pytest.param(lambda e: isinstance(e, Flaky), RuntimeError("boom"), 1, id="own-rule-no"),
        # The type's rule overrides the core's: its own error may know better.
        pytest.param(lambda e: True, UsageError("remote busy"), 3, id="own-rule-over-core"),
        pytest.param(_raises_itself, RuntimeError("boom"), 3, id="broken-rule-core-decides"),
        pytest.param(_raises_itself, UsageError("x"), 1, id="broken-rule-core-final"),
    ],
)
async def test_retry_rule(
    queue: SqliteJobQueue,
    retryable: Any,
    error: Exception,
    calls: int,
) -> None:
    made = 0

    async def run(ctx: JobContext, _payload: Target) -> None:
        nonlocal made
        made += 1
        raise error

    job = queue.enqueue("t.retry", {"host": "h"}, max_attempts=3)
    await drain(Worker(queue, [JobType("t.retry", Target, run, retryable=retryable)]))
    final = queue.get(job.id)
    assert made == calls
    assert (final.state, final.attempts) == (JobState.FAILED, calls)


async def test_a_timeout_is_retried_by_the_core_rule_and_not_by_false(
    queue: SqliteJobQueue,
) -> None:
    async def slow(ctx: JobContext, _payload: Target) -> None:
        await asyncio.sleep(5)

    again = queue.enqueue("t.slow", {"host": "h"}, max_attempts=2, timeout_s=0.05)
    await drain(Worker(queue, [JobType("t.slow", Target, slow)]))
    once = queue.enqueue("t.once", {"host": "h"}, max_attempts=2, timeout_s=0.05)
    await drain(Worker(queue, [JobType("t.once", Target, slow, retryable=False)]))
    assert queue.get(again.id).attempts == 2
    assert queue.get(once.id).attempts == 1
    assert queue.get(once.id).error == "timed out after 0.05s"


# -- ctx.artifacts -------------------------------------------------------------------------


async def test_artifacts_written_through_ctx_land_in_the_jobs_dir(
    queue: SqliteJobQueue, tmp_path: Path
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    src = tmp_path / "trace.zip"
    src.write_bytes(b"PK\x03\x04 not really")
    where: list[Path] = []

    async def run(ctx: JobContext, _payload: Target) -> None:
        where.append(ctx.artifacts.path)
        await ctx.artifacts.write_text("ssh/stdout.txt", "hello\n", type="ssh")
        await ctx.artifacts.write_bytes("ssh/exit_code.txt", b"0", type="ssh")
        await ctx.artifacts.add_file("trace.zip", src, type="playwright")

    job = queue.enqueue("t.art", {"host": "h"})
    await drain(Worker(queue, [JobType("t.art", Target, run)], artifacts=store))
    assert queue.get(job.id).state is JobState.SUCCEEDED
    assert where == [tmp_path / "artifacts" / job.id]
    manifest = store.manifest(job.id)
    assert (manifest.job_id, manifest.trace_id) == (job.id, job.trace_id)
    listed = {(a.type, a.path, a.size_bytes) for a in manifest.artifacts}
    assert listed == {
        ("ssh", "ssh/stdout.txt", 6),
        ("ssh", "ssh/exit_code.txt", 1),
        ("playwright", "trace.zip", src.stat().st_size),
    }
    assert (where[0] / "ssh" / "stdout.txt").read_text() == "hello\n"
    fetched = store.fetch(job.id, tmp_path / "out")  # sizes and digests check out
    assert len(fetched) == 3


async def test_a_job_that_writes_nothing_leaves_no_artifact_dir(
    queue: SqliteJobQueue, tmp_path: Path
) -> None:
    async def run(ctx: JobContext, _payload: Target) -> None:
        assert ctx.artifacts.job_id == ctx.job.id

    store = ArtifactStore(tmp_path / "artifacts")
    queue.enqueue("t.quiet", {"host": "h"})
    await drain(Worker(queue, [JobType("t.quiet", Target, run)], artifacts=store))
    assert store.list_jobs() == []


async def test_a_bad_artifact_path_fails_the_job_naming_it(
    queue: SqliteJobQueue, tmp_path: Path
) -> None:
    async def run(ctx: JobContext, _payload: Target) -> None:
        await ctx.artifacts.write_text("../escape.txt", "x", type="ssh")

    job = queue.enqueue("t.esc", {"host": "h"}, max_attempts=3)
    store = ArtifactStore(tmp_path / "artifacts")
    await drain(Worker(queue, [JobType("t.esc", Target, run)], artifacts=store))
    final = queue.get(job.id)
    assert (final.state, final.attempts) == (JobState.FAILED, 1)  # a usage error: final
    assert "invalid artifact path '../escape.txt'" in (final.error or "")
    assert not (tmp_path / "escape.txt").exists()


async def test_without_an_artifact_store_ctx_artifacts_is_an_error(
    queue: SqliteJobQueue,
) -> None:
    async def run(ctx: JobContext, _payload: Target) -> None:
        ctx.artifacts  # noqa: B018

    job = queue.enqueue("t.none", {"host": "h"}, max_attempts=1)
    await drain(Worker(queue, [JobType("t.none", Target, run)]))
    assert "this worker has no artifact store" in (queue.get(job.id).error or "")


# -- ctx.progress --------------------------------------------------------------------------


async def test_progress_is_kept_and_logged_at_a_bounded_rate(
    queue: SqliteJobQueue, log_stream: io.StringIO
) -> None:
    clock = ManualClock(1000.0)
    step = asyncio.Event()
    reported = asyncio.Event()

    async def run(ctx: JobContext, _payload: Target) -> None:
        ctx.progress(0.1, "copying")
        ctx.progress(0.2, "copying more")  # within the interval: kept, not logged
        ctx.progress(message="no fraction known")
        reported.set()
        await step.wait()
        clock.now += PROGRESS_LOG_INTERVAL_S
        ctx.progress(1, "done")

    job = queue.enqueue("t.prog", {"host": "h"})
    worker = Worker(queue, [JobType("t.prog", Target, run)], clock=clock, lease_s=30)
    task = asyncio.create_task(drain(worker))
    await asyncio.wait_for(reported.wait(), 5)
    latest = worker.progress(job.id)
    assert latest is not None
    assert (latest.fraction, latest.message) == (None, "no fraction known")
    step.set()
    await task
    assert worker.progress(job.id) is None  # finished: nothing running to report on
    lines = [line for line in log_stream.getvalue().splitlines() if "op=progress" in line]
    assert len(lines) == 2, lines
    assert "msg=copying" in lines[0]
    assert "fraction=0.1" in lines[0]
    assert f"job_id={job.id}" in lines[0]
    assert "trace_id=" in lines[0]
    assert "msg=done" in lines[1]
    assert "skipped=2" in lines[1]
    assert lines[1].endswith("fraction=1")


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_progress_refuses_a_fraction_outside_zero_to_one(
    tmp_path: Path,
    fraction: Any,
) -> None:
    ctx = JobContext(job=_job(tmp_path), log=get_logger("t"))
    with pytest.raises(ValueError, match="progress fraction"):
        ctx.progress(fraction)
    assert ctx.last_progress is None


def _job(tmp_path: Path) -> Job:
    with SqliteJobQueue(tmp_path / "one.sqlite3") as q:
        return q.enqueue("t.x", {})


def test_a_long_progress_message_is_cut(tmp_path: Path) -> None:
    ctx = JobContext(job=_job(tmp_path), log=get_logger("t"))
    ctx.progress(0.5, "x" * 10_000)
    assert ctx.last_progress is not None
    assert len(ctx.last_progress.message) == MAX_PROGRESS_MESSAGE
    assert ctx.last_progress.message.endswith("...")


# -- the CLI with a test registry ----------------------------------------------------------


@pytest.fixture
def test_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """``homeops`` with the core plus domain ``t`` (job type ``t.exec``)."""
    # Only the core's record: the real domains' job types would change the lists asserted here.
    core_only = [d for d in cli.domain_records() if d.name == "core"]

    def build() -> Registry:
        registry = Registry.of(core_only)

        def job_types(_ctx: DomainContext) -> Sequence[JobType[Any]]:
            return [EXEC]

        registry.add_job_types("t", job_types)
        return registry

    monkeypatch.setattr(cli, "build_registry", build)


def _enqueue(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_main(capsys, "jobs", "enqueue", *args)


@pytest.mark.usefixtures("test_registry")
def test_cli_enqueue_validates_and_stores_the_dump(
    capsys: pytest.CaptureFixture[str], state_dir: Path
) -> None:
    code, out, err = _enqueue(capsys, "t.exec", "--payload", json.dumps(GOOD))
    assert code == 0, err
    with SqliteJobQueue(state_dir / "jobs.sqlite3", readonly=True) as q:
        stored = q.get(out.strip()).payload
    assert stored == {
        "target": {"host": "vm1", "port": 22},
        "argv": ["whoami"],
        "timeout_s": 30.0,
        "not_before": None,
        "dry_run": False,
    }


@pytest.mark.usefixtures("test_registry")
@pytest.mark.parametrize(
    ("args", "line"),
    [
        pytest.param(
            ["t.nope"],
            "error: unknown job type 't.nope' (registered: core.artifacts-sweep, t.exec)",
            id="unknown-type",
        ),
        pytest.param(
            ["t.exec", "--payload", '{"target": {"host": ""}, "argv": ["x"]}'],
            "error: payload for job type 't.exec': target.host: "
            "String should have at least 1 character",
            id="nested-field",
        ),
        pytest.param(
            [SWEEP_ARTIFACTS, "--payload", '{"retention_days": true}'],
            "error: payload for job type 'core.artifacts-sweep': retention_days: "
            "Input should be a valid number",
            id="core-sweep-true",
        ),
    ],
)
def test_cli_enqueue_refusals_are_one_line_exit_2_and_store_nothing(
    capsys: pytest.CaptureFixture[str], state_dir: Path, args: list[str], line: str
) -> None:
    code, out, err = _enqueue(capsys, *args)
    assert (code, out) == (2, "")
    assert err.strip() == line
    assert not (state_dir / "jobs.sqlite3").exists()


def test_cli_idempotency_compares_the_validated_payload(
    capsys: pytest.CaptureFixture[str], state_dir: Path
) -> None:
    # {} and {"retention_days": null} are the same job once defaults are filled in.
    ids = set()
    for payload in ("{}", '{"retention_days": null}'):
        code, out, err = _enqueue(
            capsys, SWEEP_ARTIFACTS, "--payload", payload, "--idempotency-key", "nightly"
        )
        assert code == 0, err
        ids.add(out.strip())
    assert len(ids) == 1


def test_a_domain_cli_process_refuses_a_bad_payload(state_dir: Path) -> None:
    # The real process path: a CLI built with its own registry (job type t.block).
    script = Path(__file__).with_name("blocking_worker_cli.py")
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)}

    def enqueue(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), "jobs", "enqueue", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=Path(__file__).parents[2],
        )

    bad = enqueue("t.block", "--payload", '{"sleep": "long"}')
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip() == (
        "error: payload for job type 't.block': sleep: Input should be a valid number"
    )
    good = enqueue("t.block", "--payload", '{"sleep": 1}', "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["payload"] == {"sleep": 1.0}


def test_worker_cli_runs_the_core_sweep_job_type(
    capsys: pytest.CaptureFixture[str], state_dir: Path
) -> None:
    store = ArtifactStore(state_dir / "artifacts")
    store.ensure_job("old1", "t")
    code, out, err = _enqueue(capsys, SWEEP_ARTIFACTS, "--payload", '{"retention_days": 0}')
    assert code == 0, err
    job_id = out.strip()
    code, _, err = run_main(capsys, "jobs", "worker", "--drain")
    assert code == 0, err
    code, out, _ = run_main(capsys, "jobs", "status", job_id, "--json")
    job = json.loads(out)
    assert job["state"] == "succeeded"
    assert job["result"] == {
        "removed": ["old1"],
        "retention_days": 0.0,
        "jobs_pruned": {"removed": 0, "dry_run": False, "older_than_s": 30 * 86400.0},
    }


@pytest.mark.parametrize(
    ("retention", "pruned"), [("1", 2), ("never", 0)], ids=["one-day", "never"]
)
def test_the_sweep_job_also_prunes_finished_jobs_per_jobs_retention(
    capsys: pytest.CaptureFixture[str],
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    retention: str,
    pruned: int,
) -> None:
    import time

    monkeypatch.setenv("HOMEOPS_JOBS_RETENTION_DAYS", retention)
    db = state_dir / "jobs.sqlite3"
    long_ago = time.time() - 3 * 86400
    with SqliteJobQueue(db, clock=lambda: long_ago) as old:
        finished = [old.cancel(old.enqueue("t.old", {}).id).id for _ in range(2)]
        still_queued = old.enqueue("t.old", {}).id  # old, but not finished: never pruned
    with SqliteJobQueue(db) as q:
        recent = q.cancel(q.enqueue("t.new", {}).id).id
    code, out, err = _enqueue(capsys, SWEEP_ARTIFACTS)
    assert code == 0, err
    sweep = out.strip()
    code, _, err = run_main(capsys, "jobs", "worker", "--drain")
    assert code == 0, err
    with SqliteJobQueue(db, readonly=True) as q:
        left = {job.id for job in q.list(limit=100)}
        result = q.get(sweep).result
    assert result["jobs_pruned"]["removed"] == pruned
    kept = {still_queued, recent, sweep}
    assert left == (kept if pruned else kept | set(finished))


def test_cli_enqueue_asks_only_the_types_own_domain_first(
    capsys: pytest.CaptureFixture[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the core's record: the real domains' job types would change the lists asserted here.
    core_only = [d for d in cli.domain_records() if d.name == "core"]

    def build() -> Registry:
        registry = Registry.of(core_only)

        def broken(_ctx: DomainContext) -> Sequence[JobType[Any]]:
            raise UsageError("windows: settings are broken")

        registry.add_job_types("windows", broken)
        return registry

    monkeypatch.setattr(cli, "build_registry", build)
    code, _, err = _enqueue(capsys, SWEEP_ARTIFACTS)
    assert code == 0, err
    # A type of no known domain asks every domain, to list them: the broken one says so.
    code, _, err = _enqueue(capsys, "t.nope")
    assert (code, err.strip()) == (2, "error: windows: settings are broken")


def test_a_worker_refuses_two_job_types_of_one_name(queue: SqliteJobQueue) -> None:
    with pytest.raises(ValueError, match=r"job type 't\.exec' given twice"):
        Worker(queue, [EXEC, JobType("t.exec", Target, _never)])
