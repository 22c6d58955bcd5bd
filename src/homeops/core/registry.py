"""How domains contribute to umbrella commands without importing each other.

The umbrella CLI builds one :class:`Registry` per invocation; each domain adds factories
for its doctor checks, the supervisor's remediations and the job worker's handlers, so
nothing is probed or imported until a command needs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homeops.core.health import Check
    from homeops.core.jobs.types import JobType
    from homeops.core.jobs.worker import Handler
    from homeops.core.settings import CoreSettings


@dataclass(frozen=True)
class DomainContext:
    """What a factory may use: the environment, ``--config`` and the core settings."""

    environ: Mapping[str, str]
    config_path: Path | None
    core: CoreSettings


CheckFactory = Callable[[DomainContext], Sequence["Check"]]
Remediation = Callable[[], Awaitable[None]]
RemediationFactory = Callable[[DomainContext], Mapping[str, Remediation]]
HandlerFactory = Callable[[DomainContext], Mapping[str, "Handler"]]
JobTypeFactory = Callable[[DomainContext], Sequence["JobType[Any]"]]


@dataclass
class Registry:
    """Doctor check factories by domain, kept in registration order (the report order)."""

    _checks: list[tuple[str, CheckFactory]] = field(default_factory=list)
    _remediations: list[tuple[str, RemediationFactory]] = field(default_factory=list)
    _handlers: list[tuple[str, HandlerFactory]] = field(default_factory=list)
    _job_types: list[tuple[str, JobTypeFactory]] = field(default_factory=list)

    def add_checks(self, domain: str, factory: CheckFactory) -> None:
        """Register ``domain``'s checks; the first registered domain is reported first."""
        if any(name == domain for name, _ in self._checks):
            raise ValueError(f"checks for {domain!r} already registered")
        self._checks.append((domain, factory))

    def add_remediations(self, domain: str, factory: RemediationFactory) -> None:
        """Register repairs keyed by check name, run by the supervisor when that check fails."""
        self._remediations.append((domain, factory))

    def domains(self) -> list[str]:
        """Registered domain names in order."""
        every = [*self._checks, *self._remediations, *self._handlers, *self._job_types]
        return list(dict.fromkeys(name for name, _ in every))

    def check_domains(self, only: Sequence[str]) -> None:
        """:class:`UsageError` (exit 2) naming the first of ``only`` that is not registered."""
        from homeops.core.errors import UsageError

        unknown = [name for name in only if name not in self.domains()]
        if unknown:
            known = ", ".join(self.domains())
            raise UsageError(f"unknown domain {unknown[0]!r} for --only (known: {known})")

    def collect(self, ctx: DomainContext, only: Sequence[str] = ()) -> list[Check]:
        """Instantiate the checks of every domain (or of ``only``)."""
        out: list[Check] = []
        for name, factory in self._checks:
            if not only or name in only:
                out.extend(factory(ctx))
        return out

    def collect_remediations(
        self, ctx: DomainContext, only: Sequence[str] = ()
    ) -> dict[str, Remediation]:
        """Every registered domain's remediations (or those of ``only``), by check name."""
        out: dict[str, Remediation] = {}
        for name, factory in self._remediations:
            if not only or name in only:
                out.update(factory(ctx))
        return out

    def add_handlers(self, domain: str, factory: HandlerFactory) -> None:
        """Register job handlers by job type (types are named ``<domain>.<verb>``)."""
        self._handlers.append((domain, factory))

    def collect_handlers(self, ctx: DomainContext, only: Sequence[str] = ()) -> dict[str, Handler]:
        """Every registered domain's job handlers (or those of ``only``), by job type."""
        out: dict[str, Handler] = {}
        for name, factory in self._handlers:
            if only and name not in only:
                continue
            for job_type, handler in factory(ctx).items():
                if job_type in out:
                    raise ValueError(f"job type {job_type!r} registered twice")
                out[job_type] = handler
        return out

    def add_job_types(self, domain: str, factory: JobTypeFactory) -> None:
        """Register ``domain``'s job types (``<domain>.<verb>``), built lazily by ``factory``."""
        self._job_types.append((domain, factory))

    def collect_job_types(
        self, ctx: DomainContext, only: Sequence[str] = ()
    ) -> dict[str, JobType[Any]]:
        """Every registered domain's job types (or those of ``only``), by name."""
        out: dict[str, JobType[Any]] = {}
        for name, factory in self._job_types:
            if only and name not in only:
                continue
            for job_type in factory(ctx):
                if job_type.name in out:
                    raise ValueError(f"job type {job_type.name!r} registered twice")
                out[job_type.name] = job_type
        return out
