"""Settings of the shared core: where state lives, the job store, artifacts, metrics, health."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from homeops.core.config import DirLocation, Duration, PositiveDuration, Section, SettingsSpec
from homeops.core.paths import default_state_dir

MIN_LEASE_S = 1.0


class JobsSettings(Section):
    """The job queue and its workers."""

    # Only the embedded store exists so far; the Hatchet backend arrives with its issue.
    backend: Literal["sqlite"] = Field(
        default="sqlite", description="Job store backend: sqlite (embedded, under the state dir)"
    )
    db_path: Path | None = Field(
        default=None, description="SQLite job store file (default <state_dir>/jobs.sqlite3)"
    )
    slots: int = Field(default=10, ge=1, le=1024, description="Concurrent jobs per worker")
    lease: PositiveDuration = Field(
        default=30.0, description="How long a claimed job stays owned without a heartbeat"
    )
    poll_interval: PositiveDuration = Field(
        default=0.01, description="Idle worker's polling interval for new jobs"
    )
    grace: Duration = Field(
        default=10.0, description="On SIGTERM, how long running jobs may finish before requeue"
    )
    max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts per job")
    # None, not 0, is "never": 0 would read as "prune every finished job at once", which also
    # forgets every idempotency key (a repeated enqueue would run the work again).
    # Bounded (a century): 1e308 days is inf seconds, which prune refused, so the sweep job
    # failed for good over a setting; le also rejects inf itself.
    retention_days: float | None = Field(
        default=30.0,
        gt=0,
        le=36500,
        description="jobs prune and the artifact sweep delete finished jobs older than this "
        "(at most 36500; never or null keeps them forever)",
    )

    @field_validator("retention_days", mode="before")
    @classmethod
    def _never_keeps_forever(cls, value: object) -> object:
        # An environment variable cannot carry JSON null; "never" is its spelling there.
        if isinstance(value, str) and value.strip().lower() in {"never", "null"}:
            return None
        return value

    @field_validator("lease")
    @classmethod
    def _lease_outlives_a_heartbeat(cls, value: float) -> float:
        # A lease of a few milliseconds expires between two heartbeats: every job then burns
        # all its attempts as "lease expired" within a second, and looks like a broken worker.
        if value < MIN_LEASE_S:
            raise ValueError(
                f"must be at least {MIN_LEASE_S:g}s (a worker renews its leases by heartbeat; "
                "keep it above the store's 10s busy timeout, default 30s)"
            )
        return value


class ArtifactsSettings(Section):
    """Per-job artifact directories with a manifest."""

    root: Path | None = Field(
        default=None, description="Artifact root (default <state_dir>/artifacts)"
    )
    retention_days: float = Field(
        default=7.0, ge=0, description="Sweep removes job artifacts older than this"
    )


class MetricsSettings(Section):
    """In-memory counters emitted as logfmt lines and Prometheus text."""

    enabled: bool = Field(default=False, description="Emit metrics lines from long runners")
    interval: PositiveDuration = Field(default=30.0, description="Emission interval")
    path: Path | None = Field(default=None, description="Append metric lines here, not stdout")


class HealthSettings(Section):
    """Checks run by doctor and supervisors."""

    check_timeout: PositiveDuration = Field(default=5.0, description="Timeout of each check")


class SupervisorSettings(Section):
    """The self-repair loop: checks every interval, remediations behind a circuit breaker."""

    interval: PositiveDuration = Field(default=30.0, description="Time between passes")
    breaker_threshold: int = Field(
        default=3, ge=1, le=100, description="Consecutive failed passes that open the breaker"
    )
    breaker_cooldown: PositiveDuration = Field(
        default=60.0, description="How long an open breaker skips remediation"
    )
    remediation_timeout: PositiveDuration = Field(
        default=120.0, description="Longest a single remediation may run"
    )
    failpoint: str | None = Field(
        default=None, description="Force this check to fail (testing the repair path)"
    )

    @field_validator("failpoint")
    @classmethod
    def _failpoint_trimmed(cls, value: str | None) -> str | None:
        # Trimmed like every other value: ' tool.git' from a shell quote names tool.git.
        if value is None:
            return None
        return value.strip() or None


class LogSettings(Section):
    """stderr logging."""

    level: Literal["debug", "info", "warn", "error"] = Field(
        default="info", description="Lowest level written; --debug forces debug"
    )


class CoreSettings(Section):
    """Everything the shared core needs; domains add their own models."""

    state_dir: DirLocation = Field(
        description="Job store, artifacts and logs live here (HOMEOPS_STATE_DIR, else XDG state)"
    )
    log: LogSettings = Field(default_factory=LogSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    artifacts: ArtifactsSettings = Field(default_factory=ArtifactsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)

    @model_validator(mode="before")
    @classmethod
    def _paths_under_state_dir(cls, data: Any) -> Any:  # noqa: ANN401
        # Filled in here, not left null, so `config show` prints the paths actually used.
        if isinstance(data, dict) and data.get("state_dir"):
            state = Path(str(data["state_dir"]))
            jobs = dict(data.get("jobs") or {})
            jobs.setdefault("db_path", str(state / "jobs.sqlite3"))
            artifacts = dict(data.get("artifacts") or {})
            artifacts.setdefault("root", str(state / "artifacts"))
            data = {**data, "jobs": jobs, "artifacts": artifacts}
        return data

    @property
    def jobs_db(self) -> Path:
        """Effective SQLite job store path."""
        return self.jobs.db_path or self.state_dir / "jobs.sqlite3"

    @property
    def artifacts_root(self) -> Path:
        """Effective artifact root."""
        return self.artifacts.root or self.state_dir / "artifacts"


def _dynamic_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    return {"state_dir": str(default_state_dir(environ))}


CORE_SPEC: SettingsSpec[CoreSettings] = SettingsSpec(
    model=CoreSettings,
    env_prefix="HOMEOPS",
    config_env="HOMEOPS_CONFIG",
    dynamic_defaults=_dynamic_defaults,
)
