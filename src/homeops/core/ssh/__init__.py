"""The only place homeops opens SSH: a pool of reused asyncssh connections.

One connection per (user, host, port) carries every command and SFTP transfer to that host
(a target with other credentials or host-key settings gets its own connection, so a
connection is never reused under weaker settings than the caller asked for). Host keys are
checked against a known_hosts file; ``accept-new`` must be asked for. Only establishing a
connection is retried; authentication, host-key and remote command failures never are. Every
asyncssh exception is translated here into a :mod:`homeops.core.errors` class.
docs/ssh.md describes the behaviour: deadlines, retries, keepalive, session queueing,
binary output and sinks, kill confirmation, SFTP atomicity.

asyncssh costs about half a second to import, so it is imported inside the functions that
need it: importing this package (and ``homeops --help``) stays cheap.

Modules: ``model`` (targets, results, sinks), ``connect`` (retry predicate, trust, keys),
``channel`` (one command's channel, session slots), ``kill`` (kill outcomes, the fallback
killer), ``pool`` (:class:`SshPool`).
"""

from homeops.core.ssh.channel import NO_EXIT_STATUS
from homeops.core.ssh.connect import append_known_host, is_retryable_ssh_error
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
from homeops.core.ssh.pool import SshPool

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
    "SshPool",
    "SshResult",
    "SshTarget",
    "SupportsWriteBytes",
    "append_known_host",
    "is_retryable_ssh_error",
]
