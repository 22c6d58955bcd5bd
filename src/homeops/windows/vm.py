"""Small VM probes every flow needs: run a PowerShell script, is the desktop locked, does a port
listen. They take a :class:`~homeops.core.runner.RawRunner` (the SSH seam, or the tests' fake)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from homeops.core.errors import OperationalError
from homeops.core.ssh.shell import encode_powershell
from homeops.windows import powershell

if TYPE_CHECKING:
    from homeops.core.runner import CommandResult, RawRunner

# A probe is a one-liner on the VM; this bounds it, connecting included.
PROBE_TIMEOUT_S: Final = 15.0


class DesktopLocked(OperationalError):
    """GUI work refused: the VM shows its lock screen (exit 1, ``state=blocked``); a job
    is not retried by itself (someone must unlock the desktop)."""

    retryable = False


async def run_script(
    runner: RawRunner, script: str, *, timeout: float = PROBE_TIMEOUT_S, check: bool = True
) -> CommandResult:
    """Run a PowerShell ``script`` on the VM as ``powershell -EncodedCommand …``."""
    return await runner.run_raw(encode_powershell(script), timeout=timeout, check=check)


async def desktop_locked(runner: RawRunner, *, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the VM's lock screen (LogonUI) is up."""
    done = await run_script(runner, powershell.desktop_locked_script(), timeout=timeout)
    return powershell.parse_desktop_locked(done.stdout_text)


async def require_unlocked(runner: RawRunner, what: str) -> None:
    """:class:`DesktopLocked` when the desktop is locked; ``what`` names the refused work."""
    if await desktop_locked(runner):
        raise DesktopLocked(f"{what}: the Windows desktop is locked (state=blocked)")


async def port_listening(runner: RawRunner, port: int, *, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something on the VM listens on TCP ``port``."""
    done = await run_script(runner, powershell.port_listening_script(port), timeout=timeout)
    return powershell.parse_port_listening(done.stdout_text)
