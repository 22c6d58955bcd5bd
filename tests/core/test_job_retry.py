"""Whether a failed job gets another attempt: a pure predicate, as a table, and in the worker."""

from __future__ import annotations

import pytest

from homeops.core.errors import (
    ConfigError,
    HomeopsTimeout,
    HostKeyError,
    HttpUnavailable,
    JobCancelled,
    OperationalError,
    SshAuthError,
    SshUnavailable,
    ToolMissing,
    UsageError,
)
from homeops.core.jobs import JobContext, JobState, SqliteJobQueue, Worker
from homeops.core.retry import is_retryable_job_error
from tests.core.job_type_helpers import types
from tests.core.test_jobs_worker import drain, queue

__all__ = ["queue"]  # the fixture, shared with the worker tests


def _own(value: bool) -> OperationalError:
    exc = OperationalError("remote said so")
    exc.retryable = value  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(RuntimeError("boom"), True, id="unknown-failure"),
        pytest.param(OperationalError("disk full"), True, id="operational"),
        pytest.param(TimeoutError(), True, id="timeout-error"),
        pytest.param(HomeopsTimeout("ran 10m"), True, id="homeops-timeout"),
        pytest.param(SshUnavailable("refused"), True, id="ssh-unreachable"),
        pytest.param(HttpUnavailable("503"), True, id="http-unavailable"),
        pytest.param(UsageError("bad payload"), False, id="usage"),
        pytest.param(ConfigError("f.json", "jobs.slots", "bad"), False, id="config"),
        pytest.param(SshAuthError("denied"), False, id="ssh-auth"),
        pytest.param(HostKeyError("mismatch"), False, id="host-key"),
        pytest.param(ToolMissing("restic not on PATH"), False, id="tool-missing"),
        pytest.param(JobCancelled("cancelled"), False, id="cancelled"),
        pytest.param(_own(False), False, id="exception-says-final"),
        pytest.param(_own(True), True, id="exception-says-retry"),
    ],
)
def test_is_retryable_job_error(exc: BaseException, expected: bool) -> None:
    assert is_retryable_job_error(exc) is expected


@pytest.mark.parametrize(
    "exc",
    [SshAuthError("permission denied (publickey)"), HostKeyError("host key mismatch")],
    ids=["auth", "host-key"],
)
async def test_auth_and_host_key_failures_are_not_retried_by_the_worker(
    queue: SqliteJobQueue, exc: Exception
) -> None:
    calls = 0

    async def login(_ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        raise exc

    job = queue.enqueue("t.login", {}, max_attempts=3)
    await drain(Worker(queue, types({"t.login": login})))
    final = queue.get(job.id)
    assert calls == 1
    assert final.state is JobState.FAILED
    assert final.attempts == 1
