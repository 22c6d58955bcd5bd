"""How domains contribute to umbrella commands without importing each other.

The umbrella CLI builds one :class:`Registry` per invocation and each domain adds its
doctor checks (a factory, so nothing is probed or imported until ``doctor`` runs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homeops.core.health import Check
    from homeops.core.settings import CoreSettings


@dataclass(frozen=True)
class DoctorContext:
    """What a check factory may use: the environment, ``--config`` and the core settings."""

    environ: Mapping[str, str]
    config_path: Path | None
    core: CoreSettings


CheckFactory = Callable[[DoctorContext], Sequence["Check"]]
Remediation = Callable[[], Awaitable[None]]
RemediationFactory = Callable[[DoctorContext], Mapping[str, Remediation]]


@dataclass
class Registry:
    """Doctor check factories by domain, kept in registration order (the report order)."""

    _checks: list[tuple[str, CheckFactory]] = field(default_factory=list)
    _remediations: list[tuple[str, RemediationFactory]] = field(default_factory=list)

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
        return [name for name, _ in self._checks]

    def collect(self, ctx: DoctorContext, only: Sequence[str] = ()) -> list[Check]:
        """Instantiate the checks of every domain (or of ``only``)."""
        out: list[Check] = []
        for name, factory in self._checks:
            if not only or name in only:
                out.extend(factory(ctx))
        return out

    def collect_remediations(
        self, ctx: DoctorContext, only: Sequence[str] = ()
    ) -> dict[str, Remediation]:
        """Every registered domain's remediations (or those of ``only``), by check name."""
        out: dict[str, Remediation] = {}
        for name, factory in self._remediations:
            if not only or name in only:
                out.update(factory(ctx))
        return out
