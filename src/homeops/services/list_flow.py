"""``svc list``: every service, its unit, its containers and its last backup per repository.

Fast by construction (issue 8: <= 300 ms over 50 services): restic is never called. The
last backups come from the job ledger (the ``services.backup`` jobs in the core store, read
only, newest first); the units' states from ONE ``systemctl show`` for every unit, or,
without systemd, from the containers; the containers from ONE ``docker ps`` of every compose
project. A query that cannot be answered (no docker engine, systemd not running) leaves its
column ``unknown`` and says why once, instead of failing the listing.

A backup is stale when it is older than ``backup.stale_after``, else than its policy allows
(:meth:`~homeops.services.settings.Policy.max_age_s`: a day when daily snapshots are kept),
or when the last one failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from homeops.core.errors import HomeopsError
from homeops.services import docker as d
from homeops.services.settings import REPO_NAMES
from homeops.services.units import UNIT_PREFIX, systemd_wanted, unit_name

if TYPE_CHECKING:
    from homeops.core.jobs.model import Job
    from homeops.core.jobs.queue import JobClient
    from homeops.services.settings import SvcSettings

BACKUP_JOB: Final = "services.backup"
# How many backup jobs, newest first, are read to find each (service, repo)'s last one:
# 50 services x 2 repositories x a few retries fit many times over.
LEDGER_WINDOW: Final = 5000
QUERY_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class LastBackup:
    """The newest backup job of one service into one repository."""

    repo: str
    job_id: str
    state: str  # the job's: succeeded, failed, running, queued, cancelled
    outcome: str | None  # the backup's: ok, partial, failed (None while it runs)
    finished_at: float | None
    snapshot_id: str | None
    files: int | None
    bytes: int | None
    added: int | None
    error: str | None
    stale: bool

    def age_s(self, now: float) -> float | None:
        """Seconds since it finished (None: not finished)."""
        return None if self.finished_at is None else max(0.0, now - self.finished_at)


@dataclass(frozen=True)
class ServiceRow:
    """One line of ``svc list``."""

    name: str
    unit: str
    unit_state: str
    containers: tuple[d.Container, ...]
    backup_enabled: bool
    backups: Mapping[str, LastBackup | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Listing:
    """Every row, and what could not be asked (one line each)."""

    rows: tuple[ServiceRow, ...]
    notes: tuple[str, ...]
    now: float


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def backup_of(job: Job, *, max_age_s: float | None, now: float) -> LastBackup:
    """What ``job`` (a ``services.backup`` job) says about its backup (services/jobs.py
    documents the result; older or partial results give what they have)."""
    result: Mapping[str, Any] = job.result if isinstance(job.result, Mapping) else {}
    summary = result.get("summary")
    summary = summary if isinstance(summary, Mapping) else {}
    outcome = _str(result.get("outcome")) or _str(result.get("state"))
    if outcome is None and job.state.terminal:
        outcome = "ok" if str(job.state) == "succeeded" else "failed"
    lost = str(job.state) == "running" and job.lease_until is not None and job.lease_until < now
    if lost:
        # Its process died (SIGKILL, OOM) without a word: the lease ran out. A worker would
        # mark it failed at its next claim; until then it is no running backup.
        outcome = "lost"
    finished = job.finished_at
    too_old = max_age_s is not None and finished is not None and now - finished > max_age_s
    return LastBackup(
        repo=str(result.get("repo") or job.payload.get("repo") or ""),
        job_id=job.id,
        state=str(job.state),
        outcome=outcome,
        finished_at=finished,
        snapshot_id=_str(result.get("snapshot_id")) or _str(summary.get("snapshot_id")),
        files=_int(result.get("files")) or _int(summary.get("total_files_processed")),
        bytes=_int(result.get("bytes")) or _int(summary.get("total_bytes_processed")),
        added=_int(result.get("data_added")) or _int(summary.get("data_added")),
        error=job.error,
        stale=too_old or outcome in ("failed", "lost"),
    )


def last_backups(
    queue: JobClient, settings: SvcSettings, now: float
) -> dict[tuple[str, str], LastBackup]:
    """(service, repo) -> its newest backup job, from the ledger alone."""
    wanted = {(name, repo) for name in settings.services for repo in REPO_NAMES}
    found: dict[tuple[str, str], LastBackup] = {}
    for job in queue.list(type=BACKUP_JOB, limit=LEDGER_WINDOW):
        service = job.payload.get("service")
        repo = job.payload.get("repo")
        key = (str(service), str(repo))
        if key not in wanted or key in found or job.payload.get("dry_run") is True:
            continue  # a dry run saved nothing: it is no one's last backup
        backup = settings.services[key[0]].backup
        limit = backup.stale_after if backup.stale_after is not None else backup.policy.max_age_s()
        found[key] = backup_of(job, max_age_s=limit, now=now)
        if len(found) == len(wanted):
            break
    return found


def parse_systemctl_show(stdout: str) -> dict[str, str]:
    """``systemctl show -p Id,ActiveState,SubState U…`` (blocks split by blank lines) as
    unit -> ``active (running)``; a unit systemd does not know is ``not-found``."""
    states: dict[str, str] = {}
    for block in stdout.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        unit = fields.get("Id")
        if not unit:
            continue
        active, sub = fields.get("ActiveState", ""), fields.get("SubState", "")
        load = fields.get("LoadState", "")
        states[unit] = "not-found" if load == "not-found" else f"{active} ({sub})".strip()
    return states


async def _unit_states(settings: SvcSettings, names: Sequence[str]) -> dict[str, str]:
    from homeops.core import process

    units = [unit_name(n) for n in names]
    argv = [settings.tools.systemctl, "show", "-p", "Id,LoadState,ActiveState,SubState", *units]
    done = await process.run(argv, timeout=QUERY_TIMEOUT_S)
    if done.returncode != 0:
        raise HomeopsError(f"systemctl show: exit {done.returncode}: {done.stderr.strip()[:200]}")
    return parse_systemctl_show(done.stdout)


async def _containers(settings: SvcSettings) -> dict[str, list[d.Container]]:
    from homeops.core import process

    done = await process.run(
        d.all_containers_argv(docker=settings.tools.docker), timeout=QUERY_TIMEOUT_S
    )
    if done.returncode != 0:
        failure = d.classify_docker_error(done.stderr)
        raise HomeopsError(d.failure_message(failure, done.stderr))
    grouped: dict[str, list[d.Container]] = {}
    for container in d.parse_containers(done.stdout):
        grouped.setdefault(container.project, []).append(container)
    return grouped


T = TypeVar("T")


async def _ask(query: Awaitable[T]) -> tuple[T | None, str | None]:
    """A query's answer, or None and why it could not be asked."""
    try:
        return await query, None
    except HomeopsError as exc:
        return None, str(exc)


async def _nothing() -> dict[str, str]:
    return {}


async def list_services(
    settings: SvcSettings,
    queue: JobClient | None,
    *,
    now: float,
    units: bool = True,
    no_systemd: bool = False,
) -> Listing:
    """Every configured service, in name order, with what the ledger and the engine say."""
    names = sorted(settings.services)
    notes: list[str] = []
    via_systemd = systemd_wanted(settings, no_systemd=no_systemd)
    containers: dict[str, list[d.Container]] | None = {}
    unit_states: dict[str, str] | None = {}
    if units and names:
        (containers, why_c), (unit_states, why_u) = await asyncio.gather(
            _ask(_containers(settings)),
            _ask(_unit_states(settings, names) if via_systemd else _nothing()),
        )
        if why_c is not None:
            notes.append(f"containers unknown: {why_c}")
        if why_u is not None:
            notes.append(f"unit states unknown: {why_u}")
    backups = last_backups(queue, settings, now) if queue is not None else {}
    rows = []
    for name in names:
        mine = tuple((containers or {}).get(name, ()))
        if not units:
            state = "-"
        elif via_systemd:
            state = (
                "unknown" if unit_states is None else unit_states.get(unit_name(name), "unknown")
            )
        else:
            state = "unknown" if containers is None else str(d.project_state(mine))
        service = settings.services[name]
        rows.append(
            ServiceRow(
                name=name,
                unit=f"{UNIT_PREFIX}{name}",
                unit_state=state,
                containers=mine,
                backup_enabled=service.backup.enable,
                backups={repo: backups.get((name, repo)) for repo in REPO_NAMES},
            )
        )
    return Listing(tuple(rows), tuple(notes), now)
