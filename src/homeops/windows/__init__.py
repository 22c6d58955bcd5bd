"""The windows domain: drives the Windows VM of seeds 000 and 001 (``homeops win``,
``win-automation``).

This module is imported by every command (the umbrella's domain list reads these tables),
so it holds plain data only; settings, commands, checks and job types live in their modules
and are imported by the record's lazy factories.
"""

# The seed file's keys for core settings, and the seed's env names for them (seed-tool only).
CORE_KEYS = {
    "artifacts.out_dir": "artifacts.root",
    "artifacts.retention_days": "artifacts.retention_days",
    "worker.metrics": "metrics.enabled",
    "worker.metrics_interval": "metrics.interval",
    "worker.metrics_path": "metrics.path",
    "supervisor.interval": "supervisor.interval",
    "supervisor.failpoint": "supervisor.failpoint",
    # The seed's worker reads Hatchet's settings; the core's queue has the same two knobs.
    "hatchet.worker_concurrency": "jobs.slots",
    "hatchet.retry_max": "jobs.max_attempts",
}
CORE_ENV = {
    "artifacts.root": ("WIN_AUTOMATION_ARTIFACT_OUT", "WIN_AUTOMATION_ARTIFACTS_OUT_DIR"),
    "artifacts.retention_days": (
        "WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS",
        "WIN_AUTOMATION_ARTIFACTS_RETENTION_DAYS",
    ),
    "metrics.enabled": ("WIN_AUTOMATION_WORKER_METRICS",),
    "metrics.interval": ("WIN_AUTOMATION_WORKER_METRICS_INTERVAL",),
    "metrics.path": ("WIN_AUTOMATION_METRICS_PATH", "WIN_AUTOMATION_WORKER_METRICS_PATH"),
    "supervisor.interval": ("WIN_AUTOMATION_SUPERVISOR_INTERVAL",),
    "supervisor.failpoint": ("WIN_AUTOMATION_SUPERVISOR_FAILPOINT",),
    "jobs.slots": ("WIN_AUTOMATION_HATCHET_WORKER_CONCURRENCY",),
    "jobs.max_attempts": ("WIN_AUTOMATION_HATCHET_RETRY_MAX",),
}
