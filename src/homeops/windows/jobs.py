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

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from homeops.core.errors import HomeopsError, OperationalError, UsageError
from homeops.core.logging import get_logger

if TYPE_CHECKING:
    from homeops.core.jobs.types import JobType
    from homeops.core.jobs.worker import JobContext
    from homeops.core.registry import DomainContext
    from homeops.core.ssh.model import SshTarget
    from homeops.core.ssh.pool import SshPool
    from homeops.windows import aloha, aloha_flow, playwright_flow
    from homeops.windows.settings import WindowsSettings

_log = get_logger("windows.jobs")

WINDOWS_EXEC: Final = "windows.exec"
ALOHA_RUN: Final = "aloha.run"
PLAYWRIGHT_RUN: Final = "playwright.run"
# Pulling the VM-side artifacts after the job: per SFTP call.
PULL_TIMEOUT_S: Final = 60.0
# One HTTP request to an Aloha app (the run's wait has the job's timeout).
ALOHA_REQUEST_TIMEOUT_S: Final = 15.0


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _refused(exc: UsageError) -> PydanticCustomError:
    # The direct command's own words, as a pydantic error: the core's enqueue then names the
    # field ("cmd: a multi-line command needs --powershell …"), with no "Value error," prefix.
    return PydanticCustomError("windows_payload", "{reason}", {"reason": str(exc)})


class ExecPayload(_Payload):
    """``windows.exec``: one command line for the VM's shell (or PowerShell source).

    Checked as ``windows exec`` checks its command (:func:`~homeops.windows.exec_flow.wire_command`:
    one line for cmd.exe, no NUL, within Windows' command-line limit), so no job is queued
    that could never run. ``powershell`` comes first: the checks of the others depend on it.
    """

    powershell: bool = Field(default=False, description="cmd is PowerShell source")
    cmd: str = Field(min_length=1, description="Command line, as `windows exec -- CMD`")
    idempotent_check: str | None = Field(
        default=None, min_length=1, description="Skip cmd when this check exits 0"
    )

    @field_validator("cmd", "idempotent_check")
    @classmethod
    def _runnable(cls, value: str | None, info: ValidationInfo) -> str | None:
        from homeops.windows.exec_flow import command_line, wire_command

        powershell = info.data.get("powershell")
        if value is None or not isinstance(powershell, bool):
            return value  # a refused powershell is reported by its own error
        try:
            command_line([value])
            wire_command(value, powershell=powershell)
        except UsageError as exc:
            raise _refused(exc) from None
        return value


class AlohaPayload(_Payload):
    """``aloha.run``: one task for the Aloha client; omitted values are the client's defaults
    (every field is sent anyway, see CONTRACTS.md §2)."""

    task: str = Field(min_length=1, description="What the agent should do")
    max_steps: int | None = Field(default=None, ge=1, le=10_000, description="Step budget")
    selected_screen: int | None = Field(default=None, ge=0, le=64, description="Screen index")
    trace_id: str | None = Field(default=None, min_length=1, description="Taught trajectory")
    wait: bool = Field(
        default=True, description="Succeed when the run ends (needs aloha.client_log_path)"
    )

    @field_validator("task", "trace_id")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("blank")
        return value


class PlaywrightPayload(_Payload):
    """``playwright.run``: open a page in the VM's browser, keep what was asked for."""

    url: str = Field(min_length=1, description="http(s) URL to open")
    screenshot: bool = Field(default=True, description="Keep playwright/screenshot.png")
    trace: bool = Field(default=False, description="Keep playwright/trace.zip")

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        # The same check as `playwright run --url`: scheme, host, port, no control characters.
        from homeops.windows.playwright import check_url

        try:
            return check_url(value)
        except UsageError as exc:
            raise _refused(exc) from None


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
        code = "" if outcome.exit_code is None else str(outcome.exit_code)
        await ctx.artifacts.write_files(
            {
                "ssh/stdout.txt": outcome.stdout,
                "ssh/stderr.txt": outcome.stderr,
                "ssh/exit_code.txt": (code + "\n").encode(),
            },
            type="ssh",
        )
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


class AlohaRunFailed(OperationalError):
    """The run ended with an error in the client's log (final: it would fail again)."""

    retryable = False


def _aloha_handler(
    settings: WindowsSettings, session: VmSession
) -> Callable[[JobContext, AlohaPayload], Awaitable[dict[str, Any]]]:
    async def run_aloha(ctx: JobContext, payload: AlohaPayload) -> dict[str, Any]:
        from homeops.core import http
        from homeops.core.runner import SshRunner
        from homeops.windows import aloha, aloha_flow

        request = aloha.run_task_request(
            payload.task,
            settings.aloha.server_url,
            selected_screen=payload.selected_screen,
            trace_id=payload.trace_id,
            max_steps=payload.max_steps,
        )
        pool = session.pool()
        log = aloha_flow.client_log(pool, session.target, settings.aloha)

        def on_post() -> None:
            # From here another attempt could start the same GUI task a second time.
            ctx.mark_unrepeatable("POST /run_task was sent to the Aloha client")
            ctx.count("aloha_runs_total")

        try:
            async with http.make_client(timeout=ALOHA_REQUEST_TIMEOUT_S) as client:
                result = await aloha_flow.run(
                    client,
                    SshRunner(pool, session.target),
                    settings.aloha,
                    request,
                    log=log,
                    wait=payload.wait,
                    timeout=_timeout(ctx, settings),
                    on_post=on_post,
                )
        except HomeopsError as exc:
            if ctx.unrepeatable is not None and not http.request_may_have_arrived(exc):
                ctx.mark_unrepeatable(None)  # refused or 503: the client never took the task
            raise
        data = _aloha_data(request, result)
        await ctx.artifacts.write_text(
            "aloha/response.json", json.dumps(data, indent=2, sort_keys=True) + "\n", type="aloha"
        )
        await _pull(ctx, session)
        if data["errors"]:
            raise AlohaRunFailed(f"aloha.run: the client logged an error: {data['errors'][0]}")
        return {key: data[key] for key in ("state", "steps", "duration_ms") if key in data}

    return run_aloha


def _aloha_data(request: aloha.RunTaskRequest, result: aloha_flow.RunResult) -> dict[str, Any]:
    """What ``aloha/response.json`` keeps: the request sent, the answer, and the run's end."""
    end = result.end
    errors = list(end.progress.errors) if end is not None else []
    data: dict[str, Any] = {
        "state": "started" if end is None else ("failed" if errors else "finished"),
        "request": request.body(),
        "response": result.response,
        "errors": errors,
    }
    if end is not None:
        data["steps"] = len(end.progress.steps)
        data["duration_ms"] = round(end.duration_s * 1000, 1)
    return data


def _playwright_handler(
    settings: WindowsSettings, state_dir: Path
) -> Callable[[JobContext, PlaywrightPayload], Awaitable[dict[str, Any]]]:
    async def run_playwright(ctx: JobContext, payload: PlaywrightPayload) -> dict[str, Any]:
        import tempfile

        from homeops.windows import playwright_flow

        ws_path = playwright_flow.resolve_ws_path(settings.playwright, state_dir)
        with tempfile.TemporaryDirectory(prefix="homeops-playwright-") as tmp:
            ctx.count("playwright_sessions_total")
            try:
                result = await playwright_flow.run(
                    settings.playwright,
                    ws_path,
                    url=payload.url,
                    out_dir=Path(tmp),
                    screenshot=payload.screenshot,
                    trace=payload.trace,
                    timeout=_timeout(ctx, settings),
                )
            except playwright_flow.PageLoadFailed as exc:
                # The page answered an HTTP error: the job fails, with what it shows kept.
                await _keep_playwright_files(ctx, exc.result)
                raise
            await _keep_playwright_files(ctx, result)
        return {"final_url": result.final_url, "title": result.title, "status": result.status}

    return run_playwright


async def _keep_playwright_files(ctx: JobContext, result: playwright_flow.RunResult) -> None:
    for path in result.files:
        await ctx.artifacts.add_file(f"playwright/{path.name}", path, type="playwright")


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
            ALOHA_RUN,
            AlohaPayload,
            _aloha_handler(settings, session),
            description="One task for the Aloha client (aloha run)",
            close=session.close,
        ),
        JobType(
            PLAYWRIGHT_RUN,
            PlaywrightPayload,
            _playwright_handler(settings, dctx.core.state_dir),
            description="Open a page in the VM's browser (playwright run)",
        ),
    ]
