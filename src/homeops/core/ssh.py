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
# After a timeout the remote command gets SIGTERM, then this long before SIGKILL.
KILL_GRACE_S: Final = 2.0
# After SIGKILL, how long to wait for the server to report the exit before closing anyway.
KILL_WAIT_S: Final = 1.0
# OpenSSH's ssh exits 255 when the server sends no exit status; callers know that convention.
NO_EXIT_STATUS: Final = 255
_EXTENDED_DATA_STDERR: Final = 1
# The fallback killer, run by the login shell on a second channel of the same connection
# (POSIX sh, Linux /proc). Every command channel's shell is a child of the sshd process that
# serves the connection ($PPID here) and leads its own process group (sshd calls setsid).
# The timed-out command text comes on stdin and is matched against the siblings' ``sh -c``
# argument; if nothing matches (the shell exec'd a simple command) but exactly one sibling
# exists, that is the one. Prints the process groups it killed; exit 3 when none was found.
_KILL_SCRIPT: Final = r"""want=$(cat); me=$$; par=$PPID; n=0; only=; hit=
for d in /proc/[0-9]*; do
  c=${d#/proc/}; [ "$c" = "$me" ] && continue
  st=$(cat "$d/stat" 2>/dev/null) || continue
  set -- ${st##*) }; [ "$2" = "$par" ] || continue
  n=$((n+1)); only=$c
  [ "$(tr '\0' '\n' <"$d/cmdline" 2>/dev/null | sed '1,2d')" = "$want" ] && hit="$hit $c"
done
[ -n "$hit" ] || { [ "$n" = 1 ] && hit=$only; }
[ -n "$hit" ] || exit 3
for c in $hit; do kill -s KILL -- "-$c" 2>/dev/null || kill -s KILL "$c"; done
echo $hit"""
_DEFAULT_PORT: Final = 22


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
    def connection_made(self, chan: object) -> None:  # noqa: ARG002
        # Called once the server confirmed the channel open, before the exec request is
        # sent: if this never ran, the command certainly did not start.
        self.opened = True

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
        self._locks: dict[_PoolKey, asyncio.Lock] = {}
        self._seen: set[_PoolKey] = set()  # keys connected before: a new connect is a reconnect
        # Per host, not per connection, so a reconnect does not reset the count.
        self._channels: dict[_PoolKey, asyncio.Semaphore] = {}
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
            limit = self._channels[key] = asyncio.Semaphore(MAX_CHANNELS_PER_CONNECTION)
        return limit

    def _live(self, key: _PoolKey) -> _Conn | None:
        entry = self._conns.get(key)
        return entry if entry is not None and not entry.conn.is_closed() else None

    async def _connection(self, target: SshTarget) -> tuple[_Conn, bool]:
        """The cached connection for ``target``, or a new one; the flag says it is new."""
        if self._closed:
            raise OperationalError("ssh pool is closed")
        key = self._key(target)
        entry = self._live(key)
        if entry is not None:
            return entry, False
        # One lock per host so concurrent first commands share one handshake.
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._live(key)
            if entry is not None:
                return entry, False
            stale = self._conns.pop(key, None)
            if stale is not None:
                stale.conn.abort()
            entry = _Conn(await self._connect(target, reconnect=key in self._seen))
            self._seen.add(key)
            self._conns[key] = entry
            return entry, True

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
        self, target: SshTarget, entry: _Conn, fresh: bool, command: str
    ) -> tuple[SSHClientChannel[bytes], _Collector, _Conn]:
        """Open a channel running ``command``; reconnect once if a reused connection died.

        Reconnecting is safe only while the server has not confirmed the channel: the exec
        request goes out after that, so the command cannot have started.
        """
        import asyncssh

        while True:
            session = _Collector()
            try:
                chan, _ = await entry.conn.create_session(
                    session.factory(),
                    command,
                    encoding=None,
                    request_pty=False,
                )
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
        Raises :class:`HomeopsTimeout` (4) after killing a command that ran too long,
        :class:`SshUnavailable`/:class:`SshAuthError`/:class:`HostKeyError` (3), and with
        ``check`` :class:`OperationalError` (1) naming the last stderr line on non-zero exit.
        """
        start = time.monotonic()
        data = stdin.encode() if isinstance(stdin, str) else stdin
        entry, fresh = await self._connection(target)
        chan: SSHClientChannel[bytes] | None = None
        session: _Collector | None = None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline, self._channel_limit(target):
                chan, session, entry = await self._open(target, entry, fresh, command)
                if data:
                    chan.write(data)
                # Without EOF a command that reads stdin would wait for the timeout.
                chan.write_eof()
                await session.done.wait()
        except TimeoutError:
            if not deadline.expired():
                raise
            killed = await self._kill(target, entry, chan, session, command)
            elapsed = (time.monotonic() - start) * 1000
            _log.warn(
                "run",
                "command timed out, killed" if killed else "command timed out, kill not confirmed",
                duration_ms=elapsed,
                command=mask(command),
                **self._fields(target),
            )
            raise HomeopsTimeout(
                f"ssh {target.destination}: {mask(command)!r} timed out after {timeout:g}s (killed)"
            ) from None
        except asyncio.CancelledError:
            # Cancelled from outside: do not leave the command running, but do not block.
            if chan is not None:
                with contextlib.suppress(Exception):
                    chan.send_signal("KILL")
                chan.close()
            raise
        assert session is not None
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

    async def _kill(
        self,
        target: SshTarget,
        entry: _Conn,
        chan: SSHClientChannel[bytes] | None,
        session: _Collector | None,
        command: str,
    ) -> bool:
        """End a timed-out remote command; return whether its exit was seen.

        First a "signal" channel request: OpenSSH's sshd turns it into killpg() of the
        session's process group, so the shell and its children die. sshd silently refuses it
        for root logins (no privilege-separated child: "session signalling requires privilege
        separation") and for ForceCommand sessions, so if the command is still there after
        the grace period a second channel SIGKILLs its process group (:data:`_KILL_SCRIPT`).
        Closing the channel alone would not do: sshd leaves a no-pty command running.
        """
        if chan is None or session is None:
            return False
        with contextlib.suppress(OSError):  # OSError: the channel closed meanwhile
            chan.send_signal("TERM")
        if not await _wait(session.exited, KILL_GRACE_S):
            with contextlib.suppress(OSError):
                chan.send_signal("KILL")
            if not await _wait(session.exited, 0.2):
                await self._kill_by_script(target, entry, command)
                await _wait(session.exited, KILL_WAIT_S)
        chan.close()
        return session.exited.is_set()

    async def _kill_by_script(self, target: SshTarget, entry: _Conn, command: str) -> None:
        """SIGKILL the process group of ``command``'s session from a second channel."""
        import asyncssh

        session = _Collector()
        try:
            async with asyncio.timeout(KILL_WAIT_S * 3):
                chan, _ = await entry.conn.create_session(
                    session.factory(), _KILL_SCRIPT, encoding=None, request_pty=False
                )
                chan.write(command.encode())
                chan.write_eof()
                await session.done.wait()
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            _log.warn("run", "fallback kill failed", err=_one_line(exc), **self._fields(target))
            return
        _log.info(
            "run",
            "killed timed-out command by process group",
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
        """Close every connection; the pool cannot be used afterwards."""
        self._closed = True
        entries = list(self._conns.values())
        self._conns.clear()
        for entry in entries:
            entry.conn.close()
        for entry in entries:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.conn.wait_closed(), 5)
