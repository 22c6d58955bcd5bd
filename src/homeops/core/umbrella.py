"""The homelab's config: one umbrella file for everything, or a seed tool's own file.

The umbrella file (``homeops --config F`` or ``$HOMEOPS_CONFIG``) holds the core's keys at
the top (``jobs``, ``artifacts``, ...) and one section per domain (``"windows": {...}``),
each validated by its domain's model. A seed tool (``win-automation --config win.json``,
or ``$WIN_AUTOMATION_CONFIG``) reads its own file with the domain's model at the top level,
as the seeds write it; the core's settings then still come from ``$HOMEOPS_CONFIG`` and
the environment, where the seed's own names for them (``WIN_AUTOMATION_ARTIFACT_OUT``)
are accepted too.

Everything is loaded here once per command; a domain asks its context for its settings
(``ctx.settings("windows")``) and never reads a file itself. Sections present in the file
are validated at once, so a typo in any of them fails every command, not just the one that
happens to use that domain; a domain configured only by environment is loaded when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homeops.core.config import (
    FILE_SUFFIX,
    MISSING,
    Loaded,
    SettingsSpec,
    env_path,
    get_path,
    is_secret,
    load_settings,
    read_config_file,
    set_path,
)
from homeops.core.errors import ConfigError, UsageError, json_type_name
from homeops.core.settings import CORE_SPEC, CoreSettings

SpecFactory = Callable[[], SettingsSpec[Any]]

# The domains DESIGN.md plans; a section for one of them that this build does not register
# gets a message saying so, instead of a "did you mean" for an unrelated core key.
PLANNED_DOMAINS = ("windows", "services", "builds", "fleet")


@dataclass(frozen=True)
class DomainConfig:
    """How one domain's settings are found: its spec (lazily) and its seed env names."""

    spec: SpecFactory
    # Core dotted setting -> the seed tool's names for it (WIN_AUTOMATION_METRICS_PATH).
    core_env: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The seed file's dotted key -> the core setting it sets ("artifacts.out_dir" ->
    # "artifacts.root"): the seeds keep core settings in their own file, under their names.
    core_keys: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ConfigSet:
    """The loaded settings of one command: the core's at once, each domain's on demand."""

    environ: Mapping[str, str]
    core: Loaded[CoreSettings]
    domains: Mapping[str, DomainConfig]
    # Umbrella file and its content (None when none is configured).
    umbrella_path: Path | None = None
    umbrella_data: Mapping[str, Any] | None = None
    # Seed mode: the domain whose own file --config names.
    seed: str | None = None
    seed_path: Path | None = None
    _cache: dict[str, Loaded[Any]] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Domains that have settings, in registration order."""
        return list(self.domains)

    def domain(self, name: str) -> Loaded[Any]:
        """``name``'s validated settings with their sources; loaded once."""
        if name in self._cache:
            return self._cache[name]
        if name not in self.domains:
            known = ", ".join(self.domains) or "none"
            raise UsageError(f"no settings registered for domain {name!r} (known: {known})")
        spec = self.domains[name].spec()
        others = {n for d in self.domains.values() for names in d.core_env.values() for n in names}
        section = self._section(name)
        own_file = self.seed_path
        if own_file is None and self.seed == name:
            own_file = spec.seed_file(self.environ)
        if self.seed == name and own_file is not None:
            # The seed tool's own file wins over a section of the umbrella file.
            loaded = load_settings(
                spec, environ=self.environ, config_path=own_file, also_known_env=others
            )
        elif section is not None:
            own = self.environ.get(spec.config_env)
            if own:
                raise ConfigError(
                    str(self.umbrella_path),
                    name,
                    f"{name} settings are given twice: this section and "
                    f"{spec.config_env}={own}; keep one",
                )
            loaded = load_settings(
                spec,
                environ=self.environ,
                config_path=self.umbrella_path,
                file_data=self.umbrella_data,
                section=(name,),
                also_known_env=others,
            )
        else:
            # No section: the domain's own *_CONFIG file if set, else defaults and env.
            loaded = load_settings(spec, environ=self.environ, also_known_env=others)
        self._cache[name] = loaded
        return loaded

    def _section(self, name: str) -> Mapping[str, Any] | None:
        if self.umbrella_data is None:
            return None
        value = self.umbrella_data.get(name)
        return value if isinstance(value, Mapping) else None


def _core_keys() -> set[str]:
    fields = CoreSettings.model_fields
    secrets = {k + FILE_SUFFIX for k, f in fields.items() if is_secret(f.annotation)}
    return {*fields, *secrets}


def _check_sections(data: Mapping[str, Any], label: str, domains: Sequence[str]) -> None:
    core = _core_keys()
    for key, value in data.items():
        if key == "core" and "core" not in domains:
            raise ConfigError(
                label,
                key,
                "unknown key (the core's settings go at the top level, not in a section)",
            )
        if key in domains:
            if not isinstance(value, Mapping):
                kind = json_type_name(value)
                raise ConfigError(label, key, f"expected an object (section), got {kind}")
        elif key not in core and key in PLANNED_DOMAINS:
            known = ", ".join(domains) or "none"
            raise ConfigError(
                label,
                key,
                f"section for domain {key!r}, which is not registered in this homeops "
                f"(domains with settings: {known})",
            )


def load_config_set(
    domains: Mapping[str, DomainConfig],
    *,
    environ: Mapping[str, str],
    config_path: Path | None = None,
    seed: str | None = None,
) -> ConfigSet:
    """Load the core's settings and validate every domain section the file has.

    ``seed`` names the domain of a seed tool: ``config_path`` (or that domain's ``*_CONFIG``
    variable) is then the domain's own file, and the umbrella file only ``$HOMEOPS_CONFIG``.
    """
    core_spec = CORE_SPEC
    seed_path: Path | None = None
    if seed is not None:
        if seed not in domains:
            raise UsageError(f"seed tool of unknown domain {seed!r}")
        # The seed's own names for core settings count only in that seed tool: a stale
        # WIN_AUTOMATION_ARTIFACT_OUT in some unit's environment must not move the artifact
        # root (where sweeps delete) of `homeops` and of every other seed tool.
        core_spec = CORE_SPEC.with_extra_env(domains[seed].core_env)
        seed_path = config_path
        umbrella = env_path(environ, CORE_SPEC.config_env)
    else:
        umbrella = config_path
        if umbrella is None:
            umbrella = env_path(environ, CORE_SPEC.config_env)
    overlay: tuple[str, dict[str, Any]] | None = None
    preloaded: Loaded[Any] | None = None
    if seed is not None and domains[seed].core_keys:
        overlay, preloaded = _seed_core_values(domains[seed], environ, config_path)
    data: dict[str, Any] | None = None
    core_data: dict[str, Any] | None = None
    if umbrella is not None:
        data = read_config_file(umbrella)
        _check_sections(data, str(umbrella), list(domains))
        core_data = {k: v for k, v in data.items() if k not in domains}
    core = load_settings(
        core_spec,
        environ=environ,
        config_path=umbrella,
        file_data=core_data,
        extra_candidates=list(domains),
        overlay=overlay,
    )
    config = ConfigSet(
        environ=environ,
        core=core,
        domains=domains,
        umbrella_path=umbrella,
        umbrella_data=data,
        seed=seed,
        seed_path=seed_path,
    )
    if preloaded is not None and seed is not None:
        config._cache[seed] = preloaded
    for name in domains:
        # Sections present are validated now; so is the seed tool's own file.
        if (data is not None and name in data) or name == seed:
            config.domain(name)
    return config


def _seed_core_values(
    dom: DomainConfig, environ: Mapping[str, str], config_path: Path | None
) -> tuple[tuple[str, dict[str, Any]] | None, Loaded[Any] | None]:
    """The core settings a seed tool's own file sets under its names, and that domain's
    settings (validated first, so a bad value is reported under the seed's own key)."""
    spec = dom.spec()
    path = config_path if config_path is not None else spec.seed_file(environ)
    if path is None:
        return None, None
    raw = read_config_file(path)
    others = {n for names in dom.core_env.values() for n in names}
    loaded = load_settings(
        spec, environ=environ, config_path=path, file_data=raw, also_known_env=others
    )
    values: dict[str, Any] = {}
    for seed_key, core_key in dom.core_keys.items():
        value = get_path(raw, seed_key.split("."))
        if value is not MISSING:
            set_path(values, core_key.split("."), value)
    return ((str(path), values) if values else None), loaded
