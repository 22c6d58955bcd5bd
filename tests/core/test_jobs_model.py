"""Job model: validators, states, JSON form, backoff schedule."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from homeops.core.errors import ExitCode, UsageError, quote_input
from homeops.core.jobs import (
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
from homeops.core.jobs.model import canonical_payload, encode_payload


@pytest.mark.parametrize(
    ("state", "terminal"),
    [
        pytest.param(JobState.QUEUED, False, id="queued"),
        pytest.param(JobState.RUNNING, False, id="running"),
        pytest.param(JobState.SUCCEEDED, True, id="succeeded"),
        pytest.param(JobState.FAILED, True, id="failed"),
        pytest.param(JobState.CANCELLED, True, id="cancelled"),
    ],
)
def test_terminal_states(state: JobState, terminal: bool) -> None:
    assert state.terminal is terminal


@pytest.mark.parametrize(
    "job_id",
    [
        pytest.param("", id="empty"),
        pytest.param("../x", id="parent-traversal"),
        pytest.param("..", id="dotdot"),
        pytest.param("a..b", id="inner-dotdot"),
        pytest.param("/abs", id="absolute"),
        pytest.param("a/b", id="slash"),
        pytest.param("a\\b", id="backslash"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-flag", id="leading-dash"),
        pytest.param("a b", id="space"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param("a\tb", id="tab"),
        pytest.param("jöb", id="non-ascii"),
        pytest.param("\uff41bc", id="fullwidth-letter"),
        pytest.param("\u0661\u0662", id="arabic-indic-digits"),
        pytest.param("a\u200bb", id="zero-width-space"),
        pytest.param("x" * 129, id="too-long"),
    ],
)
def test_bad_job_ids_refused(job_id: str) -> None:
    with pytest.raises(UsageError) as info:
        validate_job_id(job_id)
    assert info.value.exit_code == ExitCode.USAGE
    message = str(info.value)
    assert quote_input(job_id) in message
    assert "\n" not in message
    assert "\x00" not in message


@pytest.mark.parametrize(
    "job_id",
    ["a", "0", "job-1.2_x", "x" * 128, "01JD3M6Z6H1V5W9Q8X7Y2A3B4C", "a.b.c"],
)
def test_good_job_ids_accepted(job_id: str) -> None:
    assert validate_job_id(job_id) == job_id


@pytest.mark.parametrize(
    ("validate", "what", "value"),
    [
        pytest.param(validate_trace_id, "trace id", "a b", id="trace-space"),
        pytest.param(validate_trace_id, "trace id", "a:b", id="trace-colon"),
        pytest.param(validate_trace_id, "trace id", "../x", id="trace-traversal"),
        pytest.param(validate_idempotency_key, "idempotency key", "bad key!", id="key-space"),
        pytest.param(validate_idempotency_key, "idempotency key", ":x", id="key-leading-colon"),
        pytest.param(validate_idempotency_key, "idempotency key", "k\n", id="key-newline"),
        pytest.param(validate_idempotency_key, "idempotency key", "k" * 129, id="key-too-long"),
        pytest.param(validate_idempotency_key, "idempotency key", "", id="key-empty"),
    ],
)
def test_trace_ids_and_keys_are_named_in_their_errors(
    validate: Callable[[str], str], what: str, value: str
) -> None:
    with pytest.raises(UsageError) as info:
        validate(value)
    assert info.value.exit_code == ExitCode.USAGE
    message = str(info.value)
    assert message.startswith(f"invalid {what} {quote_input(value)}: use 1-128 of")
    assert "job id" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "key", ["nightly-2026-11-22", "deploy:host:rev", "0", "a.b_c-d:e", "k" * 128, "v1..v2"]
)
def test_good_idempotency_keys_accepted(key: str) -> None:
    assert validate_idempotency_key(key) == key


def test_trace_ids_keep_the_job_id_alphabet() -> None:
    assert validate_trace_id(new_trace_id())
    assert validate_trace_id("trace-1.a_b") == "trace-1.a_b"


def test_canonical_payload_ignores_key_order_only() -> None:
    a = json.loads('{"b": 1, "a": {"y": [1, 2], "x": null}}')
    b = json.loads('{"a": {"x": null, "y": [1, 2]}, "b": 1}')
    assert canonical_payload(a) == canonical_payload(b) == '{"a":{"x":null,"y":[1,2]},"b":1}'
    assert canonical_payload({"n": 1}) != canonical_payload({"n": 1.0})
    assert canonical_payload({"n": 1}) != canonical_payload({"n": True})
    assert canonical_payload({"l": [1, 2]}) != canonical_payload({"l": [2, 1]})


@pytest.mark.parametrize("value", ["a", "windows.exec", "builds.flake-build", "x_1"])
def test_valid_job_types(value: str) -> None:
    assert validate_job_type(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("Windows.exec", id="upper"),
        pytest.param("1abc", id="leading-digit"),
        pytest.param("a/b", id="slash"),
        pytest.param("a" * 65, id="too-long"),
    ],
)
def test_bad_job_types(value: str) -> None:
    with pytest.raises(UsageError, match="invalid job type"):
        validate_job_type(value)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"x": object()}, id="object"),
        pytest.param({"x": float("nan")}, id="nan"),
        pytest.param({"x": {1, 2}}, id="set"),
        pytest.param(["not", "a", "dict"], id="list"),
    ],
)
def test_bad_payloads(payload: object) -> None:
    with pytest.raises(UsageError, match="payload"):
        encode_payload(payload)


def test_ids_sort_by_time_and_are_valid() -> None:
    ids = [new_job_id(1_700_000_000.0 + i / 1000) for i in range(50)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 50
    for job_id in ids:
        validate_job_id(job_id)
    assert validate_job_id(new_trace_id())


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        pytest.param(0, 0.0, id="no-attempt"),
        pytest.param(1, 1.0, id="first"),
        pytest.param(2, 2.0, id="second"),
        pytest.param(3, 4.0, id="third"),
        pytest.param(10, 300.0, id="capped"),
        pytest.param(10_000, 300.0, id="huge-no-overflow"),
    ],
)
def test_backoff(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, base_s=1.0, max_s=300.0) == expected


def test_to_dict_is_json_with_rfc3339_utc() -> None:
    job = Job(
        id="j1",
        type="builds.run",
        payload={"a": [1, 2]},
        trace_id="t1",
        state=JobState.RUNNING,
        attempts=1,
        max_attempts=3,
        idempotency_key=None,
        created_at=0.0,
        updated_at=1.5,
        started_at=1.5,
        finished_at=None,
        available_at=0.0,
        lease_until=31.5,
        worker_id="w1",
        result=None,
        error=None,
        cancel_requested=False,
        timeout_s=None,
    )
    out = job.to_dict()
    assert out["state"] == "running"
    assert out["created_at"] == "1970-01-01T00:00:00.000Z"
    assert out["started_at"] == "1970-01-01T00:00:01.500Z"
    assert out["finished_at"] is None
    assert json.loads(json.dumps(out)) == out
