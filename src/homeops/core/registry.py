"""How domains contribute to umbrella commands without importing each other.

A domain is one :class:`Domain` record (the umbrella CLI keeps the list): its name, its
settings spec, its Typer sub-app, its seed tool names, its doctor checks, the supervisor's
remediations and its job types, all as lazy factories, so nothing is probed or imported
until a command needs it. The core registers its own checks and job types the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import typer

    from homeops.core.config import SettingsSpec
    from homeops.core.health import Check
    from homeops.core.jobs.types import JobType
    from homeops.core.settings import CoreSettings
    from homeops.core.umbrella import ConfigSet, DomainConfig


@dataclass(frozen=True)
class DomainContext:
    """What a factory may use: the environment, ``--config``, the core's and each domain's
    settings (loaded once by the CLI; a domain never reads a config file itself)."""

    environ: Mapping[str, str]
    config_path: Path | None
    core: CoreSettings
    config: ConfigSet | None = None

    def settings(self, domain: str) -> Any:  # noqa: ANN401 - each domain casts to its model
        """``domain``'s validated settings model (``ctx.settings("windows")``)."""
        if self.config is None:
            from homeops.core.errors import UsageError

            raise UsageError(f"no settings loaded for domain {domain!r}")
        return self.config.domain(domain).settings


CheckFactory = Callable[[DomainContext], Sequence["Check"]]
Remediation = Callable[[], Awaitable[None]]
RemediationFactory = Callable[[DomainContext], Mapping[str, Remediation]]
JobTypeFactory = Callable[[DomainContext], Sequence["JobType[Any]"]]


# Names a domain may not take. Its name is a section of the umbrella file, so not a core key
# (kept equal to CoreSettings' fields by a test; importing the model here would put pydantic
# on every --help); its group and aliases are commands, so not one of the core's.
CORE_KEYS: Final = frozenset(
    {"state_dir", "log", "jobs", "artifacts", "metrics", "health", "supervisor"}
)
CORE_COMMANDS: Final = frozenset(
    {"homeops", "version", "doctor", "supervise", "supervisor", "worker", "config", "jobs",
     "artifacts"}
)  # fmt: skip


@dataclass(frozen=True)
class Domain:
    """One domain's record: everything the umbrella and its seed tools need, lazily.

    ``command`` is its group under ``homeops`` (default: ``name``); ``aliases`` are the seed
    tool names (console scripts) that run ``cli()`` as a program of its own; ``core_env``
    maps core settings to the seed's names for them (``{"metrics.path":
    ("WIN_AUTOMATION_METRICS_PATH",)}``), and ``core_keys`` the seed file's keys to the core
    settings they set (``{"artifacts.out_dir": "artifacts.root"}``); both count only in the
    seed tool.
    """

    name: str
    summary: str
    command: str | None = None
    settings: Callable[[], SettingsSpec[Any]] | None = None
    cli: Callable[[], typer.Typer] | None = None
    aliases: tuple[str, ...] = ()
    checks: CheckFactory | None = None
    remediations: RemediationFactory | None = None
    job_types: JobTypeFactory | None = None
    core_env: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    core_keys: Mapping[str, str] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The ``homeops <group>`` name."""
        return self.command or self.name


@dataclass
class Registry:
    """Doctor check factories by domain, kept in registration order (the report order)."""

    _checks: list[tuple[str, CheckFactory]] = field(default_factory=list)
    _remediations: list[tuple[str, RemediationFactory]] = field(default_factory=list)
    _job_types: list[tuple[str, JobTypeFactory]] = field(default_factory=list)
    _records: dict[str, Domain] = field(default_factory=dict)

    @classmethod
    def of(cls, domains: Sequence[Domain]) -> Registry:
        """A registry with every record of ``domains`` added, in order."""
        registry = cls()
        for domain in domains:
            registry.add_domain(domain)
        return registry

    def add_domain(self, domain: Domain) -> None:
        """Register a domain record: its factories, its settings, its seed tool names."""
        if domain.name in self._records:
            raise ValueError(f"domain {domain.name!r} already registered")
        if domain.name in CORE_KEYS:
            raise ValueError(f"domain {domain.name!r}: that name is a core settings key")
        if domain.name != "core":
            core_names = sorted(CORE_COMMANDS & {domain.group, *domain.aliases})
            if core_names:
                raise ValueError(f"domain {domain.name!r}: {core_names[0]!r} is a core command")
        taken = {a for d in self._records.values() for a in (d.group, *d.aliases)}
        clash = taken & {domain.group, *domain.aliases}
        if clash:
            raise ValueError(f"domain {domain.name!r}: name {sorted(clash)[0]!r} already taken")
        self._records[domain.name] = domain
        if domain.checks is not None:
            self.add_checks(domain.name, domain.checks)
        if domain.remediations is not None:
            self.add_remediations(domain.name, domain.remediations)
        if domain.job_types is not None:
            self.add_job_types(domain.name, domain.job_types)

    def records(self) -> list[Domain]:
        """Domain records in registration order."""
        return list(self._records.values())

    def record(self, name: str) -> Domain:
        """The record of domain ``name`` (KeyError if none)."""
        return self._records[name]

    def by_alias(self, prog: str) -> Domain | None:
        """The domain whose seed tool is called ``prog``, if any."""
        return next((d for d in self._records.values() if prog in d.aliases), None)

    def domain_configs(self) -> dict[str, DomainConfig]:
        """How to load each domain's settings, for :func:`homeops.core.umbrella.load_config_set`."""
        from homeops.core.umbrella import DomainConfig

        return {
            d.name: DomainConfig(d.settings, d.core_env, d.core_keys)
            for d in self._records.values()
            if d.settings is not None
        }

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
        every = [*self._checks, *self._remediations, *self._job_types]
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
