"""The only place homeops opens SSH: a pool of reused asyncssh connections.

One connection per (user, host, port) carries every command and SFTP transfer to that host
(a target with other credentials or host-key settings gets its own connection, so a
connection is never reused under weaker settings than the caller asked for). Host keys are
checked against a known_hosts file; ``accept-new`` must be asked for. Only establishing a
connection is retried; authentication, host-key and remote command failures never are. Every
asyncssh exception is translated here into a :mod:`homeops.core.errors` class.

asyncssh costs about half a second to import, so it is imported inside the functions that
need it: importing this module (and ``homeops --help``) stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal as _signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, cast

from homeops.core.errors import (
    ConfigError,
    HomeopsError,
    HomeopsTimeout,
    HostKeyError,
    OperationalError,
    SshAuthError,
    SshUnavailable,
)
from homeops.core.logging import get_logger, mask
from homeops.core.retry import SEED_POLICY, RetryPolicy, Sleep, retry_async

if TYPE_CHECKING:
    from asyncssh import (
        SSHClient,
        SSHClientChannel,
        SSHClientConnection,
        SSHClientSession,
        SSHKey,
        SSHKnownHosts,
    )

_log = get_logger("core.ssh")

# OpenSSH's default MaxSessions: more channels at once on one connection are refused.
MAX_CHANNELS_PER_CONNECTION: Final = 10
# Commands and SFTP transfers share all but one of them. The last is kept for the fallback
# killer (:data:`_KILL_SCRIPT`), so a kill is never refused because every session is busy:
# a command holds its channel slot until its kill has finished.
_COMMAND_CHANNELS: Final = MAX_CHANNELS_PER_CONNECTION - 1
# After a timeout the remote command gets SIGTERM, then this long before SIGKILL.
KILL_GRACE_S: Final = 2.0
# A cancelled run() (job cancel, per-job timeout) gives the command this SIGTERM grace, and
# waits at most CANCEL_KILL_BUDGET_S for the kill before it lets the cancellation go on (the
# kill itself goes on in the background; the pool's close() waits for it).
CANCEL_GRACE_S: Final = 0.5
CANCEL_KILL_BUDGET_S: Final = 3.0
# After SIGKILL, how long to wait for the server to report the exit before closing anyway.
KILL_WAIT_S: Final = 1.0
# How long close() waits for kills still running before it closes their connections.
_CLOSE_KILL_WAIT_S: Final = 10.0
# Pauses before trying again a channel open the server refused (see _create_session).
_REFUSED_OPEN_PAUSES_S: Final = (0.01, 0.05, 0.1, 0.25)
# OpenSSH's ssh exits 255 when the server sends no exit status; callers know that convention.
NO_EXIT_STATUS: Final = 255
_EXTENDED_DATA_STDERR: Final = 1
# The fallback killer, run by the login shell on a second channel of the same connection
# (POSIX sh, Linux /proc). Every command channel's shell is a child of the sshd process that
# serves the connection ($PPID here) and leads its own process group (sshd calls setsid).
# The timed-out command text comes on stdin and is matched against the siblings' ``sh -c``
# argument; if nothing matches (the shell exec'd a simple command) but exactly one sibling
# exists, that is the one. Prints the process groups it killed; exit 3 when none was found.
# Only shell builtins run per process (``read``, not ``cat``): a fork each would cost ~1 ms per
# process on the host, and kills queue for the one channel kept for them.
_KILL_SCRIPT: Final = r"""want=$(cat); me=$$; par=$PPID; n=0; only=; hit=
for d in /proc/[0-9]*; do
  c=${d#/proc/}; [ "$c" = "$me" ] && continue
  { read -r st <"$d/stat"; } 2>/dev/null || continue
  set -- ${st##*) }; [ "$2" = "$par" ] || continue
  n=$((n+1)); only=$c
  [ "$(tr '\0' '\n' <"$d/cmdline" 2>/dev/null | sed '1,2d')" = "$want" ] && hit="$hit $c"
done
[ -n "$hit" ] || { [ "$n" = 1 ] && hit=$only; }
[ -n "$hit" ] || exit 3
for c in $hit; do kill -s KILL -- "-$c" 2>/dev/null || kill -s KILL "$c"; done
echo $hit"""
_DEFAULT_PORT: Final = 22


class _Kill(StrEnum):
    """How a timed-out or cancelled command ended (the ``kill=`` log field)."""

    NONE = "none"  # no channel had opened: the command never started
    EXITED = "exited"  # it had already exited when the kill began
    SIGNAL = "signal"  # the "signal" channel request (sshd's killpg) ended it
    PROCESS_GROUP = "process-group"  # the fallback killer ended it
    UNCONFIRMED = "unconfirmed"  # no exit seen: it may still be running
    PENDING = "pending"  # still being killed in the background (a cancelled run stopped waiting)

    @property
    def ended(self) -> bool:
        return self in (_Kill.EXITED, _Kill.SIGNAL, _Kill.PROCESS_GROUP)


class HostKeyPolicy(StrEnum):
    """How to treat a server whose host key is not in known_hosts."""

    STRICT = "strict"
    ACCEPT_NEW = "accept-new"


@dataclass(frozen=True)
class SshTarget:
    """Where and how to log in; ``known_hosts=None`` means ``~/.ssh/known_hosts``."""

    host: str
    user: str
    port: int = _DEFAULT_PORT
    identity_file: Path | None = None
    known_hosts: Path | None = None
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3

    @property
    def destination(self) -> str:
        """``user@host:port`` for logs and error messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this host under in known_hosts (``[host]:port`` off port 22)."""
        return self.host if self.port == _DEFAULT_PORT else f"[{self.host}]:{self.port}"

    def known_hosts_path(self) -> Path:
        """The known_hosts file used for this target."""
        return self.known_hosts or Path("~/.ssh/known_hosts").expanduser()


@dataclass(frozen=True)
class SshResult:
    """A finished remote command.

    ``exit_status`` is the remote status; killed by a signal it is 128 + the signal number
    (as a shell reports it), and 255 when the server sent no status at all (as ``ssh`` does).
    """

    exit_status: int
    stdout: str
    stderr: str
    duration_ms: float

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.exit_status == 0


def is_retryable_ssh_error(exc: BaseException) -> bool:
    """Whether a failed connection attempt is worth another try.

    True for transport failures (refused, unreachable, reset, lost, connect timeout); false for
    authentication, host-key, protocol-negotiation errors and everything homeops raised itself.
    """
    if isinstance(exc, HomeopsError):
        return False
    # Only asyncssh raises asyncssh exceptions: if it is not loaded, do not pay to import it.
    if "asyncssh" in sys.modules:
        import asyncssh

        if isinstance(exc, asyncssh.Error):
            final = (
                asyncssh.PermissionDenied,
                asyncssh.HostKeyNotVerifiable,
                asyncssh.IllegalUserName,
                asyncssh.KeyExchangeFailed,
                asyncssh.ProtocolNotSupported,
            )
            # ConnectionLost and a bare disconnect (server restarting, MaxStartups) are
            # transient; the rest say the two sides will never agree, so trying again is noise.
            return isinstance(exc, asyncssh.DisconnectError) and not isinstance(exc, final)
    # Local file problems are OSErrors too, but no amount of waiting fixes them.
    local = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    return isinstance(exc, OSError) and not isinstance(exc, local)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text or type(exc).__name__


def _translate_connect_error(exc: BaseException, target: SshTarget, attempts: int) -> HomeopsError:
    """Map what connecting raised to a homeops error (all exit 3)."""
    import asyncssh

    dest = target.destination
    match exc:
        case HomeopsError():
            return exc
        case asyncssh.PermissionDenied():
            return SshAuthError(f"ssh {dest}: authentication failed: {_one_line(exc)}")
        case asyncssh.HostKeyNotVerifiable():
            return HostKeyError(
                f"ssh {dest}: host key not trusted by {target.known_hosts_path()}"
                f" ({target.host_key_policy}): {_one_line(exc)}"
            )
        case TimeoutError():
            cause = f"connect timed out after {target.connect_timeout:g}s"
        case _:
            cause = _one_line(exc)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return SshUnavailable(f"ssh {dest}: cannot connect{tries}: {cause}")


def _signal_number(name: str) -> int:
    try:
        return int(_signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0


class _Collector:
    """One remote command's session: buffers output and records how it ended.

    Implements asyncssh's ``SSHClientSession`` callbacks directly (duck-typed, so this module
    needs no asyncssh import at load time); bytes in, decoded once at the end.
    """

    def __init__(self) -> None:
        self.opened = False
        self.chan: SSHClientChannel[bytes] | None = None
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.error: Exception | None = None
        # Events, not Futures: a timeout cancelling the waiter must not cancel the result.
        self.done = asyncio.Event()
        # Set when the server reports how the command ended (or the channel is gone).
        self.exited = asyncio.Event()

    # The callback signatures are asyncssh's; unused arguments are part of that protocol.
    def connection_made(self, chan: object) -> None:
        # Called once the server confirmed the channel open, before the exec request is
        # sent: if this never ran, the command certainly did not start. From here on the
        # command may be running, so keep the channel to kill it by.
        self.opened = True
        self.chan = cast("SSHClientChannel[bytes]", chan)

    def session_started(self) -> None:
        pass

    def data_received(self, data: bytes, datatype: int | None) -> None:
        (self.stderr if datatype == _EXTENDED_DATA_STDERR else self.stdout).append(data)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def xon_xoff_requested(self, client_can_do: bool) -> None:
        pass

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status
        self.exited.set()

    def exit_signal_received(
        self,
        signal: str,
        core_dumped: bool,  # noqa: ARG002
        msg: str,  # noqa: ARG002
        lang: str,  # noqa: ARG002
    ) -> None:
        self.exit_signal = signal
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        self.exited.set()
        self.done.set()

    def factory(self) -> Callable[[], SSHClientSession[bytes]]:
        """A session factory for ``create_session`` that hands out this collector."""
        return lambda: cast("SSHClientSession[bytes]", self)

    def status(self) -> int:
        if self.exit_status is not None:
            return self.exit_status
        if self.exit_signal is not None:
            return 128 + _signal_number(self.exit_signal)
        return NO_EXIT_STATUS


async def _create_session(
    conn: SSHClientConnection, session: _Collector, command: str
) -> SSHClientChannel[bytes]:
    """Open a channel running ``command`` with ``session`` as its callbacks.

    sshd frees a closed channel's session slot only a moment after the close: an open sent
    right after another channel closed can be refused ("open failed") although the count
    leaves room. A refused open started nothing, so it is tried again a few times.
    """
    import asyncssh

    pauses = iter(_REFUSED_OPEN_PAUSES_S)
    while True:
        try:
            chan, _ = await conn.create_session(
                session.factory(), command, encoding=None, request_pty=False
            )
        except asyncssh.ChannelOpenError:
            pause = next(pauses, None)
            if pause is None or conn.is_closed():
                raise
            await asyncio.sleep(pause)
        else:
            return chan


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


def _load_known_hosts(target: SshTarget) -> SSHKnownHosts:
    import asyncssh

    path = target.known_hosts_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        # No file is an empty trust list: STRICT then refuses every host, ACCEPT_NEW starts it.
        text = ""
    except OSError as exc:
        raise ConfigError(str(path), "known_hosts", _one_line(exc)) from exc
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise ConfigError(str(path), "known_hosts", _one_line(exc)) from exc


def _load_identity(path: Path) -> SSHKey:
    import asyncssh

    # Loaded once up front: a missing or encrypted key is a config error, not worth retrying.
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise ConfigError(str(path), "identity_file", _one_line(exc)) from exc


def append_known_host(path: Path, name: str, key_line: str) -> None:
    """Append ``name key_line`` to known_hosts, creating it 0600 (and its dir 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as out:
        # Never glue the new entry onto a last line that lacks its newline.
        if out.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            out.write("\n")
        out.write(f"{name} {key_line}\n")


def _client_factory(
    target: SshTarget, known: SSHKnownHosts, accepted: list[SSHKey]
) -> type[SSHClient]:
    """An asyncssh client class that applies ``target.host_key_policy``."""
    import asyncssh

    accept_new = target.host_key_policy is HostKeyPolicy.ACCEPT_NEW

    class _Client(asyncssh.SSHClient):
        def validate_host_public_key(self, host: str, addr: str, port: int, key: SSHKey) -> bool:
            # asyncssh asks only when known_hosts does not already trust ``key``. Like
            # OpenSSH's accept-new: trust it only if the host has no entry at all; a host with
            # any entry (another key, a CA, a revocation) presenting this key is a mismatch.
            if not accept_new:
                return False
            lookup_port = None if port == _DEFAULT_PORT else port
            if any(asyncssh.match_known_hosts(known, host, addr, lookup_port)):
                return False
            accepted.append(key)
            return True

    return _Client


@dataclass
class _Conn:
    """A live connection (a box, so a dropped connection is told apart from its successor)."""

    conn: SSHClientConnection


_PoolKey = tuple[str, str, int, Path | None, Path, HostKeyPolicy]


class SshPool:
    """Reusable SSH connections, one per (user, host, port); use as ``async with SshPool()``.

    ``policy`` and ``sleep`` govern only retries of connection establishment.
    """

    def __init__(self, *, policy: RetryPolicy = SEED_POLICY, sleep: Sleep = asyncio.sleep) -> None:
        self._policy = policy
        self._sleep = sleep
        self._conns: dict[_PoolKey, _Conn] = {}
        # The connect in flight per host: every command that needs the host meanwhile waits
        # for this one task and gets its connection or its failure.
        self._connecting: dict[_PoolKey, asyncio.Task[_Conn]] = {}
        self._seen: set[_PoolKey] = set()  # keys connected before: a new connect is a reconnect
        # Per host, not per connection, so a reconnect does not reset the count.
        self._channels: dict[_PoolKey, asyncio.Semaphore] = {}
        self._kill_channels: dict[_PoolKey, asyncio.Semaphore] = {}
        # Kills running in tasks of their own, so they outlive their caller's cancellation.
        self._kills: set[asyncio.Task[_Kill]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @staticmethod
    def _key(target: SshTarget) -> _PoolKey:
        return (
            target.user,
            target.host,
            target.port,
            target.identity_file,
            target.known_hosts_path(),
            target.host_key_policy,
        )

    def _channel_limit(self, target: SshTarget) -> asyncio.Semaphore:
        key = self._key(target)
        limit = self._channels.get(key)
        if limit is None:
            limit = self._channels[key] = asyncio.Semaphore(_COMMAND_CHANNELS)
        return limit

    def _kill_channel(self, target: SshTarget) -> asyncio.Semaphore:
        key = self._key(target)
        limit = self._kill_channels.get(key)
        if limit is None:
            limit = self._kill_channels[key] = asyncio.Semaphore(1)
        return limit

    def _live(self, key: _PoolKey) -> _Conn | None:
        entry = self._conns.get(key)
        return entry if entry is not None and not entry.conn.is_closed() else None

    async def _connection(self, target: SshTarget) -> tuple[_Conn, bool]:
        """The cached connection for ``target``, or a new one; the flag says it is new.

        Concurrent first commands to a host share one connect (with its retries): all of
        them get its connection, or its failure. The failure is not remembered beyond the
        commands already waiting: the next command after it starts a new connect, as a
        host that was just down may be back, and the retry policy already spaced the tries.
        """
        if self._closed:
            raise OperationalError("ssh pool is closed")
        key = self._key(target)
        entry = self._live(key)
        if entry is not None:
            return entry, False
        pending = self._connecting.get(key)
        if pending is None or pending.done():
            stale = self._conns.pop(key, None)
            if stale is not None:
                stale.conn.abort()
            pending = asyncio.create_task(self._establish(target, key))
            self._connecting[key] = pending
            pending.add_done_callback(functools.partial(self._connect_done, key))
        # Shielded: one waiter cancelled must not cancel the connect the others wait for.
        return await asyncio.shield(pending), True

    async def _establish(self, target: SshTarget, key: _PoolKey) -> _Conn:
        conn = await self._connect(target, reconnect=key in self._seen)
        if self._closed:
            conn.abort()
            raise OperationalError("ssh pool is closed")
        self._seen.add(key)
        entry = self._conns[key] = _Conn(conn)
        return entry

    def _connect_done(self, key: _PoolKey, task: asyncio.Task[_Conn]) -> None:
        if self._connecting.get(key) is task:
            del self._connecting[key]
        # Every waiter may have been cancelled; the failure was logged by _connect already.
        if not task.cancelled():
            task.exception()

    def _drop(self, target: SshTarget, entry: _Conn) -> None:
        key = self._key(target)
        if self._conns.get(key) is entry:
            del self._conns[key]
        entry.conn.abort()

    async def _connect(self, target: SshTarget, *, reconnect: bool) -> SSHClientConnection:
        import asyncssh

        known = _load_known_hosts(target)
        keys = [_load_identity(target.identity_file)] if target.identity_file else ()
        accepted: list[SSHKey] = []
        client = _client_factory(target, known, accepted)
        attempts = 0

        async def attempt() -> SSHClientConnection:
            nonlocal attempts
            attempts += 1
            accepted.clear()
            return await asyncssh.connect(
                target.host,
                target.port,
                username=target.user,
                client_factory=client,
                known_hosts=known,
                # An explicit key means only that key (OpenSSH's IdentitiesOnly); otherwise
                # asyncssh's defaults: the agent and ~/.ssh/id_*.
                client_keys=keys,
                agent_path=None if target.identity_file else (),
                password_auth=False,
                kbdint_auth=False,
                gss_auth=False,
                host_based_auth=False,
                # Our settings are the whole truth: no ~/.ssh/config surprises.
                config=None,
                connect_timeout=target.connect_timeout,
                keepalive_interval=target.keepalive_interval,
                keepalive_count_max=target.keepalive_count_max,
            )

        start = time.monotonic()
        try:
            conn = await retry_async(
                attempt,
                policy=self._policy,
                retry_if=is_retryable_ssh_error,
                op="connect",
                sleep=self._sleep,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _translate_connect_error(exc, target, attempts)
            _log.warn(
                "connect",
                "connection failed",
                err=error,
                attempts=attempts,
                **self._fields(target),
            )
            raise error from exc
        if accepted:
            self._accept_new_key(target, accepted[-1])
        _log.info(
            "connect",
            "reconnected" if reconnect else "connected",
            duration_ms=(time.monotonic() - start) * 1000,
            attempts=attempts,
            **self._fields(target),
        )
        return conn

    @staticmethod
    def _accept_new_key(target: SshTarget, key: SSHKey) -> None:
        path = target.known_hosts_path()
        kind, blob, *_ = key.export_public_key("openssh").decode().split()
        append_known_host(path, target.known_hosts_name, f"{kind} {blob}")
        _log.warn(
            "connect",
            "accepted new host key (accept-new)",
            known_hosts=str(path),
            host_key=f"{kind} {key.get_fingerprint()}",
            **SshPool._fields(target),
        )

    @staticmethod
    def _fields(target: SshTarget) -> dict[str, object]:
        return {"ssh_host": target.host, "ssh_port": target.port, "ssh_user": target.user}

    async def _open(
        self,
        target: SshTarget,
        entry: _Conn,
        fresh: bool,
        command: str,
        tried: list[tuple[_Collector, _Conn]],
    ) -> tuple[SSHClientChannel[bytes], _Collector, _Conn]:
        """Open a channel running ``command``; reconnect once if a reused connection died.

        Reconnecting is safe only while the server has not confirmed the channel: the exec
        request goes out after that, so the command cannot have started. Each session tried
        is appended to ``tried`` at once, so a timeout or cancellation arriving before this
        returns still finds the channel to kill.
        """
        import asyncssh

        while True:
            session = _Collector()
            tried.append((session, entry))
            try:
                chan = await _create_session(entry.conn, session, command)
            except (OSError, asyncssh.Error) as exc:
                # "SSH connection closed" arrives as a ChannelOpenError: look at the connection.
                lost = entry.conn.is_closed() or not isinstance(exc, asyncssh.ChannelOpenError)
                if not lost:
                    raise SshUnavailable(
                        f"ssh {target.destination}: server refused a session: {_one_line(exc)}"
                    ) from exc
                self._drop(target, entry)
                if fresh or session.opened:
                    raise SshUnavailable(
                        f"ssh {target.destination}: connection lost starting command:"
                        f" {_one_line(exc)}"
                    ) from exc
                _log.info("run", "cached connection was lost, reconnecting", **self._fields(target))
                entry, fresh = await self._connection(target)
                continue
            return chan, session, entry

    async def run(
        self,
        target: SshTarget,
        command: str,
        *,
        stdin: str | bytes | None = None,
        timeout: float,
        check: bool = False,
    ) -> SshResult:
        """Run ``command`` on ``target`` within ``timeout`` seconds (killed remotely after).

        Connecting is bounded separately by ``target.connect_timeout`` per attempt.
        Raises :class:`HomeopsTimeout` (4) after killing a command that ran too long (its
        message says whether the command had started and whether the kill was confirmed),
        :class:`SshUnavailable`/:class:`SshAuthError`/:class:`HostKeyError` (3), and with
        ``check`` :class:`OperationalError` (1) naming the last stderr line on non-zero exit.
        Cancelling the call kills the remote command the same way (a shorter SIGTERM grace)
        and waits up to :data:`CANCEL_KILL_BUDGET_S` for that before the cancellation goes on.
        """
        start = time.monotonic()
        data = stdin.encode() if isinstance(stdin, str) else stdin
        entry, fresh = await self._connection(target)
        tried: list[tuple[_Collector, _Conn]] = []
        limit = self._channel_limit(target)
        holding = False  # whether this call holds a channel slot (released when it is done)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await limit.acquire()
                holding = True
                chan, session, entry = await self._open(target, entry, fresh, command, tried)
                if data:
                    chan.write(data)
                # Without EOF a command that reads stdin would wait for the timeout.
                chan.write_eof()
                await session.done.wait()
        except TimeoutError:
            if not deadline.expired():
                raise
            kill = self._start_kill(target, tried, command, KILL_GRACE_S, holding, limit)
            holding = holding and kill is None  # a kill task releases the slot when it is done
            how = await self._kill_outcome(target, command, kill, None)
            self._log_stopped("command timed out", how, start, command, target)
            ending = {
                _Kill.NONE: "before the command started",
                _Kill.EXITED: "(remote command had ended)",
                _Kill.UNCONFIRMED: "(kill not confirmed: the remote command may still run)",
            }.get(how, "(remote command killed)")
            raise HomeopsTimeout(
                f"ssh {target.destination}: {mask(command)!r} timed out after {timeout:g}s {ending}"
            ) from None
        except asyncio.CancelledError:
            # Cancelled from outside (a job's cancel or its own timeout): do not leave the
            # command running, but give the kill a bounded time before cancelling goes on.
            kill = self._start_kill(target, tried, command, CANCEL_GRACE_S, holding, limit)
            holding = holding and kill is None
            how = await self._kill_outcome(target, command, kill, CANCEL_KILL_BUDGET_S)
            self._log_stopped("command cancelled", how, start, command, target)
            raise
        finally:
            if holding:
                limit.release()
        elapsed = (time.monotonic() - start) * 1000
        if (
            session.error is not None
            and session.exit_status is None
            and session.exit_signal is None
        ):
            self._drop(target, entry)
            raise SshUnavailable(
                f"ssh {target.destination}: connection lost while running command:"
                f" {_one_line(session.error)}"
            ) from session.error
        result = SshResult(
            session.status(),
            b"".join(session.stdout).decode("utf-8", "replace"),
            b"".join(session.stderr).decode("utf-8", "replace"),
            elapsed,
        )
        if _log.enabled("debug"):
            _log.debug(
                "run",
                "command finished",
                duration_ms=elapsed,
                exit_status=result.exit_status,
                command=mask(command),
                **self._fields(target),
            )
        if check and not result.ok:
            tail = result.stderr.strip().splitlines()[-1:] or ["no stderr"]
            raise OperationalError(
                f"ssh {target.destination}: {mask(command)!r}: exit {result.exit_status}:"
                f" {mask(tail[0])}"
            )
        return result

    def _start_kill(
        self,
        target: SshTarget,
        tried: list[tuple[_Collector, _Conn]],
        command: str,
        grace: float,
        holding: bool,
        limit: asyncio.Semaphore,
    ) -> asyncio.Task[_Kill] | None:
        """Start killing the command ``run`` started; None if no channel had opened.

        The kill runs in a task of its own, so cancelling the caller (again), or the caller
        giving up waiting, does not stop the kill; the caller's channel slot (if ``holding``)
        is handed to that task, which releases it when the kill is over.
        """
        session, entry = tried[-1] if tried else (None, None)
        if session is None or entry is None or session.chan is None:
            return None
        task = asyncio.create_task(self._kill(target, entry, session, command, grace))
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)
        if holding:
            task.add_done_callback(lambda _: limit.release())
        return task

    async def _kill_outcome(
        self,
        target: SshTarget,
        command: str,
        kill: asyncio.Task[_Kill] | None,
        wait_s: float | None,
    ) -> _Kill:
        """Wait up to ``wait_s`` seconds (None: until done) for ``kill``; how it ended."""
        if kill is None:
            return _Kill.NONE
        # asyncio.wait never cancels what it waits for: the kill outlives this wait.
        await asyncio.wait({kill}, timeout=wait_s)
        if not kill.done():
            kill.add_done_callback(functools.partial(self._log_late_kill, target, command))
            return _Kill.PENDING
        return self._kill_result(target, kill)

    def _kill_result(self, target: SshTarget, kill: asyncio.Task[_Kill]) -> _Kill:
        if kill.cancelled():
            return _Kill.UNCONFIRMED
        exc = kill.exception()
        if exc is not None:  # a failed kill must not hide the timeout or cancellation
            _log.warn("run", "kill failed", err=_one_line(exc), **self._fields(target))
            return _Kill.UNCONFIRMED
        return kill.result()

    def _log_late_kill(self, target: SshTarget, command: str, kill: asyncio.Task[_Kill]) -> None:
        how = self._kill_result(target, kill)
        (_log.info if how.ended else _log.warn)(
            "run", "kill finished", kill=str(how), command=mask(command), **self._fields(target)
        )

    async def _kill(
        self,
        target: SshTarget,
        entry: _Conn,
        session: _Collector,
        command: str,
        grace: float,
    ) -> _Kill:
        """End a started remote command: SIGTERM, ``grace`` seconds, SIGKILL, fallback.

        First a "signal" channel request: OpenSSH's sshd turns it into killpg() of the
        session's process group, so the shell and its children die. sshd silently refuses it
        for root logins (no privilege-separated child: "session signalling requires privilege
        separation") and for ForceCommand sessions, so if the command is still there after
        the grace period a second channel SIGKILLs its process group (:data:`_KILL_SCRIPT`).
        Closing the channel alone would not do: sshd leaves a no-pty command running.
        """
        chan = session.chan
        assert chan is not None
        if session.exited.is_set():
            chan.close()
            return _Kill.EXITED
        try:
            with contextlib.suppress(OSError):  # OSError: the channel closed meanwhile
                chan.send_signal("TERM")
            if await _wait(session.exited, grace):
                return _Kill.SIGNAL
            with contextlib.suppress(OSError):
                chan.send_signal("KILL")
            if await _wait(session.exited, 0.2):
                return _Kill.SIGNAL
            await self._kill_by_script(target, entry, command)
            await _wait(session.exited, KILL_WAIT_S)
        finally:
            chan.close()
        return _Kill.PROCESS_GROUP if session.exited.is_set() else _Kill.UNCONFIRMED

    def _log_stopped(
        self, what: str, how: _Kill, start: float, command: str, target: SshTarget
    ) -> None:
        # A timeout is worth a warning; a cancellation only when the command may live on.
        if what == "command timed out" or how is _Kill.UNCONFIRMED:
            log = _log.warn
        else:
            log = _log.debug if how is _Kill.NONE else _log.info
        log(
            "run",
            what,
            kill=str(how),
            duration_ms=(time.monotonic() - start) * 1000,
            command=mask(command),
            **self._fields(target),
        )

    async def _kill_by_script(self, target: SshTarget, entry: _Conn, command: str) -> None:
        """SIGKILL the process group of ``command``'s session from a second channel."""
        import asyncssh

        session = _Collector()
        try:
            # The channel kept for kills: its holder lets go within KILL_WAIT_S * 3 seconds,
            # so waiting for it is bounded without a timeout of its own (kills queue here).
            async with self._kill_channel(target), asyncio.timeout(KILL_WAIT_S * 3):
                chan = await _create_session(entry.conn, session, _KILL_SCRIPT)
                chan.write(command.encode())
                chan.write_eof()
                await session.done.wait()
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            _log.warn("run", "fallback kill failed", err=_one_line(exc), **self._fields(target))
            return
        _log.info(
            "run",
            "killed command by process group",
            exit_status=session.status(),
            pgids=b"".join(session.stdout).decode(errors="replace").strip(),
            **self._fields(target),
        )

    async def _sftp(self, target: SshTarget, op: str, src: str, dst: str, timeout: float) -> None:
        import asyncssh

        start = time.monotonic()
        entry, _ = await self._connection(target)
        what = f"ssh {target.destination}: sftp {op} {src} -> {dst}"
        try:
            async with (
                asyncio.timeout(timeout),
                self._channel_limit(target),
                entry.conn.start_sftp_client() as sftp,
            ):
                if op == "put":
                    await sftp.put(src, dst)
                else:
                    await sftp.get(src, dst)
        except TimeoutError as exc:
            raise HomeopsTimeout(f"{what}: timed out after {timeout:g}s") from exc
        except (asyncssh.DisconnectError, asyncssh.SFTPConnectionLost, ConnectionError) as exc:
            self._drop(target, entry)
            raise SshUnavailable(f"{what}: connection lost: {_one_line(exc)}") from exc
        except asyncssh.ChannelOpenError as exc:
            raise SshUnavailable(f"{what}: server refused sftp: {_one_line(exc)}") from exc
        except (asyncssh.SFTPError, OSError) as exc:
            raise OperationalError(f"{what}: {_one_line(exc)}") from exc
        _log.debug(
            "sftp",
            f"{op} done",
            duration_ms=(time.monotonic() - start) * 1000,
            src=src,
            dst=dst,
            **self._fields(target),
        )

    async def put(self, target: SshTarget, local: Path, remote: str, *, timeout: float) -> None:
        """Copy local file ``local`` to ``remote`` on ``target`` over SFTP."""
        await self._sftp(target, "put", str(local), remote, timeout)

    async def get(self, target: SshTarget, remote: str, local: Path, *, timeout: float) -> None:
        """Copy ``remote`` on ``target`` to local file ``local`` over SFTP."""
        await self._sftp(target, "get", remote, str(local), timeout)

    async def close(self) -> None:
        """Close every connection; the pool cannot be used afterwards.

        Kills still running (of commands that timed out or were cancelled) are waited for
        first, as they need their connection; a connect in flight is cancelled.
        """
        self._closed = True
        if self._kills:
            await asyncio.wait(set(self._kills), timeout=_CLOSE_KILL_WAIT_S)
        connecting = list(self._connecting.values())
        for task in connecting:
            task.cancel()
        if connecting:
            await asyncio.wait(connecting, timeout=5)
        entries = list(self._conns.values())
        self._conns.clear()
        for entry in entries:
            entry.conn.close()
        for entry in entries:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.conn.wait_closed(), 5)
