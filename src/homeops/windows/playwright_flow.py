"""The Playwright server on the VM: ``playwright install``, ``health`` and ``run``.

``install`` works over SSH: the prerequisite check (Node, the ``playwright`` npm package and
its version against this client's), the files under ``C:\\ProgramData\\win-automation\\playwright``
over SFTP, the scheduled task, and a (re)start. ``health`` and ``run`` talk to the server
straight from Linux: a TCP connect to ``playwright.host:port`` (the QEMU forward), then the
Python Playwright client's ``chromium.connect``. Over that connection, screenshots and traces
are written on this side (CONTRACTS.md §3): no copy back.

The ws path: where it comes from is :func:`resolve_ws_path` (settings first, then the local
file ``install`` writes). It is registered with the log masking as soon as it is known, and
messages name the server as ``ws://host:port/***``; Playwright's own error texts, which
quote the full URL, are rewritten before they become our errors.

The Python ``playwright`` package is imported inside the functions that use it: it costs
start-up time every other command would pay. Its client runs a Node driver process of its
own; that process is Playwright's, not a command homeops runs, so it does not go through
core/process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from homeops.core.errors import (
    ConfigError,
    DependencyUnavailable,
    HomeopsError,
    HomeopsTimeout,
    OperationalError,
)
from homeops.core.health import tcp_port_open, wait_listening
from homeops.core.logging import get_logger, register_secret
from homeops.windows import playwright as pw
from homeops.windows.paths import PLAYWRIGHT_DIR
from homeops.windows.powershell import PLAYWRIGHT_TASK
from homeops.windows.vm import run_script

if TYPE_CHECKING:
    from homeops.core.runner import RawRunner
    from homeops.core.ssh.model import SshTarget
    from homeops.core.ssh.pool import SshPool
    from homeops.windows.settings import PlaywrightSection

_log = get_logger("windows.playwright")

# Every install step is a short script; uploads are a few kilobytes.
STEP_TIMEOUT_S: Final = 60.0
UPLOAD_TIMEOUT_S: Final = 60.0
DEFAULT_HEALTH_TIMEOUT_S: Final = 15.0
# How long install waits for the started server's port (Node and Chromium start in seconds).
START_LISTEN_WAIT_S: Final = 30.0
DEFAULT_RUN_TIMEOUT_S: Final = 60.0
SCREENSHOT_NAME: Final = "screenshot.png"
TRACE_NAME: Final = "trace.zip"

Uploader = Callable[[Path, str], Awaitable[None]]
"""Copies a local file to a Windows path on the VM (``C:\\...``)."""


class PlaywrightUnavailable(DependencyUnavailable):
    """The server cannot be used: nothing listens, or the WebSocket connect fails (exit 3)."""


class PlaywrightMissing(DependencyUnavailable):
    """Node or the ``playwright`` npm package is missing on the VM (exit 3)."""


class WsPathMissing(ConfigError):
    """No ws path configured, and ``playwright install`` has not stored one (exit 2)."""

    def __init__(self, local_file: Path) -> None:
        super().__init__(
            "",
            "playwright.ws_path",
            "not set: run `win-automation playwright install` (it stores one in "
            f"{local_file}), or set WIN_AUTOMATION_PLAYWRIGHT_WS_PATH(_FILE)",
        )


# -- the ws path ----------------------------------------------------------------------------


def local_ws_path_file(state_dir: Path) -> Path:
    """Where ``install`` keeps a generated ws path: ``<state_dir>/windows/playwright-ws-path``."""
    return state_dir / pw.LOCAL_WS_PATH_FILE


def read_local_ws_path(path: Path) -> str | None:
    """The ws path stored by ``install`` (registered for masking), or None if there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(str(path), "playwright.ws_path", exc.strerror or str(exc)) from None
    register_secret(text.strip())
    return pw.check_ws_path(text, source=str(path)) if text.strip() else None


def resolve_ws_path(section: PlaywrightSection, state_dir: Path) -> str:
    """The ws path to use, in this order: ``playwright.ws_path`` from the settings (the
    environment ``WIN_AUTOMATION_PLAYWRIGHT_WS_PATH``/``_FILE`` or the config file's
    ``ws_path``/``ws_path_file``), then the local file ``install`` wrote under the state dir.
    :class:`WsPathMissing` (exit 2) when neither has one."""
    if section.ws_path is not None:
        value = section.ws_path.get_secret_value()
        register_secret(value)
        return pw.check_ws_path(value)
    local = local_ws_path_file(state_dir)
    stored = read_local_ws_path(local)
    if stored is None:
        raise WsPathMissing(local)
    return stored


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as mode 0600 (its directory 0700), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- install ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` did. ``ws_path_file`` is the local copy (None: the path came from
    the settings); the ws path itself is never part of a result."""

    node_version: str
    playwright_version: str
    playwright_package: str
    ws_path_generated: bool
    ws_path_file: Path | None
    task: pw.TaskStatus
    started: bool
    files: tuple[str, ...] = field(default=())
    # Whether the server's port answered after the start (None: not started). Windows'
    # Start-ScheduledTask returns before node listens; install waits, bounded, so a health
    # check right after it does not race the server's start.
    listening: bool | None = None


def client_version() -> str:
    """The Python ``playwright`` package's version (what the server must match)."""
    from importlib.metadata import version

    return version("playwright")


def vm_uploader(pool: SshPool, target: SshTarget, *, timeout: float = UPLOAD_TIMEOUT_S) -> Uploader:
    """An :data:`Uploader` over the pool's SFTP."""
    from homeops.windows.paths import sftp_path

    async def upload(local: Path, remote: str) -> None:
        await pool.put(target, local, sftp_path(remote), timeout=timeout)

    return upload


async def check_prerequisites(runner: RawRunner, *, client: str | None = None) -> pw.Prerequisites:
    """Node and the npm package on the VM; :class:`PlaywrightMissing` naming what is missing,
    :class:`~homeops.windows.playwright.PlaywrightVersionMismatch` when its major.minor is
    not the client's (both exit 3)."""
    done = await run_script(runner, pw.prerequisites_script(), timeout=STEP_TIMEOUT_S)
    found = pw.parse_prerequisites(done.stdout_text)
    missing = found.missing()
    if missing:
        npm = f"`npm install playwright@{client or client_version()}` in {PLAYWRIGHT_DIR}"
        # Name only what is missing: "install Node.js" beside a present node misleads.
        todo = f"install Node.js LTS, then {npm}" if found.node_version is None else npm
        raise PlaywrightMissing(
            "playwright install: missing on the VM: " + " and ".join(missing) + f" ({todo})"
        )
    assert found.node_version is not None and found.playwright_version is not None
    client = client or client_version()
    if not pw.compatible(pw.parse_version(found.playwright_version), pw.parse_version(client)):
        raise pw.PlaywrightVersionMismatch(found.playwright_version, client)
    return found


@contextlib.contextmanager
def _staging() -> Iterator[Path]:
    # A private directory (0700): ws_path.txt is staged here before it is uploaded.
    with tempfile.TemporaryDirectory(prefix="homeops-playwright-") as tmp:
        yield Path(tmp)


async def install(
    runner: RawRunner,
    upload: Uploader,
    section: PlaywrightSection,
    *,
    state_dir: Path,
    start: bool = True,
    client: str | None = None,
    token_bytes: Callable[[int], bytes] | None = None,
    listen_wait_s: float = START_LISTEN_WAIT_S,
) -> InstallResult:
    """Install the Playwright server on the VM (safe to run again).

    The ws path is the configured one, else the local one from an earlier install, else a
    new one (stored in ``<state_dir>/windows/playwright-ws-path``, 0600). ``token_bytes`` is
    the random source for a new one (tests); ``client`` the client version to match.
    With ``start``, waits up to ``listen_wait_s`` for the server's port (``listening``).
    """
    log = _log.bind(port=section.port)
    prereq = await check_prerequisites(runner, client=client)
    log.info(
        "install",
        "prerequisites found",
        node=prereq.node_version,
        playwright=prereq.playwright_version,
    )

    generated = False
    local_file: Path | None = None
    if section.ws_path is not None:
        ws_path = pw.check_ws_path(section.ws_path.get_secret_value())
    else:
        local_file = local_ws_path_file(state_dir)
        stored = read_local_ws_path(local_file)
        if stored is None:
            ws_path = pw.generate_ws_path(token_bytes) if token_bytes else pw.generate_ws_path()
            generated = True
        else:
            ws_path = stored
    register_secret(ws_path)

    done = await run_script(runner, pw.make_dir_script(), timeout=STEP_TIMEOUT_S)
    pw.parse_step(done.stdout_text, "dir")
    uploads = {
        pw.LAUNCH_SERVER_PATH: pw.launch_server_js(),
        pw.WS_PATH_PATH: ws_path + "\n",
        pw.INSTALL_SCRIPT_PATH: pw.install_script(section.port),
    }
    with _staging() as staging:
        for remote, text in uploads.items():
            local = staging / remote.rsplit("\\", 1)[1]
            local.write_text(text, encoding="utf-8")
            await upload(local, remote)
    log.info("install", "files written", dir=PLAYWRIGHT_DIR)
    # Stored locally only once the VM has it: a failed upload leaves no path nobody serves.
    if generated and local_file is not None:
        write_private(local_file, ws_path + "\n")
        log.info("install", "generated a ws path", stored_in=str(local_file))

    done = await run_script(runner, pw.run_install_script(), timeout=STEP_TIMEOUT_S)
    pw.parse_step(done.stdout_text, "install")
    log.info("install", "scheduled task registered", task=PLAYWRIGHT_TASK)
    listening: bool | None = None
    if start:
        done = await run_script(runner, pw.restart_task_script(), timeout=STEP_TIMEOUT_S)
        pw.parse_step(done.stdout_text, "start")
        listening = await wait_listening(section.host, section.port, wait_s=listen_wait_s)
        log.info("install", "server listening" if listening else "server not listening yet")
    queried = await run_script(runner, pw.task_state_script(), timeout=STEP_TIMEOUT_S)
    task = pw.parse_task_state(queried.stdout_text)
    return InstallResult(
        node_version=prereq.node_version or "",
        playwright_version=prereq.playwright_version or "",
        playwright_package=prereq.playwright_package or "playwright",
        ws_path_generated=generated,
        ws_path_file=local_file,
        task=task,
        started=start,
        files=tuple(uploads),
        listening=listening,
    )


# -- connecting ------------------------------------------------------------------------------


def _scrub(text: str, ws_path: str) -> str:
    # Playwright quotes the whole endpoint, secret included, in its messages (and the call
    # log after them repeats it); keep the first line, the secret masked.
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.replace(ws_path, "***")


def _connect_error(exc: Exception, section: PlaywrightSection, ws_path: str) -> HomeopsError:
    text = str(exc)
    mismatch = pw.parse_version_mismatch(text)
    if mismatch is not None:
        return mismatch
    shown = pw.shown_ws_url(section.host, section.port)
    reason = _scrub(text, ws_path).removeprefix("BrowserType.connect: ")
    hint = ""
    if " 400 " in f" {text} " or "400 Bad Request" in text:
        hint = " (wrong ws path? compare playwright.ws_path with ws_path.txt on the VM)"
    return PlaywrightUnavailable(
        f"playwright server {shown}: WebSocket connect failed: {reason}{hint}"
    )


async def _require_listening(section: PlaywrightSection, timeout: float) -> None:
    if not await tcp_port_open(section.host, section.port, timeout=timeout):
        raise PlaywrightUnavailable(
            f"playwright server {pw.shown_ws_url(section.host, section.port)}: nothing listens "
            f"on {section.host}:{section.port} (is the task {PLAYWRIGHT_TASK} running, and "
            "the port forwarded?)"
        )


@contextlib.asynccontextmanager
async def _browser(
    section: PlaywrightSection,
    ws_path: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None,
) -> Any:  # noqa: ANN401 - playwright's Browser, typed where it is imported
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    url = pw.ws_url(section.host, section.port, ws_path)
    async with async_playwright() as p:
        try:
            browser = await p.chromium.connect(
                url, timeout=pw.timeout_ms(timeout), headers=dict(headers) if headers else None
            )
        except PlaywrightError as exc:
            raise _connect_error(exc, section, ws_path) from None
        try:
            yield browser
        finally:
            with contextlib.suppress(PlaywrightError):
                await browser.close()


@dataclass(frozen=True)
class HealthReport:
    """A healthy server: where it is, and what it runs."""

    host: str
    port: int
    browser_version: str
    client_version: str
    duration_ms: float


async def health(
    section: PlaywrightSection,
    ws_path: str,
    *,
    timeout: float = DEFAULT_HEALTH_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> HealthReport:
    """The port listens AND a real WebSocket connect succeeds, else :class:`PlaywrightUnavailable`
    (exit 3); a version mismatch is :class:`~homeops.windows.playwright.PlaywrightVersionMismatch`
    naming both. ``headers`` go with the WebSocket handshake."""
    register_secret(ws_path)
    start = clock()
    await _require_listening(section, timeout)
    async with _browser(section, ws_path, timeout=timeout, headers=headers) as browser:
        version = str(browser.version)
    report = HealthReport(
        section.host, section.port, version, client_version(), (clock() - start) * 1000.0
    )
    _log.info(
        "health",
        "playwright server healthy",
        server=pw.shown_ws_url(section.host, section.port),
        browser=version,
        duration_ms=report.duration_ms,
    )
    return report


# -- run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One page opened: where it ended, and the files written in ``out_dir``."""

    url: str
    final_url: str
    title: str
    status: int | None
    screenshot: Path | None
    trace: Path | None
    duration_ms: float
    status_text: str = ""

    @property
    def files(self) -> tuple[Path, ...]:
        """The files written (screenshot, trace), in that order."""
        return tuple(p for p in (self.screenshot, self.trace) if p is not None)

    @property
    def loaded(self) -> bool:
        """Whether the page loaded: no HTTP error (4xx/5xx) on the main response."""
        return self.status is None or self.status < 400


class PageLoadFailed(OperationalError):
    """The page answered an HTTP error (4xx/5xx): exit 1, the files still written.

    ``result`` is the run as it ended. A 5xx (or 408/429) may pass, so a job retries it;
    another 4xx would answer the same again.
    """

    def __init__(self, result: RunResult) -> None:
        status = result.status or 0
        reason = f" {result.status_text}" if result.status_text else ""
        super().__init__(
            f"playwright run {result.url}: the page answered HTTP {status}{reason} "
            f"(final URL {result.final_url})"
        )
        self.result = result
        self.retryable = status >= 500 or status in (408, 429)


async def run(
    section: PlaywrightSection,
    ws_path: str,
    *,
    url: str,
    out_dir: Path,
    screenshot: bool = True,
    trace: bool = False,
    timeout: float = DEFAULT_RUN_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> RunResult:
    """Open ``url`` in the VM's browser; write ``screenshot.png`` / ``trace.zip`` into
    ``out_dir`` (created when a file is asked for). ``timeout`` bounds the whole run:
    :class:`HomeopsTimeout` (exit 4). Unreachable server: exit 3; a page that fails to load:
    :class:`OperationalError` (exit 1), and :class:`PageLoadFailed` when it answered an HTTP
    error (its files are written first)."""
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    url = pw.check_url(url)
    register_secret(ws_path)
    start = clock()
    shown = pw.shown_ws_url(section.host, section.port)
    try:
        async with asyncio.timeout(timeout):
            await _require_listening(section, timeout)
            async with _browser(section, ws_path, timeout=timeout, headers=None) as browser:
                result = await _open_page(
                    browser, url, out_dir, screenshot=screenshot, trace=trace, timeout=timeout
                )
    except TimeoutError:
        raise HomeopsTimeout(f"playwright run {url}: timed out after {timeout:g}s") from None
    except PlaywrightTimeout as exc:
        raise HomeopsTimeout(
            f"playwright run {url}: timed out after {timeout:g}s: {_scrub(str(exc), ws_path)}"
        ) from None
    except PlaywrightError as exc:
        raise OperationalError(
            f"playwright run {url}: {_scrub(str(exc), ws_path)} (server {shown})"
        ) from None
    final_url, title, status, status_text, shot, trace_path = result
    done = RunResult(
        url, final_url, title, status, shot, trace_path, (clock() - start) * 1000.0, status_text
    )
    emit = _log.info if done.loaded else _log.warn
    emit(
        "run",
        "page opened" if done.loaded else "page answered an HTTP error",
        url=url,
        final_url=final_url,
        status=status,
        files=len(done.files),
        duration_ms=done.duration_ms,
    )
    if not done.loaded:
        raise PageLoadFailed(done)
    return done


async def _open_page(
    browser: Any,  # noqa: ANN401 - playwright's Browser
    url: str,
    out_dir: Path,
    *,
    screenshot: bool,
    trace: bool,
    timeout: float,
) -> tuple[str, str, int | None, str, Path | None, Path | None]:
    if screenshot or trace:
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    context = await browser.new_context()
    try:
        # Every step (the screenshot too) may take the run's time, not Playwright's 30 s.
        context.set_default_timeout(pw.timeout_ms(timeout))
        context.set_default_navigation_timeout(pw.timeout_ms(timeout))
        if trace:
            await context.tracing.start(screenshots=True, snapshots=True)
        page = await context.new_page()
        response = await page.goto(url, timeout=pw.timeout_ms(timeout), wait_until="load")
        title = str(await page.title())
        final_url = str(page.url)
        shot: Path | None = None
        if screenshot:
            shot = out_dir / SCREENSHOT_NAME
            await page.screenshot(path=shot, full_page=True)
        trace_path: Path | None = None
        if trace:
            trace_path = out_dir / TRACE_NAME
            await context.tracing.stop(path=trace_path)
    finally:
        await context.close()
    status = int(response.status) if response is not None else None
    status_text = str(response.status_text) if response is not None else ""
    return final_url, title, status, status_text, shot, trace_path
