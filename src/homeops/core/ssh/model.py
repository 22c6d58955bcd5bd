"""What callers of the SSH seam pass in and get back: targets, results, output sinks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, Protocol, get_args

from homeops.core.output import CapturedOutput
from homeops.core.ssh.shell import RemoteShell

DEFAULT_PORT: Final = 22
# OpenSSH's default MaxSessions: where the pool starts until a server refuses fewer.
MAX_CHANNELS_PER_CONNECTION: Final = 10
# Captured output kept per stream by default; beyond it bytes are counted, not kept. Large
# enough for any listing or log a command prints, small enough that a runaway command cannot
# take the host's memory. A caller expecting more streams it to a sink.
DEFAULT_MAX_OUTPUT: Final = 64 * 1024 * 1024
# A dead peer is noticed after KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT_MAX + 1) seconds of
# silence: 3 s apart, 2 unanswered (asyncssh gives up when the next one is due), so ~9 s.
KEEPALIVE_INTERVAL_S: Final = 3.0
KEEPALIVE_COUNT_MAX: Final = 2


class HostKeyPolicy(StrEnum):
    """How to treat a server whose host key is not in known_hosts."""

    STRICT = "strict"
    ACCEPT_NEW = "accept-new"


@dataclass(frozen=True)
class SshTarget:
    """Where and how to log in; ``known_hosts=None`` means ``~/.ssh/known_hosts``.

    ``max_sessions`` is the server's MaxSessions when known: the pool then never opens more
    channels than that on one connection. ``None`` learns it from the server's refusals,
    starting from OpenSSH's default of 10.

    ``remote_shell`` is the shell sshd runs commands with: ``"posix"`` (sh, bash) or
    ``"powershell"`` (Windows OpenSSH, whose default shell is cmd.exe). It decides how an
    argv is quoted (:mod:`homeops.core.ssh.shell`) and how a timed-out command is killed.
    """

    host: str
    user: str
    port: int = DEFAULT_PORT
    identity_file: Path | None = None
    known_hosts: Path | None = None
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    connect_timeout: float = 10.0
    keepalive_interval: float = KEEPALIVE_INTERVAL_S
    keepalive_count_max: int = KEEPALIVE_COUNT_MAX
    max_sessions: int | None = None
    remote_shell: RemoteShell = "posix"

    def __post_init__(self) -> None:
        if self.remote_shell not in get_args(RemoteShell):
            raise ValueError(f"remote_shell must be one of {get_args(RemoteShell)}")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError("max_sessions must be >= 1 (or None to learn it)")

    @property
    def destination(self) -> str:
        """``user@host:port`` for logs and error messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this host under in known_hosts (``[host]:port`` off port 22)."""
        return self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"

    def known_hosts_path(self) -> Path:
        """The known_hosts file used for this target."""
        return self.known_hosts or Path("~/.ssh/known_hosts").expanduser()


# What makes two targets share a connection: where, who, and every setting that decides
# whether a login is trusted (never reuse a connection made under weaker settings).
ConnectionKey = tuple[str, str, int, Path | None, Path, HostKeyPolicy]


def connection_key(target: SshTarget) -> ConnectionKey:
    """The pool's key for ``target``'s connection."""
    return (
        target.user,
        target.host,
        target.port,
        target.identity_file,
        target.known_hosts_path(),
        target.host_key_policy,
    )


def log_fields(target: SshTarget) -> dict[str, object]:
    """The context keys every SSH log line carries."""
    return {"ssh_host": target.host, "ssh_port": target.port, "ssh_user": target.user}


@dataclass(frozen=True)
class SshResult(CapturedOutput):
    """A finished remote command.

    ``exit_status`` is the remote status; killed by a signal it is 128 + the signal number
    (as a shell reports it), and 255 when the server sent no status at all (as ``ssh`` does).
    ``stdout``/``stderr`` are the bytes as sent (empty for a stream given to a sink); decoding
    is the caller's choice (:attr:`stdout_text`, :meth:`text`). ``*_dropped`` counts bytes
    beyond the capture cap that were not kept: the captured bytes are the stream's head.
    """

    exit_status: int
    stdout: bytes
    stderr: bytes
    duration_ms: float
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.exit_status == 0

    @property
    def stdout_truncated(self) -> bool:
        """Whether the cap cut stdout (``stdout_dropped`` bytes are missing from its end)."""
        return self.stdout_dropped > 0

    @property
    def stderr_truncated(self) -> bool:
        """Whether the cap cut stderr (``stderr_dropped`` bytes are missing from its end)."""
        return self.stderr_dropped > 0


class SupportsWriteBytes(Protocol):
    """A binary file or anything else with ``write(bytes)`` (a hash, a socket wrapper)."""

    def write(self, data: bytes, /) -> object: ...


# A callable gets each chunk as it arrives; if it returns an awaitable, reading pauses until
# that is done (the server is held back by the SSH window, so memory stays bounded).
OutputSink = SupportsWriteBytes | Callable[[bytes], Awaitable[object] | object]


class RunsCommands(Protocol):
    """What runs one remote command: :class:`~homeops.core.ssh.pool.SshPool` (asyncssh,
    pooled in this process) and :class:`~homeops.core.ssh.oneshot.OneShotSsh` (OpenSSH's
    ``ssh`` over a master shared between processes, for one-command CLI calls)."""

    async def run(
        self,
        target: SshTarget,
        command: str,
        *,
        stdin: str | bytes | None = None,
        timeout: float,
        check: bool = False,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        display: str | None = None,
    ) -> SshResult: ...
