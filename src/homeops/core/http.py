"""The only place homeops makes HTTP requests: an httpx client factory and a retrying send.

Retry policy (seed 001): 502/503/504 and transport errors are retried, 4xx and every other
answer are returned as they are. A request that may have reached the server (read timeout,
dropped connection mid-response) is retried only for idempotent methods, or when the caller
says the request is idempotent: retrying ``POST /run_task`` blindly could start a task twice.
Tests pass ``transport=httpx.MockTransport(...)`` or talk to a real server on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

import httpx

from homeops.core.errors import HomeopsTimeout, HttpUnavailable
from homeops.core.logging import get_logger, timed
from homeops.core.retry import (
    SEED_POLICY,
    RetryPolicy,
    Sleep,
    is_retryable_http_status,
    retry_async,
)

_log = get_logger("core.http")

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Errors raised before a single byte of the request can have been processed by the server.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RetryableStatus(Exception):
    """Raised inside the retry loop for a 502/503/504 answer, to trigger another attempt."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def is_retryable_http_error(exc: BaseException, *, idempotent: bool) -> bool:
    """Pure predicate: should this exception from one attempt lead to another attempt?"""
    if isinstance(exc, RetryableStatus):
        return True
    if isinstance(exc, _NOT_SENT):
        return True
    if isinstance(exc, httpx.TransportError):
        return idempotent
    return False


def request_may_have_arrived(exc: BaseException) -> bool:
    """Whether a failed :func:`request` may still have reached the server.

    False only when the error proves nothing was processed: the connection was never made
    (refused, connect or pool timeout) or the server said 502/503/504. A caller whose request
    is not idempotent (``POST /run_task``) must not send it again when this is True.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _NOT_SENT):
            return False
        if isinstance(current, httpx.TransportError):
            return True
        current = current.__cause__
    # HttpUnavailable for a 502/503/504 answer is raised "from None": no cause, not started.
    return not isinstance(exc, HttpUnavailable)


def make_client(
    *,
    base_url: str = "",
    timeout: float = 10.0,
    connect_timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with explicit timeouts; never reads proxy settings from env.

    ``trust_env=False``: a homelab tool talks to LAN/loopback peers and a stray
    ``HTTP_PROXY`` in a service's environment must not reroute those requests.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        transport=transport,
        headers=dict(headers or {}),
        trust_env=False,
        follow_redirects=False,
    )


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    policy: RetryPolicy = SEED_POLICY,
    idempotent: bool | None = None,
    sleep: Sleep = asyncio.sleep,
    **kwargs: Any,  # noqa: ANN401 - passed through to httpx (json=, params=, content=, ...)
) -> httpx.Response:
    """Send with retries; return the final response (any status but 502/503/504).

    Raises :class:`HttpUnavailable` (exit 3) when the peer cannot be reached or keeps
    answering 502/503/504, and :class:`HomeopsTimeout` (exit 4) when it stops answering
    mid-request.
    """
    method = method.upper()
    safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
    target = str(client.base_url.join(url)) if client.base_url else url
    attempt = 0

    async def once() -> httpx.Response:
        nonlocal attempt
        attempt += 1
        elapsed = timed()
        response = await client.request(method, url, **kwargs)
        _log.debug(
            "request",
            "http answer",
            method=method,
            url=target,
            status=response.status_code,
            attempt=attempt,
            duration_ms=elapsed(),
        )
        if is_retryable_http_status(response.status_code):
            await response.aread()
            raise RetryableStatus(response)
        return response

    try:
        return await retry_async(
            once,
            policy=policy,
            retry_if=lambda exc: is_retryable_http_error(exc, idempotent=safe),
            op="http.request",
            sleep=sleep,
        )
    except RetryableStatus as exc:
        status = exc.response.status_code
        raise HttpUnavailable(
            f"{method} {target}: HTTP {status} after {attempt} attempt(s)"
        ) from None
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise HttpUnavailable(
            f"{method} {target}: connect timed out ({attempt} attempt(s))"
        ) from exc
    except httpx.TimeoutException as exc:
        raise HomeopsTimeout(
            f"{method} {target}: no answer in time ({type(exc).__name__})"
        ) from exc
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise HttpUnavailable(f"{method} {target}: {reason} ({attempt} attempt(s))") from exc
