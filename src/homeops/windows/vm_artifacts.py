"""Files a job leaves on the VM, pulled into its manifest.

A job's commands may write files under ``C:\\ProgramData\\win-automation\\artifacts\\<job_id>\\``
(screenshots of a GUI run, a log, an export). After the job they are copied over SFTP into
the job's artifact directory as ``windows/<relative path>``, each with its sha256 in the
manifest. Names come from the VM: one that could escape the directory or that the artifact
store refuses is skipped with a warning, never followed.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from homeops.core.logging import get_logger
from homeops.windows.paths import job_artifact_dir, sftp_path

if TYPE_CHECKING:
    from homeops.core.jobs.worker import JobArtifacts
    from homeops.core.ssh.model import SshTarget
    from homeops.core.ssh.pool import SshPool

_log = get_logger("windows.artifacts")

# Bounds on what one job may pull, so a runaway export cannot fill the Linux disk.
MAX_FILES: Final = 1000
MAX_DEPTH: Final = 8
_SAFE_NAME = re.compile(r"[^\x00-\x1f/\\:*?\"<>|]+")
ARTIFACT_TYPE: Final = "windows"


@dataclass(frozen=True)
class Pulled:
    """What one pull did: files copied, names skipped."""

    files: tuple[str, ...]
    skipped: tuple[str, ...]


def _safe(name: str) -> bool:
    return bool(_SAFE_NAME.fullmatch(name)) and name not in (".", "..") and not name.endswith(".")


async def pull_job_artifacts(
    pool: SshPool, target: SshTarget, job_id: str, artifacts: JobArtifacts, *, timeout: float
) -> Pulled:
    """Copy every file under the job's Windows artifact directory into ``artifacts``."""
    root = sftp_path(job_artifact_dir(job_id))
    files: list[str] = []
    skipped: list[str] = []
    pending: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    # The temp dir only once there is a file to fetch: most jobs leave nothing on the VM.
    with contextlib.ExitStack() as stack:
        tmp: str | None = None
        while pending:
            remote_dir, rel = pending.pop()
            entries = await pool.listdir(target, remote_dir, timeout=timeout)
            if entries is None:
                continue  # the job left nothing there
            for entry in entries:
                parts = (*rel, entry.name)
                shown = "/".join(parts)
                if not _safe(entry.name):
                    skipped.append(shown)
                    continue
                if entry.is_dir and len(parts) < MAX_DEPTH:
                    pending.append((f"{remote_dir}/{entry.name}", parts))
                    continue
                if not entry.is_file or len(files) >= MAX_FILES:
                    skipped.append(shown)
                    continue
                if tmp is None:
                    tmp = stack.enter_context(
                        tempfile.TemporaryDirectory(prefix="homeops-vm-artifacts-")
                    )
                local = Path(tmp) / f"{len(files)}.part"
                await pool.get(target, f"{remote_dir}/{entry.name}", local, timeout=timeout)
                await artifacts.add_file(f"windows/{shown}", local, type=ARTIFACT_TYPE)
                local.unlink(missing_ok=True)
                files.append(shown)
    if skipped:
        _log.warn(
            "pull",
            "skipped files on the VM that cannot be artifacts",
            job_id=job_id,
            skipped=len(skipped),
            first=skipped[0],
        )
    return Pulled(tuple(files), tuple(skipped))
