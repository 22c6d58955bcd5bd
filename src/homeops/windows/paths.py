"""Where homeops keeps its files on the VM, and how SFTP names them.

Windows OpenSSH's SFTP server takes drive paths with forward slashes (``C:/ProgramData/…``);
PowerShell takes the backslash form. Builders use the backslash constants and convert with
:func:`sftp_path` at the SFTP seam, so both sides name the same file.
"""

from __future__ import annotations

import re
from typing import Final

from homeops.core.errors import UsageError

# CONTRACTS.md §1: the Playwright server's directory and the per-job artifact root.
PLAYWRIGHT_DIR: Final = r"C:\ProgramData\win-automation\playwright"
ARTIFACT_ROOT: Final = r"C:\ProgramData\win-automation\artifacts"

_DRIVE_PATH = re.compile(r"[A-Za-z]:\\[^\x00-\x1f\"*?<>|]*")


def windows_join(base: str, *parts: str) -> str:
    """``base\\part\\…``; each part must be one plain name (no separators, no ``..``)."""
    for part in parts:
        if not part or part in (".", "..") or any(c in part for c in "\\/:\x00"):
            raise UsageError(f"not a plain file name for the VM: {part!r}")
    return "\\".join([base.rstrip("\\"), *parts])


def sftp_path(windows_path: str) -> str:
    """``C:\\ProgramData\\x`` as Windows OpenSSH's SFTP server names it: ``C:/ProgramData/x``."""
    if not _DRIVE_PATH.fullmatch(windows_path):
        raise UsageError(f"not an absolute Windows path: {windows_path!r}")
    return windows_path.replace("\\", "/")


def job_artifact_dir(job_id: str) -> str:
    """``C:\\ProgramData\\win-automation\\artifacts\\<job_id>``: where a job leaves its files."""
    return windows_join(ARTIFACT_ROOT, job_id)
