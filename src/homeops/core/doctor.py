"""The core's own doctor checks: state dir, job store, and the external tools homeops drives."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from homeops.core import process
from homeops.core.errors import ToolMissing
from homeops.core.health import Check, CheckOutcome, Status
from homeops.core.registry import DomainContext


@dataclass(frozen=True)
class Tool:
    """An external program, the argv that prints its version, and whether output is stderr."""

    name: str
    version_args: tuple[str, ...]
    purpose: str


TOOLS: tuple[Tool, ...] = (
    Tool("ssh", ("-V",), "fleet deploys and the Windows VM"),
    Tool("restic", ("version",), "service backups"),
    Tool("nix", ("--version",), "builds, cache and deploys"),
    Tool("node", ("--version",), "the Playwright server"),
    Tool("git", ("--version",), "build checkouts and fleet repos"),
)


def parse_version_line(output: str) -> str:
    """First non-empty line of a ``--version`` output, trimmed to something table-sized."""
    for line in output.splitlines():
        if line.strip():
            return line.strip()[:80]
    return "unknown version"


def tool_probe(tool: Tool, timeout: float) -> Callable[[], Awaitable[CheckOutcome]]:
    """A probe that finds ``tool`` on PATH and reads its version."""

    async def probe() -> CheckOutcome:
        try:
            result = await process.run([tool.name, *tool.version_args], timeout=timeout)
        except ToolMissing:
            return CheckOutcome(Status.FAIL, f"not found on PATH (needed for {tool.purpose})")
        # `ssh -V` writes its version to stderr.
        version = parse_version_line(result.stdout or result.stderr)
        if not result.ok:
            return CheckOutcome(Status.FAIL, f"exit {result.returncode}: {version}")
        return CheckOutcome(Status.OK, version, {"version": version})

    return probe


def state_dir_probe(path: Path) -> Callable[[], Awaitable[CheckOutcome]]:
    """Create the state dir if needed (0700) and prove it is writable."""

    def write_probe() -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-", delete=True) as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())

    async def probe() -> CheckOutcome:
        try:
            await asyncio.to_thread(write_probe)
        except OSError as exc:
            return CheckOutcome(Status.FAIL, f"{path}: not writable: {exc.strerror or exc}")
        return CheckOutcome(Status.OK, str(path))

    return probe


def job_store_probe(path: Path) -> Callable[[], Awaitable[CheckOutcome]]:
    """Create the SQLite job store if new; read an existing one: quick_check, then counts.

    An existing store is opened read-only (no write lock, no mode change). ``quick_check``
    reads every page but does not compare indexes with their tables; `homeops jobs check`
    runs the full ``integrity_check``, which also finds broken indexes.
    """

    def check_and_count() -> tuple[tuple[str, ...], dict[str, int]]:
        from homeops.core.jobs.store import check_store_at, open_store_at

        found = check_store_at(path, quick=True, max_errors=5)
        if not found.exists:
            # Proves the store can be created where the settings say, before a worker needs it.
            open_store_at(path).close()
        elif found.problems:
            return found.problems, {}
        queue = open_store_at(path, readonly=True)
        try:
            return (), {str(k): v for k, v in queue.counts().items()}
        finally:
            queue.close()

    async def probe() -> CheckOutcome:
        try:
            problems, counts = await asyncio.to_thread(check_and_count)
        except Exception as exc:  # any failure to open or read the store is the finding
            # Store errors already name the file; others get it added.
            text = str(exc)
            return CheckOutcome(Status.FAIL, text if str(path) in text else f"{path}: {text}")
        if problems:
            return CheckOutcome(
                Status.FAIL,
                f"{path}: corrupt: {problems[0]} (`homeops jobs check` lists every problem)",
                {"problems": list(problems)},
            )
        summary = ", ".join(f"{k}={v}" for k, v in counts.items() if v) or "empty"
        return CheckOutcome(Status.OK, f"{path} ({summary})", {"counts": dict(counts)})

    return probe


def core_checks(ctx: DomainContext) -> Sequence[Check]:
    """Core's checks in report order."""
    timeout = ctx.core.health.check_timeout
    checks = [
        Check("state_dir", state_dir_probe(ctx.core.state_dir), timeout=timeout, group="core"),
    ]
    if ctx.core.jobs.backend == "sqlite":
        checks.append(
            Check("job_store", job_store_probe(ctx.core.jobs_db), timeout=timeout, group="core")
        )
    checks.extend(
        Check(f"tool.{t.name}", tool_probe(t, timeout), timeout=timeout, group="core")
        for t in TOOLS
    )
    return checks
