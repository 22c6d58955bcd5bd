"""The windows job types on the core queue: ``windows.exec``, ``aloha.run``, ``playwright.run``.

Each is a payload model plus an async handler. The handlers of one worker share one SSH pool
to the VM (opened on first use, closed when the worker stops), so a thousand small jobs cost
one SSH connection, not a thousand. Artifacts (seed 001): ``windows.exec`` →
``ssh/stdout.txt``, ``ssh/stderr.txt``, ``ssh/exit_code.txt``; ``aloha.run`` →
``aloha/response.json``; ``playwright.run`` → ``playwright/screenshot.png``,
``playwright/trace.zip``; and whatever the job left on the VM under its artifact directory
there, as ``windows/…``. Cancelling a job cancels its handler, and the pool kills the remote
command it was running.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from homeops.core.logging import get_logger

if TYPE_CHECKING:
    from homeops.core.jobs.types import JobType
    from homeops.core.jobs.worker import JobContext
    from homeops.core.registry import DomainContext
    from homeops.core.ssh.model import SshTarget
    from homeops.core.ssh.pool import SshPool
    from homeops.windows.settings import WindowsSettings

_log = get_logger("windows.jobs")

WINDOWS_EXEC: Final = "windows.exec"
ALOHA_RUN: Final = "aloha.run"
PLAYWRIGHT_RUN: Final = "playwright.run"
# Pulling the VM-side artifacts after the job: per SFTP call.
PULL_TIMEOUT_S: Final = 60.0


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExecPayload(_Payload):
    """``windows.exec``: one command line for the VM's shell (or PowerShell source)."""

    cmd: str = Field(min_length=1, description="Command line, as `windows exec -- CMD`")
    powershell: bool = Field(default=False, description="cmd is PowerShell source")
    idempotent_check: str | None = Field(
        default=None, min_length=1, description="Skip cmd when this check exits 0"
    )


class PlaywrightPayload(_Payload):
    """``playwright.run``: open a page in the VM's browser, keep what was asked for."""

    url: str = Field(min_length=1, description="http(s) URL to open")
    screenshot: bool = Field(default=True, description="Keep playwright/screenshot.png")
    trace: bool = Field(default=False, description="Keep playwright/trace.zip")

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        from homeops.windows.playwright import check_url

        return check_url(value)


class VmSession:
    """The SSH pool every windows job of one worker shares, opened on first use."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self._pool: SshPool | None = None

    def pool(self) -> SshPool:
        """The shared pool (created inside the worker's event loop, at the first job)."""
        if self._pool is None:
            from homeops.core.ssh import SshPool

            self._pool = SshPool()
        return self._pool

    async def close(self) -> None:
        """Close the pool (waiting for kills it still runs); a later job opens a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _timeout(ctx: JobContext, settings: WindowsSettings) -> float:
    return ctx.job.timeout_s or settings.hatchet.job_timeout


async def _pull(ctx: JobContext, session: VmSession) -> None:
    """The job's VM-side files into its manifest; a failure is logged, not the job's fate."""
    from homeops.core.errors import HomeopsError
    from homeops.windows.vm_artifacts import pull_job_artifacts

    try:
        pulled = await pull_job_artifacts(
            session.pool(), session.target, ctx.job.id, ctx.artifacts, timeout=PULL_TIMEOUT_S
        )
    except HomeopsError as exc:
        ctx.log.warn("artifacts", "could not pull the job's files from the VM", err=exc)
        return
    if pulled.files:
        ctx.log.info("artifacts", "pulled the job's files from the VM", files=len(pulled.files))


def _exec_handler(
    settings: WindowsSettings, session: VmSession
) -> Callable[[JobContext, ExecPayload], Awaitable[dict[str, Any]]]:
    async def run_exec(ctx: JobContext, payload: ExecPayload) -> dict[str, Any]:
        from homeops.windows.exec_flow import ExecRequest, ExecState, RemoteCommandFailed, execute
        from homeops.windows.vm import DesktopLocked

        request = ExecRequest(
            payload.cmd, payload.powershell, payload.idempotent_check, _timeout(ctx, settings)
        )
        outcome = await execute(session.pool(), session.target, request)
        artifacts = ctx.artifacts
        await artifacts.write_bytes("ssh/stdout.txt", outcome.stdout, type="ssh")
        await artifacts.write_bytes("ssh/stderr.txt", outcome.stderr, type="ssh")
        code = "" if outcome.exit_code is None else str(outcome.exit_code)
        await artifacts.write_text("ssh/exit_code.txt", code + "\n", type="ssh")
        await _pull(ctx, session)
        match outcome.state:
            case ExecState.BLOCKED:
                raise DesktopLocked("windows.exec: the Windows desktop is locked (state=blocked)")
            case ExecState.FAILED:
                raise RemoteCommandFailed(outcome.exit_code or 0)
            case ExecState.SUCCEEDED | ExecState.SKIPPED:
                pass
        return {"state": str(outcome.state), "exit_code": outcome.exit_code}

    return run_exec


def _playwright_handler(
    settings: WindowsSettings, state_dir: Path
) -> Callable[[JobContext, PlaywrightPayload], Awaitable[dict[str, Any]]]:
    async def run_playwright(ctx: JobContext, payload: PlaywrightPayload) -> dict[str, Any]:
        import tempfile

        from homeops.windows import playwright_flow

        ws_path = playwright_flow.resolve_ws_path(settings.playwright, state_dir)
        with tempfile.TemporaryDirectory(prefix="homeops-playwright-") as tmp:
            ctx.count("playwright_sessions_total")
            result = await playwright_flow.run(
                settings.playwright,
                ws_path,
                url=payload.url,
                out_dir=Path(tmp),
                screenshot=payload.screenshot,
                trace=payload.trace,
                timeout=_timeout(ctx, settings),
            )
            for path in result.files:
                await ctx.artifacts.add_file(f"playwright/{path.name}", path, type="playwright")
        return {"final_url": result.final_url, "title": result.title, "status": result.status}

    return run_playwright


def windows_job_types(dctx: DomainContext) -> list[JobType[Any]]:
    """The domain's job types, their handlers sharing one VM session."""
    from homeops.core.jobs.types import JobType
    from homeops.windows.target import vm_target

    settings: WindowsSettings = dctx.settings("windows")
    session = VmSession(vm_target(settings.windows))
    return [
        JobType(
            WINDOWS_EXEC,
            ExecPayload,
            _exec_handler(settings, session),
            description="One command on the VM (windows exec)",
            close=session.close,
        ),
        JobType(
            PLAYWRIGHT_RUN,
            PlaywrightPayload,
            _playwright_handler(settings, dctx.core.state_dir),
            description="Open a page in the VM's browser (playwright run)",
        ),
    ]
