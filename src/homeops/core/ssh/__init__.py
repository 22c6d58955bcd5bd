"""The only place homeops opens SSH: a pool of reused asyncssh connections.

One connection per (user, host, port) carries every command and SFTP transfer to that host
(a target with other credentials or host-key settings gets its own connection, so a
connection is never reused under weaker settings than the caller asked for). Host keys are
checked against a known_hosts file; ``accept-new`` must be asked for. Only establishing a
connection is retried; authentication, host-key and remote command failures never are. Every
asyncssh exception is translated here into a :mod:`homeops.core.errors` class.
docs/ssh.md describes the behaviour: deadlines, retries, keepalive, session queueing,
binary output and sinks, kill confirmation, SFTP atomicity, quoting, OpenSSH options.

asyncssh costs about half a second to import, so it is imported inside the functions that
need it: importing this package (and ``homeops --help``) stays cheap.

Modules, one part each:

- ``model``: targets and host-key policy, results, output sinks
- ``errors``: the retry predicate and the translation of asyncssh's exceptions
- ``connect``: trust (known_hosts, accept-new), keys, opening one connection
- ``channel``: one command's session, its output, session slots (MaxSessions)
- ``kill``: kill outcomes, the POSIX and PowerShell fallback killers, :class:`Killer`
- ``pool``: :class:`SshPool`, the connection cache and ``run``
- ``sftp``: atomic ``put``/``get``
- ``shell``: argv quoting for the remote shell (POSIX, PowerShell)
- ``openssh``: a target as OpenSSH client options (``NIX_SSHOPTS``, restic's sftp)

The argv-level seam shared with local commands is :class:`homeops.core.runner.SshRunner`.
"""

from homeops.core.ssh.channel import NO_EXIT_STATUS
from homeops.core.ssh.connect import append_known_host
from homeops.core.ssh.errors import is_retryable_ssh_error
from homeops.core.ssh.kill import (
    CANCEL_GRACE_S,
    CANCEL_KILL_BUDGET_S,
    KILL_BUDGET_S,
    KILL_GRACE_S,
)
from homeops.core.ssh.model import (
    DEFAULT_MAX_OUTPUT,
    KEEPALIVE_COUNT_MAX,
    KEEPALIVE_INTERVAL_S,
    MAX_CHANNELS_PER_CONNECTION,
    HostKeyPolicy,
    OutputSink,
    SshResult,
    SshTarget,
    SupportsWriteBytes,
)
from homeops.core.ssh.openssh import nix_sshopts, openssh_options
from homeops.core.ssh.pool import SshPool
from homeops.core.ssh.shell import (
    RemoteShell,
    posix_command,
    powershell_command,
    powershell_script,
    remote_command,
)

__all__ = [
    "CANCEL_GRACE_S",
    "CANCEL_KILL_BUDGET_S",
    "DEFAULT_MAX_OUTPUT",
    "KEEPALIVE_COUNT_MAX",
    "KEEPALIVE_INTERVAL_S",
    "KILL_BUDGET_S",
    "KILL_GRACE_S",
    "MAX_CHANNELS_PER_CONNECTION",
    "NO_EXIT_STATUS",
    "HostKeyPolicy",
    "OutputSink",
    "RemoteShell",
    "SshPool",
    "SshResult",
    "SshTarget",
    "SupportsWriteBytes",
    "append_known_host",
    "is_retryable_ssh_error",
    "nix_sshopts",
    "openssh_options",
    "posix_command",
    "powershell_command",
    "powershell_script",
    "remote_command",
]
