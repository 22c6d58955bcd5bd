"""Retry policies and the one place that runs a retry loop.

The decision *whether* to retry is a pure predicate (tested as a table); the loop itself is
tenacity's ``AsyncRetrying`` with an injectable ``sleep`` so tests never wait for real.
Seed 001: SSH and HTTP operations get 3 attempts with 500 ms, 1 s, 2 s backoff. With 3
attempts only the first two delays are used; the third applies when ``attempts`` is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from homeops.core.asyncutil import Sleep as Sleep  # re-exported: seams take `sleep=`
from homeops.core.errors import (
    HostKeyError,
    JobCancelled,
    SshAuthError,
    ToolMissing,
    UsageError,
)
from homeops.core.logging import get_logger

T = TypeVar("T")

_log = get_logger("core.retry")

RETRYABLE_HTTP_STATUS: Final = frozenset({502, 503, 504})

# Failures that another attempt of the same job cannot fix: the input, the credentials, the
# host's identity or a missing program stay as they are between attempts. Retrying them only
# delays the report (an auth failure retried with backoff looked like a flaky host).
_FINAL_JOB_ERRORS: Final = (UsageError, SshAuthError, HostKeyError, ToolMissing, JobCancelled)


def is_retryable_job_error(exc: BaseException) -> bool:
    """Whether a job whose handler raised ``exc`` should get another attempt.

    An exception may decide for itself with a boolean ``retryable`` attribute (a domain's
    error that knows it is permanent, or transient); otherwise usage, credential, host-key,
    missing-tool and cancellation errors are final and everything else is retried.
    """
    own = getattr(exc, "retryable", None)
    if isinstance(own, bool):
        return own
    return not isinstance(exc, _FINAL_JOB_ERRORS)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try and how long to wait before each new attempt."""

    attempts: int = 3
    delays: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if not self.delays or any(d < 0 for d in self.delays):
            raise ValueError("delays must be a non-empty list of non-negative seconds")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return self.delays[min(attempt, len(self.delays)) - 1]


SEED_POLICY: Final = RetryPolicy()
NO_RETRY: Final = RetryPolicy(attempts=1)


def is_retryable_http_status(status: int) -> bool:
    """502/503/504 are transient (a proxy or the app restarting); every 4xx and 2xx is final."""
    return status in RETRYABLE_HTTP_STATUS


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    retry_if: Callable[[BaseException], bool],
    op: str,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """Call ``fn`` until it returns, ``retry_if(exc)`` is false, or attempts run out.

    The last exception is re-raised unchanged so callers see the real cause.
    """
    from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

    def wait(state: RetryCallState) -> float:
        return policy.delay_after(state.attempt_number)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        _log.warn(
            op,
            "attempt failed, retrying",
            err=exc,
            attempt=state.attempt_number,
            of=policy.attempts,
            wait_ms=int(wait(state) * 1000),
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait,
        retry=retry_if_exception(retry_if),
        sleep=sleep,
        reraise=True,
        before_sleep=before_sleep,
    )
    return await retrying(fn)
