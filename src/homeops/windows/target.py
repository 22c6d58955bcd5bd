"""The VM as an SSH target, from the domain's settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from homeops.core.ssh.model import HostKeyPolicy, SshTarget
from homeops.windows.settings import WindowsSection

if TYPE_CHECKING:
    from homeops.core.runner import SshRunner


def vm_target(section: WindowsSection) -> SshTarget:
    """Where the VM's OpenSSH listens, and how to trust it.

    Commands go as PowerShell (``remote_shell="powershell"``): argv is sent as
    ``-EncodedCommand``, and a timed-out command is killed with the Windows killer. The host
    key must already be in ``known_hosts`` (``~/.ssh/known_hosts`` when unset): a VM
    re-created with a new key is refused, never silently accepted.
    """
    return SshTarget(
        host=section.ssh_host,
        user=section.ssh_user,
        port=section.ssh_port,
        identity_file=section.ssh_identity_file,
        known_hosts=section.known_hosts,
        host_key_policy=HostKeyPolicy.STRICT,
        remote_shell="powershell",
    )


@contextlib.asynccontextmanager
async def vm_runner(section: WindowsSection) -> AsyncIterator[SshRunner]:
    """A runner on the VM over a pool of its own, closed (remote kills awaited) on exit."""
    from homeops.core.runner import SshRunner
    from homeops.core.ssh import SshPool

    async with SshPool() as pool:
        yield SshRunner(pool, vm_target(section))
