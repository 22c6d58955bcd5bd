"""The job record every domain shares, its states, and the validators for what goes in it.

Pure: no I/O. A queue backend stores and returns :class:`Job` values; the worker runs them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final

from homeops.core.errors import UsageError, json_type_name, quote_input
from homeops.core.logging import format_ts

JOB_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Idempotency keys name a piece of work ("nightly-2026-11-22", "deploy:web1:3f2a9c"); they are
# never used as paths, so ':' is allowed. Still ASCII, no spaces or quotes, and bounded.
IDEMPOTENCY_KEY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Timestamps in to_dict(); everything else is passed through as stored.
_TIME_FIELDS: Final = (
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "available_at",
    "lease_until",
)


class JobState(StrEnum):
    """Where a job is in its life. ``succeeded``, ``failed`` and ``cancelled`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for the states a job never leaves."""
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored. Times are float epoch seconds (UTC); ``None`` when not yet reached."""

    id: str
    type: str
    payload: dict[str, Any]
    trace_id: str
    state: JobState
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    available_at: float
    lease_until: float | None
    worker_id: str | None
    result: Any
    error: str | None
    cancel_requested: bool
    timeout_s: float | None
    # Set when a row's JSON column could not be read (lenient reads: list, status): what is
    # damaged, with the column's value replaced by {} or None. Never set on a job to run.
    damaged: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: timestamps as RFC3339 UTC strings, state as its name."""
        out = asdict(self)
        out["state"] = str(self.state)
        for key in _TIME_FIELDS:
            value = out[key]
            out[key] = None if value is None else format_ts(value)
        return out


def _is_job_id(value: object) -> bool:
    return isinstance(value, str) and bool(JOB_ID_RE.fullmatch(value)) and ".." not in value


def validate_job_id(value: str) -> str:
    """Return ``value`` if it is a safe job id (also used as a directory name), else UsageError."""
    if not _is_job_id(value):
        raise UsageError(
            f"invalid job id {quote_input(value)}: use 1-128 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..'"
        )
    return value


def validate_trace_id(value: str) -> str:
    """Return ``value`` if it is a valid trace id (the job-id alphabet), else UsageError."""
    if not _is_job_id(value):
        raise UsageError(
            f"invalid trace id {quote_input(value)}: use 1-128 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..'"
        )
    return value


def validate_idempotency_key(value: str) -> str:
    """Return ``value`` if it is a valid idempotency key such as ``deploy:web1:3f2a``."""
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise UsageError(
            f"invalid idempotency key {quote_input(value)}: use 1-128 of A-Z a-z 0-9 . _ - :, "
            "starting with a letter or digit"
        )
    return value


def validate_job_type(value: str) -> str:
    """Return ``value`` if it is a valid job type such as ``windows.exec``, else UsageError."""
    if not isinstance(value, str) or not JOB_TYPE_RE.fullmatch(value):
        raise UsageError(
            f"invalid job type {quote_input(value)}: use 1-64 of a-z 0-9 . _ -, "
            "starting with a letter"
        )
    return value


def encode_payload(payload: object) -> str:
    """Payload as compact JSON; a non-dict or non-JSON value is a UsageError."""
    if not isinstance(payload, dict):
        raise UsageError(f"job payload must be a JSON object, got {json_type_name(payload)}")
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"job payload is not JSON-serialisable: {exc}") from exc


def canonical_payload(payload: object) -> str:
    """A JSON value as canonical text (sorted keys, compact), for comparing payloads.

    Pass what JSON gave back (``json.loads``), not the caller's value: then tuples are lists
    and keys are strings, as stored. Numbers compare as written: ``1`` is not ``1.0``.
    """
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def new_job_id(now: float) -> str:
    """A unique id that sorts by creation time: 14 hex digits of microseconds + 10 random."""
    import secrets  # here, not at the top: `jobs list` never makes an id (~7 ms of imports)

    return f"{int(now * 1_000_000):014x}{secrets.token_hex(5)}"


def new_trace_id() -> str:
    """A fresh trace id (32 hex digits, the W3C trace-context size)."""
    import uuid

    return uuid.uuid4().hex


def backoff_delay(attempt: int, *, base_s: float, max_s: float) -> float:
    """Seconds before retrying after failed attempt ``attempt`` (1-based): base * 2**(n-1), capped.

    No jitter: retries of one job never collide with each other, and tests stay exact.
    """
    if attempt < 1:
        return 0.0
    # The exponent is capped so a huge attempt count cannot overflow the float.
    return float(min(max_s, base_s * 2.0 ** min(attempt - 1, 62)))
