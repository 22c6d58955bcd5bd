"""Aloha orchestration: health of both apps, start a run, stop it, follow it to its end.

Seams come in as parameters: an ``httpx.AsyncClient`` from :func:`homeops.core.http.make_client`
(tests pass ``transport=`` or point it at the loopback fake), a
:class:`~homeops.core.runner.RawRunner` on the VM for the desktop-locked check, and a
:class:`ClientLog` for the client's log. Retries are the HTTP seam's: 502/503/504 and
transport errors, and ``POST /run_task`` is sent with ``idempotent=False``, so a request that
may have reached the client is never sent again (a second one could start a second task).

The client has no status route (CONTRACTS.md §2): the end of a run is read from its log,
``process_input thread finished.``, following the file from where it ended before the run
was posted, so an earlier run's lines never count.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from homeops.core.errors import (
    DependencyUnavailable,
    HomeopsError,
    HomeopsTimeout,
    OperationalError,
    UsageError,
)
from homeops.core.logging import get_logger, timed
from homeops.core.retry import SEED_POLICY, RetryPolicy, Sleep
from homeops.windows import aloha

if TYPE_CHECKING:
    import httpx

    from homeops.core.runner import RawRunner
    from homeops.core.ssh.model import SshTarget
    from homeops.core.ssh.pool import SshPool
    from homeops.windows.settings import AlohaSection

_log = get_logger("windows.aloha")

DEFAULT_WAIT_TIMEOUT_S: Final = 1800.0
DEFAULT_POLL_INTERVAL_S: Final = 1.0
# One SFTP read of the log, connecting included (the wait's own deadline still applies).
LOG_READ_TIMEOUT_S: Final = 30.0
# A best-effort /stop after a timed-out or cancelled wait.
STOP_ON_ABANDON_S: Final = 5.0
WAIT_NEEDS_LOG: Final = (
    "--wait needs aloha.client_log_path (the Windows path of the client's log, e.g. "
    "WIN_AUTOMATION_ALOHA_CLIENT_LOG_PATH): the client reports a run's end only there"
)


class AlohaBusy(OperationalError):
    """``POST /run_task`` answered 409: another task is running (exit 1)."""

    def __init__(self) -> None:
        super().__init__("aloha run: a task is already running on the client (HTTP 409)")


class AlohaRejected(OperationalError):
    """The client refused the request (400); sending it again would be refused again."""

    retryable = False


class ClientLog(Protocol):
    """The client's log file on the VM, read whole (the flow keeps its own offset)."""

    @property
    def where(self) -> str:
        """The file, for messages."""
        ...

    async def read(self, *, timeout: float) -> bytes:
        """The whole file; :class:`OperationalError` if it cannot be read."""
        ...


@dataclass(frozen=True)
class SftpClientLog:
    """:class:`ClientLog` over the SSH pool's SFTP (``aloha.client_log_path``)."""

    pool: SshPool
    target: SshTarget
    windows_path: str

    @property
    def where(self) -> str:
        """The Windows path."""
        return self.windows_path

    async def read(self, *, timeout: float) -> bytes:
        """Copy the log here over SFTP and return its bytes."""
        from homeops.windows.paths import sftp_path

        remote = sftp_path(self.windows_path)
        with tempfile.TemporaryDirectory(prefix="homeops-aloha-log-") as tmp:
            local = Path(tmp) / "client.log"
            await self.pool.get(self.target, remote, local, timeout=timeout)
            return local.read_bytes()


def client_log(pool: SshPool, target: SshTarget, settings: AlohaSection) -> SftpClientLog | None:
    """The configured client log over ``pool``, or None when ``aloha.client_log_path`` is unset."""
    path = settings.client_log_path
    if path is None or not path.strip():
        return None
    from homeops.windows.paths import sftp_path

    sftp_path(path)  # a relative or malformed path is a usage error now, not mid-run
    return SftpClientLog(pool, target, path)


# -- health ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlohaHealth:
    """Both apps: the server must show its marker, the client must answer at all."""

    server: aloha.ServerHealth
    client: aloha.ClientHealth
    server_url: str
    client_url: str

    @property
    def ok(self) -> bool:
        """Both usable."""
        return self.server.ok and self.client.reachable


async def server_health(
    client: httpx.AsyncClient,
    settings: AlohaSection,
    *,
    policy: RetryPolicy = SEED_POLICY,
    sleep: Sleep = asyncio.sleep,
) -> aloha.ServerHealth:
    """``GET /`` of the server: healthy with a 200 carrying the marker; unreachable is not ok."""
    from homeops.core import http

    url = aloha.root_url(settings.server_url)
    try:
        response = await http.request(client, "GET", url, policy=policy, sleep=sleep)
    except (DependencyUnavailable, HomeopsTimeout) as exc:
        return aloha.ServerHealth(False, None, f"unreachable: {exc.message}")
    return aloha.parse_server_root(response.status_code, response.text)


async def client_health(
    client: httpx.AsyncClient,
    settings: AlohaSection,
    *,
    policy: RetryPolicy = SEED_POLICY,
    sleep: Sleep = asyncio.sleep,
) -> aloha.ClientHealth:
    """Whether the client answers ``GET /`` at all (its expected answer is 404)."""
    from homeops.core import http

    url = aloha.root_url(settings.client_url)
    try:
        response = await http.request(client, "GET", url, policy=policy, sleep=sleep)
    except (DependencyUnavailable, HomeopsTimeout) as exc:
        return aloha.ClientHealth(False, None, f"unreachable: {exc.message}")
    return aloha.classify_client_root(response.status_code)


async def health(
    client: httpx.AsyncClient,
    settings: AlohaSection,
    *,
    policy: RetryPolicy = SEED_POLICY,
    sleep: Sleep = asyncio.sleep,
) -> AlohaHealth:
    """Both apps, checked at the same time."""
    server, answer = await asyncio.gather(
        server_health(client, settings, policy=policy, sleep=sleep),
        client_health(client, settings, policy=policy, sleep=sleep),
    )
    return AlohaHealth(
        server, answer, aloha.root_url(settings.server_url), aloha.root_url(settings.client_url)
    )


# -- run and stop ---------------------------------------------------------------------------


async def run_task(
    client: httpx.AsyncClient,
    runner: RawRunner,
    settings: AlohaSection,
    request: aloha.RunTaskRequest,
    *,
    policy: RetryPolicy = SEED_POLICY,
    sleep: Sleep = asyncio.sleep,
    on_post: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Start ``request`` on the client; its JSON answer (for ``aloha/response.json``).

    The desktop must be unlocked (:class:`~homeops.windows.vm.DesktopLocked`, exit 1,
    ``state=blocked``); 409 is :class:`AlohaBusy`, 400 :class:`AlohaRejected`, any other
    answer an :class:`OperationalError` naming it. ``on_post`` is called just before the
    POST goes out: from then on a retry of the caller's own could start a second task.
    """
    from homeops.core import http
    from homeops.windows.vm import require_unlocked

    await require_unlocked(runner, "aloha run")
    url = aloha.app_url(settings.client_url, "/run_task")
    if on_post is not None:
        on_post()
    elapsed = timed()
    response = await http.request(
        client, "POST", url, json=request.body(), idempotent=False, policy=policy, sleep=sleep
    )
    answer = aloha.parse_run_task(response.status_code, response.text)
    _log.info(
        "run_task",
        "client answered",
        outcome=str(answer.outcome),
        status=answer.status_code,
        max_steps=request.max_steps,
        trace_id=request.trace_id,
        duration_ms=elapsed(),
    )
    match answer.outcome:
        case aloha.RunTaskOutcome.STARTED:
            assert answer.data is not None  # STARTED means a JSON object was parsed
            return answer.data
        case aloha.RunTaskOutcome.BUSY:
            raise AlohaBusy()
        case aloha.RunTaskOutcome.REJECTED:
            raise AlohaRejected(f"aloha run: the client refused the task: {answer.message}")
        case aloha.RunTaskOutcome.ERROR:
            raise OperationalError(
                f"aloha run: POST {url}: HTTP {answer.status_code}: {answer.message}"
            )


async def stop(
    client: httpx.AsyncClient,
    settings: AlohaSection,
    *,
    policy: RetryPolicy = SEED_POLICY,
    sleep: Sleep = asyncio.sleep,
) -> aloha.StopAnswer:
    """``POST /stop``: STOPPING (the run ends about a second later) or IDLE (nothing runs);
    another answer is an :class:`OperationalError`. Safe to repeat."""
    from homeops.core import http

    url = aloha.app_url(settings.client_url, "/stop")
    # A repeated /stop only repeats the signal, so a maybe-delivered one may be re-sent.
    response = await http.request(client, "POST", url, idempotent=True, policy=policy, sleep=sleep)
    answer = aloha.parse_stop(response.status_code, response.text)
    if answer.outcome is aloha.StopOutcome.ERROR:
        raise OperationalError(
            f"aloha stop: POST {url}: HTTP {answer.status_code}: {answer.message}"
        )
    return answer


# -- following the log ----------------------------------------------------------------------


def _utf16(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff"))


def _complete_end(data: bytes, start: int) -> int:
    """Where the last complete line after ``start`` ends (``start`` if there is none): a
    line still being written is read at the next poll, whole."""
    if _utf16(data):
        newline = b"\n\x00" if data.startswith(b"\xff\xfe") else b"\x00\n"
        end = start
        at = data.find(newline, start)
        while at != -1:
            if (at - start) % 2 == 0:
                end = at + 2
            at = data.find(newline, at + 1)
        return end
    at = data.rfind(b"\n", start)
    return start if at == -1 else at + 1


async def log_size(log: ClientLog, *, timeout: float = LOG_READ_TIMEOUT_S) -> int:
    """The log's size now: where a run posted next starts to be followed.

    A log that cannot be read fails here, before anything is started, with what to check.
    """
    try:
        data = await log.read(timeout=timeout)
    except HomeopsError as exc:
        raise type(exc)(
            f"cannot read the Aloha client's log {log.where} (aloha.client_log_path): {exc.message}"
        ) from exc
    return len(data)


@dataclass(frozen=True)
class RunEnd:
    """A followed run that ended: what its log said, and how long it was followed."""

    progress: aloha.RunProgress
    duration_s: float


async def wait_for_run_end(
    log: ClientLog,
    start: int,
    *,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> RunEnd:
    """Follow the log from byte ``start`` (:func:`log_size` before the run was posted) until
    the run it shows starting has finished; :class:`HomeopsTimeout` (exit 4) after ``timeout``.

    The log is polled every ``poll_interval`` seconds. A log shorter than ``start`` was
    truncated (the client restarted) and is followed from its beginning. A read that fails
    because the VM cannot be reached is tried again at the next poll, within the timeout.
    """
    if poll_interval <= 0 or timeout <= 0:
        raise ValueError("timeout and poll_interval must be > 0")
    began = clock()
    deadline = began + timeout
    offset = start
    progress = aloha.RunProgress()
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise HomeopsTimeout(
                f"aloha run: no end of the run in the client's log {log.where} after "
                f"{timeout:g}s ({'running' if progress.started else 'never started'}, "
                f"{len(progress.steps)} step(s) seen)"
            )
        try:
            data = await log.read(timeout=min(remaining, LOG_READ_TIMEOUT_S))
        except (DependencyUnavailable, HomeopsTimeout) as exc:
            _log.warn("wait", "could not read the client's log; trying again", err=exc)
            data = None
        if data is not None:
            if len(data) < offset:
                _log.warn("wait", "the client's log shrank; following it from the start")
                offset = 0
            end = _complete_end(data, offset)
            if end > offset:
                chunk = data[offset:end]
                if _utf16(data) and offset > 0:
                    chunk = data[:2] + chunk  # the BOM tells the decoder the byte order
                progress = aloha.follow_run(
                    progress, aloha.parse_log_lines(aloha.decode_log(chunk))
                )
                offset = end
            if progress.finished:
                duration = clock() - began
                _log.info(
                    "wait", "run ended", steps=len(progress.steps), duration_ms=duration * 1000
                )
                return RunEnd(progress, duration)
        await sleep(min(poll_interval, max(deadline - clock(), 0.0)))


# -- the whole run --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """A started run: the client's JSON answer, and its end when it was waited for."""

    response: dict[str, Any]
    request: aloha.RunTaskRequest
    end: RunEnd | None = None


async def run(
    client: httpx.AsyncClient,
    runner: RawRunner,
    settings: AlohaSection,
    request: aloha.RunTaskRequest,
    *,
    log: ClientLog | None,
    wait: bool,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    policy: RetryPolicy = SEED_POLICY,
    sleep: Sleep = asyncio.sleep,
    on_post: Callable[[], None] | None = None,
) -> RunResult:
    """Start ``request`` and, with ``wait``, follow it to its end in ``log``.

    ``wait`` without a log is a :class:`UsageError` before anything is sent. A wait that
    times out or is cancelled sends ``/stop`` (best effort), so no GUI run is left behind.
    ``on_post``: see :func:`run_task`.
    """
    if wait and log is None:
        raise UsageError(WAIT_NEEDS_LOG)
    start = await log_size(log) if wait and log is not None else 0
    response = await run_task(
        client, runner, settings, request, policy=policy, sleep=sleep, on_post=on_post
    )
    if not wait or log is None:
        return RunResult(response, request)
    try:
        end = await wait_for_run_end(log, start, timeout=timeout, poll_interval=poll_interval)
    except (HomeopsTimeout, asyncio.CancelledError):
        await asyncio.shield(_stop_quietly(client, settings))
        raise
    return RunResult(response, request, end)


async def _stop_quietly(client: httpx.AsyncClient, settings: AlohaSection) -> None:
    from homeops.core.retry import NO_RETRY

    with contextlib.suppress(HomeopsError, TimeoutError):
        async with asyncio.timeout(STOP_ON_ABANDON_S):
            answer = await stop(client, settings, policy=NO_RETRY)
            _log.info("stop", "sent /stop to an abandoned run", outcome=str(answer.outcome))
