"""One-shot remote commands through OpenSSH's ``ssh`` over a shared, persisted connection.

A CLI call that runs one command should not pay for importing asyncssh and a fresh SSH
handshake every time. :class:`OneShotSsh` runs ``ssh`` itself with connection sharing, the
way Ansible does: the first call starts a *master* connection (``ControlMaster``) that stays
``ControlPersist`` seconds after its last session, and every later call (from any process)
runs its command as one more session on it, which costs a process start and one round trip.
The master logs in exactly as :class:`~homeops.core.ssh.pool.SshPool` does
(:func:`~homeops.core.ssh.openssh.openssh_options`): the same key only, the target's
known_hosts file and host-key policy, ``BatchMode``, never a prompt.

The calls are the pool's (duck-typed): ``run(target, command, ...) -> SshResult`` with the
same output handling, errors, retries and timeout semantics; ``close()``; ``async with``.

How a call goes, and why:

- The control socket lives in a 0700 directory under the state dir, named by a hash of the
  pool's connection key (so a target with other credentials never shares a master, and the
  path fits in ``sun_path``).
- A master is started by a separate ``ssh … exit 0`` (``ControlMaster=auto``): a failure there
  cannot have run the caller's command, so it is retried under the pool's policy (transport
  failures only; never authentication or host-key failures). Two processes starting one at
  once are harmless: the loser runs its ``exit 0`` on a connection of its own and exits.
- The command itself runs as a mux client only (``ControlMaster=no``, and
  ``ProxyCommand=false`` so that ssh cannot fall back to a connection of its own, which would
  log in without the master and blur what ran where). Its ``-E`` log, at ``DEBUG2`` (never
  shown to anyone, deleted after the call), is how the outcome is known, not guessed from the
  exit code: ``master session id`` means the exec request went out; ``Received exit status
  from master N`` is the remote exit status, even 255. A session that never opened is started
  again (on a new master if the old one is gone, after a pause if the server refused a
  session): it cannot have run.
- A session that opened and ended without an exit status is either a command killed by a
  signal (OpenSSH's multiplexing protocol does not pass exit signals on) or a lost
  connection; if the same master is still alive it was the former and the status is 255, as
  ``ssh`` reports it, otherwise :class:`SshUnavailable` says the command may still run.
- On timeout (or cancellation, or a failing sink) the local ssh client is ended, which leaves
  a no-pty remote command running; then the pool's fallback killer for the target's
  ``remote_shell`` (:data:`~homeops.core.ssh.kill.KILL_SCRIPT`,
  :func:`~homeops.core.ssh.kill.powershell_kill_command`) runs over the same master, told the
  master's TCP endpoints (read from Linux ``/proc``) as the command's ``SSH_CONNECTION``.

Only the standard library and homeops' own light modules are imported; asyncssh never is.
docs/ssh.md ("One-shot commands") has the details and the residual ambiguities.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import re
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from homeops.core import process
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
from homeops.core.paths import default_state_dir
from homeops.core.retry import SEED_POLICY, RetryPolicy, Sleep, retry_async
from homeops.core.ssh.channel import NO_EXIT_STATUS, REFUSED_OPEN_PAUSES_S, OutputStream
from homeops.core.ssh.kill import (
    CANCEL_KILL_BUDGET_S,
    FALLBACK_BUDGET_S,
    KILL_BUDGET_S,
    KILL_SCRIPT,
    Fallback,
    Kill,
    fallback_outcome,
    kill_script_input,
    log_stopped,
    powershell_kill_command,
)
from homeops.core.ssh.model import (
    DEFAULT_MAX_OUTPUT,
    OutputSink,
    SshResult,
    SshTarget,
    connection_key,
    log_fields,
)
from homeops.core.ssh.openssh import control_options, openssh_options

_log = get_logger("core.ssh")

# A master stays this long after its last session: long enough for a burst of CLI calls,
# short enough that an idle host does not keep a login open for long.
DEFAULT_PERSIST_S: Final = 60.0
CONTROL_DIR: Final = "ssh-mux"
# sun_path holds 104 bytes on BSD and macOS (108 on Linux), NUL included. A master first binds
# "<ControlPath>.<16 random characters>" and then links it into place: that must fit.
_SUN_PATH_MAX: Final = 104
_BIND_SUFFIX: Final = 17
_SOCKET_NAME_CHARS: Final = 20
# The mux client's own log level: DEBUG2 is the first that reports the exit status it got
# from the master. It goes to a private file that is read and deleted, never to stderr.
_CLIENT_LOG_LEVEL: Final = "DEBUG2"
# The master's: errors only (it keeps writing to the file after the call has deleted it).
_MASTER_LOG_LEVEL: Final = "ERROR"
# A master that vanishes again right after starting is not chased for ever.
_MASTER_STARTS: Final = 2
# The local ssh client exits at once on SIGTERM; SIGKILL after this.
_CLIENT_TERM_S: Final = 0.5
# After the client exited, how long its master may still hold our pipes.
_PIPE_DRAIN_S: Final = 1.0
_CHUNK: Final = 65536
_EXIT_POLL_S: Final = 0.01
# How long close() waits for kills still running.
_CLOSE_KILL_WAIT_S: Final = 10.0
# Helper calls (-O check/exit) on a local socket.
_CONTROL_CMD_TIMEOUT_S: Final = 5.0

_HELLO = re.compile(r"^debug\d: mux_client_hello_exchange: master version", re.M)
_OPENED = re.compile(r"^debug\d: mux_client_request_session: master session id: \d+", re.M)
_EXIT = re.compile(r"^debug\d: Received exit status from master (\d+)\s*$", re.M)
_REFUSED = "Session open refused by peer"
_MASTER_PID = re.compile(r"Master running \(pid=(\d+)\)")

_HOST_KEY = re.compile(
    r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED"
    r"|host key .*(?:has changed|is known)",
    re.I,
)
_HOST_KEY_DETAIL = re.compile(r"has changed and|host key is known|No .* host key", re.I)
_AUTH = re.compile(r"Permission denied \(")
# Transport failures worth another attempt (the pool retries refused, reset, unreachable,
# lost and timed-out connects, and a name that did not resolve).
_TRANSIENT = re.compile(
    r"Connection refused|Connection timed out|timed out during banner exchange"
    r"|Connection reset|Connection closed by|closed by remote host|No route to host"
    r"|Network is unreachable|Could not resolve hostname|name resolution|Broken pipe"
    r"|kex_exchange_identification",
    re.I,
)


@dataclass(frozen=True)
class MuxLog:
    """What a mux client's ``-E`` log says about its session.

    ``reached``: it spoke to a master; ``opened``: the master confirmed the session, which
    it does right after sending the exec request (the command may have started);
    ``exit_status``: the remote exit status the master passed on; ``messages``: ssh's own
    non-debug lines (errors).
    """

    reached: bool
    opened: bool
    exit_status: int | None
    messages: tuple[str, ...]


def parse_mux_log(text: str) -> MuxLog:
    """Read a mux client's ``LogLevel=DEBUG2`` log (pure)."""
    status = _EXIT.search(text)
    messages = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("debug")
    )
    return MuxLog(
        reached=_HELLO.search(text) is not None,
        opened=_OPENED.search(text) is not None,
        exit_status=int(status.group(1)) if status else None,
        messages=messages,
    )


@dataclass(frozen=True)
class ConnectFailure:
    """Why starting a master failed: the homeops error for it, and whether to try again."""

    error: HomeopsError
    transient: bool


def connect_failure(
    target: SshTarget, log_text: str, returncode: int, attempts: int = 1
) -> ConnectFailure:
    """Classify a failed master start from ssh's log (pure; messages as the pool words them).

    ``attempts`` is how many starts were made, for the message of a transport failure.
    """
    dest = target.destination
    lines = [" ".join(line.split()) for line in log_text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("debug") and "@@@" not in line]
    text = "\n".join(lines)
    if _HOST_KEY.search(text):
        detail = next((ln for ln in lines if _HOST_KEY_DETAIL.search(ln)), None)
        error: HomeopsError = HostKeyError(
            f"ssh {dest}: host key not trusted by {target.known_hosts_path()}"
            f" ({target.host_key_policy}): {detail or 'Host key verification failed.'}"
        )
        return ConnectFailure(error, transient=False)
    auth = next((ln for ln in lines if _AUTH.search(ln)), None)
    if auth is not None:
        return ConnectFailure(
            SshAuthError(f"ssh {dest}: authentication failed: {auth}"), transient=False
        )
    transient = next((ln for ln in lines if _TRANSIENT.search(ln)), None)
    cause = transient or (lines[-1] if lines else f"ssh exited with status {returncode}")
    cause = cause.removeprefix("ssh: ")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return ConnectFailure(
        SshUnavailable(f"ssh {dest}: cannot connect{tries}: {cause}"),
        transient=transient is not None,
    )


class _MasterFailed(Exception):
    """One failed master start (inside the retry loop; translated once it is over)."""

    def __init__(self, failure: ConnectFailure) -> None:
        super().__init__(str(failure.error))
        self.failure = failure


def socket_name(target: SshTarget) -> str:
    """The control socket's file name for ``target``: a hash of the pool's connection key."""
    key = "\0".join(str(part) for part in connection_key(target))
    return hashlib.sha256(key.encode()).hexdigest()[:_SOCKET_NAME_CHARS]


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) + _BIND_SUFFIX < _SUN_PATH_MAX


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory only this user can enter (control sockets are logins)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ConfigError(
            str(path), "state_dir", "SSH control sockets need a directory owned by this user"
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)


def _stat_fields(pid: int) -> list[str] | None:
    # /proc/PID/stat from field 3 on: the command name (field 2) may hold spaces and ")".
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, field 22), or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    fields = _stat_fields(pid)
    return fields is not None and len(fields) > 0 and fields[0] not in ("Z", "X")


def _proc_address(text: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6} (hex, 32-bit words in host byte order) as (ip, port)."""
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    host = socket.inet_ntop(family, raw)
    # sshd prints an IPv4-mapped IPv6 address as plain IPv4.
    if host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")
    return host, int(port_hex, 16)


def tcp_identity(pid: int) -> str | None:
    """``SSH_CONNECTION`` of the one established TCP connection process ``pid`` holds.

    ``"client-ip client-port server-ip server-port"`` as the client sees it (what sshd puts
    in its sessions' environment when no address is translated); None when ``pid`` holds
    none, several, or /proc cannot tell (not Linux, another user's process).
    """
    inodes: set[str] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    except OSError:
        return None
    found: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            # sl local remote state ... inode (field 10); 01 is ESTABLISHED.
            if len(parts) > 9 and parts[3] == "01" and parts[9] in inodes:
                local, remote = _proc_address(parts[1]), _proc_address(parts[2])
                found.append(f"{local[0]} {local[1]} {remote[0]} {remote[1]}")
    return found[0] if len(found) == 1 else None


def _socket_state(path: Path) -> str:
    """``"alive"`` (a master accepts there), ``"stale"`` (a socket nobody listens on) or
    ``"absent"``; connecting is cheap and, unlike ``ssh -O check``, spawns nothing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(os.fsencode(path))
    except BlockingIOError:
        return "alive"  # listening, its backlog full for a moment
    except (ConnectionRefusedError, ConnectionResetError):
        return "stale"
    except OSError:
        return "absent"
    finally:
        sock.close()
    return "alive"


@dataclass
class _Call:
    """The session of one run() in flight: what a timeout or cancellation must stop."""

    proc: asyncio.subprocess.Process | None = None
    log_path: Path | None = None
    ticks: int | None = None  # the ssh client's start time, to tell a replaced master
    sink_error: BaseException | None = None
    connecting: bool = True

    def take_log(self) -> str:
        """The client's log, read once and deleted."""
        if self.log_path is None:
            return ""
        path, self.log_path = self.log_path, None
        return _take_file(path)


def _new_log(path: Path, suffix: str) -> Path:
    """A fresh private file beside the control socket ``path`` for one ssh's ``-E`` log."""
    # Not tempfile.mkstemp: importing tempfile costs a few ms of every CLI call's start.
    log = path.with_name(f"{path.name}.{os.urandom(8).hex()}{suffix}")
    os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return log


def _take_file(path: Path) -> str:
    """``path``'s text, and the file deleted (a few hundred bytes: no thread needed)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
    finally:
        path.unlink(missing_ok=True)


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    # The master holds our pipes (passed over the control socket) while its session lives;
    # a killed client must not leave their transports open behind it.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


async def _exited(proc: asyncio.subprocess.Process, seconds: float | None = None) -> bool:
    """Wait until ``proc`` has exited (at most ``seconds``); whether it has.

    Watches the exit status itself: Python 3.11's ``Process.wait()`` also waits for the
    pipes, which the master holds as long as the remote command's channel lives.
    """
    steps = None if seconds is None else max(1, int(seconds / _EXIT_POLL_S))
    while proc.returncode is None:
        if steps is not None:
            if steps == 0:
                return False
            steps -= 1
        await asyncio.sleep(_EXIT_POLL_S)
    return True


async def _end_client(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the local ssh client (its own process group), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        await _exited(proc, _CLIENT_TERM_S)
    _close_pipes(proc)


async def _communicate(
    proc: asyncio.subprocess.Process,
    data: bytes | None,
    streams: tuple[OutputStream, OutputStream],
    call: _Call,
) -> None:
    """Feed stdin, hand output to the streams as it arrives, until the client has exited.

    Returns early when a sink raised (``call.sink_error``); the caller then stops the
    command. An async sink is awaited before the next read: the pipe, and so the master's
    channel window, hold the server back meanwhile.
    """
    failed = asyncio.Event()

    async def pump(reader: asyncio.StreamReader | None, stream: OutputStream) -> None:
        if reader is None:
            return
        while chunk := await reader.read(_CHUNK):
            try:
                written = stream.feed(chunk)
                if inspect.isawaitable(written):
                    await written
            except Exception as exc:  # the caller's sink: its failure ends the command
                if call.sink_error is None:
                    call.sink_error = exc
                failed.set()
                return

    async def feed() -> None:
        if proc.stdin is None:
            return
        # A command that exits without reading its stdin closes the pipe under us.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if data:
                proc.stdin.write(data)
                await proc.stdin.drain()
            proc.stdin.close()

    out, err = streams
    reading: asyncio.Future[object] = asyncio.ensure_future(
        asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err), feed())
    )
    failing: asyncio.Future[object] = asyncio.ensure_future(failed.wait())
    exited: asyncio.Future[object] = asyncio.ensure_future(_exited(proc))
    try:
        await asyncio.wait({reading, failing, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done() and not failed.is_set():
            # The client is gone; its master may hold our pipes a moment longer.
            await asyncio.wait({reading, failing}, timeout=_PIPE_DRAIN_S)
            if not reading.done() and not failed.is_set():
                _log.warn("run", "ssh exited; its output pipes stayed open, not waiting")
                _close_pipes(proc)
        if failed.is_set():
            return
        if reading.done():
            reading.result()
        # The pipes are closed by now, so this returns as soon as the client has exited.
        await proc.wait()
    finally:
        for task in (reading, failing, exited):
            task.cancel()
        await asyncio.gather(reading, failing, exited, return_exceptions=True)


class OneShotSsh:
    """Remote commands through ``ssh`` and a persisted shared connection; ``async with``.

    Duck-typed with :class:`~homeops.core.ssh.pool.SshPool` for ``run``/``close``.
    ``state_dir`` holds the control sockets (default: :func:`default_state_dir`, i.e.
    ``HOMEOPS_STATE_DIR``); ``persist_s`` is how long a master outlives its last session;
    ``policy`` and ``sleep`` govern retries of starting a master only. Closing does not stop
    the masters (outliving this process is their point): :meth:`stop_master` does.
    """

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        persist_s: float = DEFAULT_PERSIST_S,
        policy: RetryPolicy = SEED_POLICY,
        sleep: Sleep = asyncio.sleep,
        ssh: str = "ssh",
    ) -> None:
        self._state_dir = state_dir if state_dir is not None else default_state_dir(os.environ)
        self._persist_s = persist_s
        self._policy = policy
        self._sleep = sleep
        self._ssh = ssh
        self._kills: set[asyncio.Task[Kill]] = set()
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

    async def close(self) -> None:
        """Wait (up to 10 s) for kills still running; the masters stay up."""
        self._closed = True
        if self._kills:
            await asyncio.wait(set(self._kills), timeout=_CLOSE_KILL_WAIT_S)

    def control_path(self, target: SshTarget) -> Path:
        """Where ``target``'s control socket is (the directory is made on first use).

        ``<state_dir>/ssh-mux/<hash>``; if that is too long for a socket path, the same name
        in ``<tmp>/homeops-ssh-<uid>``.
        """
        name = socket_name(target)
        for base in (
            self._state_dir / CONTROL_DIR,
            Path(os.environ.get("TMPDIR") or "/tmp") / f"homeops-ssh-{os.geteuid()}",
        ):
            path = base.absolute() / name
            if _fits(path):
                return path
        raise OperationalError(
            f"ssh {target.destination}: no control socket path short enough"
            f" (state dir {self._state_dir}); set a shorter HOMEOPS_STATE_DIR or TMPDIR"
        )

    async def master_pid(self, target: SshTarget) -> int | None:
        """The pid of ``target``'s live master (``ssh -O check``), or None."""
        return await self._master_pid(target, self.control_path(target))

    async def stop_master(self, target: SshTarget) -> bool:
        """Stop ``target``'s master (``ssh -O exit``) and wait until it is gone (bounded).

        Returns whether one was running. Sessions still on it end with it.
        """
        path = self.control_path(target)
        pid = await self._master_pid(target, path)
        if pid is None:
            return False
        await process.run_bytes(
            self._control_argv(target, path, "exit"), timeout=_CONTROL_CMD_TIMEOUT_S
        )
        for _ in range(int(_CONTROL_CMD_TIMEOUT_S / 0.02)):
            if not _running(pid):
                break
            await asyncio.sleep(0.02)
        return True

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
    ) -> SshResult:
        """Run ``command`` on ``target``, as :meth:`SshPool.run` does.

        ``timeout`` bounds starting a master (every attempt), the session and the run.
        Output is bytes, captured up to ``max_output`` per stream or handed to a sink as it
        arrives. Raises :class:`HomeopsTimeout` (4) after the deadline, having tried to
        kill the command for up to :data:`KILL_BUDGET_S` more (the message says whether
        that was confirmed); :class:`SshUnavailable`/:class:`SshAuthError`/
        :class:`HostKeyError` (3); with ``check`` :class:`OperationalError` (1) naming the
        last stderr line. A failing sink or a cancellation kills the command as the pool
        does, within :data:`CANCEL_KILL_BUDGET_S`.
        """
        if self._closed:
            raise OperationalError("ssh one-shot runner is closed")
        start = time.monotonic()
        shown = mask(command) if display is None else mask(display)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        streams = (OutputStream(stdout, max_output), OutputStream(stderr, max_output))
        path = self.control_path(target)
        call = _Call()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                mux = await self._attempt(target, path, command, data, streams, call)
            if call.sink_error is not None:
                how = await self._stop(target, path, command, call, CANCEL_KILL_BUDGET_S)
                log_stopped("output sink failed", how, start, shown, target)
                raise call.sink_error
            status = await self._status(target, path, mux, call)
        except TimeoutError:
            if not deadline.expired():
                raise
            how = await self._stop(target, path, command, call, KILL_BUDGET_S)
            log_stopped("command timed out", how, start, shown, target)
            ending = {
                Kill.NONE: "before the command started"
                + (" (still connecting)" if call.connecting else ""),
                Kill.EXITED: "(remote command had ended)",
                Kill.GONE: "(remote command is no longer running)",
                Kill.UNCONFIRMED: "(kill not confirmed: the remote command may still run)",
                Kill.PENDING: "(kill not confirmed yet: still trying in the background)",
            }.get(how, "(remote command killed)")
            # Rounded to the ms: a caller passing what is left of its own deadline
            # (0.99996 of a 1s budget) should read 1s.
            raise HomeopsTimeout(
                f"ssh {target.destination}: {shown!r} timed out after "
                f"{round(timeout, 3):g}s {ending}"
            ) from None
        except asyncio.CancelledError:
            how = await self._stop(target, path, command, call, CANCEL_KILL_BUDGET_S)
            log_stopped("command cancelled", how, start, shown, target)
            raise
        finally:
            if call.proc is not None:
                _close_pipes(call.proc)
            call.take_log()
        return self._result(target, status, streams, start, shown, check)

    async def _attempt(
        self,
        target: SshTarget,
        path: Path,
        command: str,
        data: bytes | None,
        streams: tuple[OutputStream, OutputStream],
        call: _Call,
    ) -> MuxLog:
        """Run the session, starting a master first when there is none.

        A session that did not open cannot have run anything: it is tried again, on a new
        master if the old one is gone, or after a short pause if the server refused it
        (MaxSessions) while the master lives.
        """
        _private_dir(path.parent)
        pauses = iter(REFUSED_OPEN_PAUSES_S)
        starts = failures = 0
        note = ""
        while True:
            if _socket_state(path) != "alive":
                if starts == _MASTER_STARTS:
                    raise SshUnavailable(
                        f"ssh {target.destination}: cannot share a connection: no master"
                        f" listens on {path} after starting one{note}"
                    )
                starts += 1
                messages = await self._start_master(target, path)
                note = f" ({'; '.join(messages[-2:])})" if messages else ""
            call.connecting = False
            mux = await self._session(target, path, command, data, streams, call)
            if mux.opened or mux.exit_status is not None or call.sink_error is not None:
                return mux
            call.connecting = True
            if any(_REFUSED in m for m in mux.messages) and _socket_state(path) == "alive":
                pause = next(pauses, None)
                if pause is None:
                    raise SshUnavailable(
                        f"ssh {target.destination}: server refused a session: {_REFUSED}"
                    )
                await asyncio.sleep(pause)
                continue
            failures += 1
            if failures > _MASTER_STARTS:
                raise SshUnavailable(
                    f"ssh {target.destination}: cannot open a session on the shared"
                    f" connection: {'; '.join(mux.messages[:2]) or 'no reason given'}"
                )
            _log.info(
                "run",
                "shared connection went away before the session opened, starting another",
                detail="; ".join(mux.messages[:2]),
                **log_fields(target),
            )

    async def _start_master(self, target: SshTarget, path: Path) -> tuple[str, ...]:
        """Log in and leave a master on ``path`` (retrying transport failures).

        Returns ssh's messages of the start that worked (a master that could not listen
        says why there).
        """
        if target.identity_file is not None and not os.access(target.identity_file, os.R_OK):
            # As the pool: a missing key is a config error, not worth retrying.
            raise ConfigError(str(target.identity_file), "identity_file", "cannot be read")
        attempts = 0

        async def attempt() -> tuple[str, ...]:
            nonlocal attempts
            attempts += 1
            log = _new_log(path, ".master")
            argv = [
                self._ssh,
                *openssh_options(target),
                "-o",
                f"LogLevel={_MASTER_LOG_LEVEL}",
                "-E",
                str(log),
                "-T",
                *control_options(path, master=True, persist_s=self._persist_s),
                "--",
                target.host,
                # Every login shell knows it (sh, cmd.exe, PowerShell); the session is only
                # there so ssh detaches the master with its stdio closed (ControlPersist).
                "exit 0",
            ]
            try:
                # The caller's deadline bounds this; the process's own timeout is a backstop.
                done = await process.run_bytes(argv, timeout=target.connect_timeout + 30)
            finally:
                text = _take_file(log)
            if done.returncode != 0:
                raise _MasterFailed(connect_failure(target, text, done.returncode, attempts))
            return tuple(line.strip() for line in text.splitlines() if line.strip())

        began = time.monotonic()
        try:
            messages = await retry_async(
                attempt,
                policy=self._policy,
                retry_if=lambda exc: isinstance(exc, _MasterFailed) and exc.failure.transient,
                op="connect",
                sleep=self._sleep,
            )
        except _MasterFailed as exc:
            error = exc.failure.error
            _log.warn(
                "connect", "connection failed", err=error, attempts=attempts, **log_fields(target)
            )
            raise error from None
        _log.info(
            "connect",
            "connected",
            duration_ms=(time.monotonic() - began) * 1000,
            attempts=attempts,
            shared=True,
            **log_fields(target),
        )
        return messages

    def _client_argv(self, target: SshTarget, path: Path, log: Path, command: str) -> list[str]:
        return [
            self._ssh,
            *openssh_options(target),
            "-o",
            f"LogLevel={_CLIENT_LOG_LEVEL}",
            "-E",
            str(log),
            "-T",
            *control_options(path, master=False),
            # Without a live master ssh would log in by itself; this makes that attempt fail
            # at once instead, so every command runs on the master (and is known to).
            "-o",
            "ProxyCommand=false",
            "--",
            target.host,
            command,
        ]

    def _control_argv(self, target: SshTarget, path: Path, op: str) -> list[str]:
        return [
            self._ssh,
            "-F",
            "none",
            *control_options(path, master=False),
            "-O",
            op,
            "--",
            target.host,
        ]

    async def _session(
        self,
        target: SshTarget,
        path: Path,
        command: str,
        data: bytes | None,
        streams: tuple[OutputStream, OutputStream],
        call: _Call,
    ) -> MuxLog:
        """One mux client running ``command``; what its log says once it has exited.

        Started with asyncio directly: :func:`homeops.core.process.run_bytes` keeps whole
        outputs in memory and offers line callbacks of text, while a session must hand bytes
        to sinks as they come (async ones with back-pressure) and cap what it keeps; and a
        timeout here needs the remote kill, not only the local process group ended.
        """
        call.log_path = _new_log(path, ".log")
        argv = self._client_argv(target, path, call.log_path, command)
        exe = process.which(argv[0])
        try:
            proc = await asyncio.create_subprocess_exec(
                exe,
                *argv[1:],
                stdin=asyncio.subprocess.PIPE if data else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise OperationalError(f"{exe}: cannot start: {exc.strerror or exc}") from exc
        call.proc = proc
        call.ticks = _start_ticks(proc.pid)
        await _communicate(proc, data, streams, call)
        if call.sink_error is not None:
            return MuxLog(reached=True, opened=True, exit_status=None, messages=())
        return parse_mux_log(call.take_log())

    async def _status(self, target: SshTarget, path: Path, mux: MuxLog, call: _Call) -> int:
        """The remote exit status, or SshUnavailable if the connection was lost."""
        if mux.exit_status is not None:
            return mux.exit_status
        # Opened, and ended without a status. The mux protocol passes on no exit signal, so
        # this is a command killed by a signal if its master lives on, else a lost connection.
        if await self._same_master(target, path, call) is not None:
            return NO_EXIT_STATUS
        detail = "; ".join(mux.messages[-2:]) or "the shared connection closed"
        raise SshUnavailable(
            f"ssh {target.destination}: connection lost while running command"
            f" (it may still run): {detail}"
        )

    async def _master_pid(self, target: SshTarget, path: Path) -> int | None:
        if _socket_state(path) != "alive":
            return None
        try:
            done = await process.run_bytes(
                self._control_argv(target, path, "check"), timeout=_CONTROL_CMD_TIMEOUT_S
            )
        except HomeopsTimeout:
            return None
        found = _MASTER_PID.search(done.stderr.decode(errors="replace"))
        return int(found.group(1)) if done.returncode == 0 and found else None

    async def _same_master(self, target: SshTarget, path: Path, call: _Call) -> int | None:
        """The live master's pid if it is the one ``call``'s session ran on, else None.

        A master started after the session's client cannot be the one it used.
        """
        pid = await self._master_pid(target, path)
        if pid is None:
            return None
        began = _start_ticks(pid)
        if call.ticks is not None and began is not None and began > call.ticks:
            return None
        return pid

    async def _stop(
        self, target: SshTarget, path: Path, command: str, call: _Call, budget: float
    ) -> Kill:
        """End what a timeout, a cancellation or a failing sink interrupted.

        The kill runs in a task of its own, so a second cancellation does not stop it;
        waited for up to ``budget`` seconds (then :attr:`Kill.PENDING`; close() waits).
        """
        task = asyncio.ensure_future(self._kill(target, path, command, call))
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)
        await asyncio.wait({task}, timeout=budget)
        if not task.done():
            return Kill.PENDING
        if task.cancelled():
            return Kill.UNCONFIRMED
        exc = task.exception()
        if exc is not None:
            _log.warn("run", "kill failed", err=exc, **log_fields(target))
            return Kill.UNCONFIRMED
        return task.result()

    async def _kill(self, target: SshTarget, path: Path, command: str, call: _Call) -> Kill:
        proc = call.proc
        if proc is None:
            return Kill.NONE  # no session was started: still connecting
        await _end_client(proc)
        mux = parse_mux_log(call.take_log())
        if mux.exit_status is not None:
            return Kill.EXITED
        if not mux.reached:
            return Kill.NONE  # it never reached a master: nothing can have been sent
        found = await self._kill_by_script(target, path, command, call)
        if found is Fallback.KILLED:
            return Kill.PROCESS_GROUP
        # Same connection, so the server handled our session's exec (if it was ever sent)
        # before the killer's: nothing of it running now means nothing will run.
        return Kill.GONE if found is Fallback.NONE_LEFT else Kill.UNCONFIRMED

    async def _kill_by_script(
        self, target: SshTarget, path: Path, command: str, call: _Call
    ) -> Fallback:
        """The pool's fallback killer for ``target.remote_shell``, over the same master."""
        pid = await self._same_master(target, path, call)
        identity = tcp_identity(pid) if pid is not None else None
        if identity is None:
            _log.warn(
                "run",
                "fallback kill impossible: the session's master or its address is unknown",
                **log_fields(target),
            )
            return Fallback.FAILED
        # The killer's session is on the same connection: its SSH_CONNECTION is the same
        # (the POSIX script refuses, exit 5, if the server sees other addresses).
        if target.remote_shell == "posix":
            script, data = KILL_SCRIPT, kill_script_input(identity, identity, command)
        else:
            script, data = powershell_kill_command(identity, identity, command), None
        log = _new_log(path, ".log")
        try:
            done = await process.run_bytes(
                self._client_argv(target, path, log, script),
                stdin=data,
                timeout=FALLBACK_BUDGET_S,
            )
        except (HomeopsError, OSError) as exc:
            _log.warn("run", "fallback kill failed", err=exc, **log_fields(target))
            return Fallback.FAILED
        finally:
            text = _take_file(log)
        mux = parse_mux_log(text)
        if mux.exit_status is None:
            _log.warn(
                "run",
                "fallback kill failed",
                err="; ".join(mux.messages[-2:]) or f"ssh exit {done.returncode}",
                **log_fields(target),
            )
            return Fallback.FAILED
        found = fallback_outcome(mux.exit_status)
        fields = {"exit_status": mux.exit_status, **log_fields(target)}
        if found is Fallback.KILLED:
            pids = done.stdout.decode(errors="replace").strip()
            _log.info("run", "killed command by process group", pgids=pids, **fields)
        else:
            _log.warn("run", "fallback kill found no process to kill", found=str(found), **fields)
        return found

    def _result(
        self,
        target: SshTarget,
        status: int,
        streams: tuple[OutputStream, OutputStream],
        start: float,
        shown: str,
        check: bool,
    ) -> SshResult:
        elapsed = (time.monotonic() - start) * 1000
        out, err = streams
        result = SshResult(status, out.value(), err.value(), elapsed, out.dropped, err.dropped)
        if result.stdout_truncated or result.stderr_truncated:
            _log.info(
                "run",
                "output beyond the cap was dropped",
                stdout_dropped=result.stdout_dropped,
                stderr_dropped=result.stderr_dropped,
                command=shown,
                **log_fields(target),
            )
        if _log.enabled("debug"):
            _log.debug(
                "run",
                "command finished",
                duration_ms=elapsed,
                exit_status=result.exit_status,
                command=shown,
                shared=True,
                **log_fields(target),
            )
        if check and not result.ok:
            tail = err.last_line() or "no stderr"
            raise OperationalError(
                f"ssh {target.destination}: {shown!r}: exit {result.exit_status}: {mask(tail)}"
            )
        return result


async def stop_master(target: SshTarget, *, state_dir: Path | None = None) -> bool:
    """Stop ``target``'s persisted master under ``state_dir`` (tests, cleanup, logout)."""
    return await OneShotSsh(state_dir=state_dir).stop_master(target)
