"""The pool: one reused connection per host for commands and SFTP, and the kill machinery."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import posixpath
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from homeops.core.errors import (
    HomeopsError,
    HomeopsTimeout,
    OperationalError,
    SshUnavailable,
)
from homeops.core.logging import get_logger, mask
from homeops.core.retry import NO_RETRY, SEED_POLICY, RetryPolicy, Sleep, retry_async
from homeops.core.ssh.channel import (
    ChannelCount,
    Collector,
    OutputStream,
    SessionSlots,
    Slot,
    open_channel,
    wait_any,
)
from homeops.core.ssh.connect import (
    append_known_host,
    client_factory,
    is_retryable_ssh_error,
    load_identity,
    load_known_hosts,
    one_line,
    translate_connect_error,
)
from homeops.core.ssh.kill import (
    CANCEL_GRACE_S,
    CANCEL_KILL_BUDGET_S,
    FALLBACK_BUDGET_S,
    KILL_BUDGET_S,
    KILL_GRACE_S,
    KILL_SCRIPT,
    SIGKILL_WAIT_S,
    Fallback,
    Kill,
    connection_identity,
    fallback_outcome,
    kill_script_input,
)
from homeops.core.ssh.model import (
    DEFAULT_MAX_OUTPUT,
    HostKeyPolicy,
    OutputSink,
    SshResult,
    SshTarget,
)

if TYPE_CHECKING:
    from asyncssh import SFTPClient, SSHClientConnection, SSHKey

_log = get_logger("core.ssh")

# How long close() waits for kills still running before it closes their connections.
_CLOSE_KILL_WAIT_S: Final = 10.0
# Pauses before trying again a channel open the server refused although fewer of our
# channels were open than it allowed before (sshd frees a closed channel's slot late).
_REFUSED_OPEN_PAUSES_S: Final = (0.01, 0.05, 0.1, 0.25)
# How long a failed or timed-out SFTP put gets to remove its temporary file.
_SFTP_CLEANUP_S: Final = 2.0
# Output of the fallback killer kept (it prints process group ids).
_SCRIPT_OUTPUT_CAP: Final = 4096


@dataclass
class _Conn:
    """A live connection (a box, so a dropped connection is told apart from its successor)."""

    conn: SSHClientConnection
    count: ChannelCount = field(default_factory=ChannelCount)
    # Its SSH_CONNECTION as the server's sessions see it (None: unknown), for the fallback kill.
    identity: str | None = None


@dataclass
class _Shared:
    """A connection several kills use at once; closed when the last of them is done."""

    task: asyncio.Task[_Conn]
    users: int = 0


_PoolKey = tuple[str, str, int, Path | None, Path, HostKeyPolicy]


def _close_late(task: asyncio.Task[_Conn]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().conn.close()


def _exit_late_sftp(task: asyncio.Future[SFTPClient]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().exit()


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
        self._connect_waiters: dict[_PoolKey, int] = {}
        self._seen: set[_PoolKey] = set()  # keys connected before: a new connect is a reconnect
        # Per host, not per connection: the server's limit outlives a reconnect, and commands
        # on a dropped connection hold their slots until they are done.
        self._slots: dict[_PoolKey, SessionSlots] = {}
        self._kill_slots: dict[_PoolKey, SessionSlots] = {}
        self._kill_conns: dict[_PoolKey, _Shared] = {}
        # Kills running in tasks of their own, so they outlive their caller's cancellation.
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

    @staticmethod
    def _slots_in(table: dict[_PoolKey, SessionSlots], target: SshTarget) -> SessionSlots:
        key = SshPool._key(target)
        slots = table.get(key)
        if slots is None:
            slots = table[key] = SessionSlots(target.max_sessions)
        elif target.max_sessions is not None and slots.limit != target.max_sessions:
            slots.fixed, slots.limit = True, target.max_sessions
        return slots

    def _live(self, key: _PoolKey) -> _Conn | None:
        entry = self._conns.get(key)
        return entry if entry is not None and not entry.conn.is_closed() else None

    async def _connection(self, target: SshTarget) -> tuple[_Conn, bool]:
        """The cached connection for ``target``, or a new one; the flag says it is new.

        Concurrent first commands to a host share one connect (with its retries): all of
        them get its connection, or its failure. The failure is not remembered beyond the
        commands already waiting: the next command after it starts a new connect, as a
        host that was just down may be back, and the retry policy already spaced the tries.
        A connect nobody waits for any more (all their deadlines passed) is cancelled.
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
        self._connect_waiters[key] = self._connect_waiters.get(key, 0) + 1
        try:
            # Shielded: one waiter cancelled must not cancel the connect the others wait for.
            return await asyncio.shield(pending), True
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if pending.cancelled() and task is not None and not task.cancelling():
                # The connect was stopped, not this caller (the pool is closing).
                raise OperationalError("ssh pool is closed") from None
            raise
        finally:
            left = self._connect_waiters[key] - 1
            if left:
                self._connect_waiters[key] = left
            else:
                del self._connect_waiters[key]
                if not pending.done():
                    pending.cancel()
                    # Forgotten at once: the next caller starts afresh, not on a dying task.
                    if self._connecting.get(key) is pending:
                        del self._connecting[key]

    async def _establish(self, target: SshTarget, key: _PoolKey) -> _Conn:
        entry = await self._new_conn(target, reconnect=key in self._seen)
        if self._closed:
            entry.conn.abort()
            raise OperationalError("ssh pool is closed")
        self._seen.add(key)
        self._conns[key] = entry
        return entry

    async def _new_conn(
        self, target: SshTarget, *, reconnect: bool = False, purpose: str = "commands"
    ) -> _Conn:
        conn = await self._connect(target, reconnect=reconnect, purpose=purpose)
        return _Conn(conn, identity=connection_identity(conn))

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

    async def _connect(
        self, target: SshTarget, *, reconnect: bool, purpose: str = "commands"
    ) -> SSHClientConnection:
        import asyncssh

        known = load_known_hosts(target)
        keys = [load_identity(target.identity_file)] if target.identity_file else ()
        accepted: list[SSHKey] = []
        client = client_factory(target, known, accepted)
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
        extra = {} if purpose == "commands" else {"purpose": purpose}
        try:
            conn = await retry_async(
                attempt,
                # A kill runs on a budget of its own; retrying would only eat it.
                policy=self._policy if purpose == "commands" else NO_RETRY,
                retry_if=is_retryable_ssh_error,
                op="connect",
                sleep=self._sleep,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = translate_connect_error(exc, target, attempts)
            _log.warn(
                "connect",
                "connection failed",
                err=error,
                attempts=attempts,
                **extra,
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
            **extra,
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

    async def _after_refusal(
        self,
        target: SshTarget,
        entry: _Conn,
        slot: Slot,
        pauses: Iterator[float],
        what: str,
        exc: BaseException,
    ) -> bool:
        """Wait before opening again what the server refused; True if it queued for a slot.

        A refusal while our channels fill what the server allows queues for a slot (the
        limit learned from it); otherwise it is tried again after a short pause, and when
        the pauses run out the refusal is believed (or, with nothing of ours open or a
        ``max_sessions`` fixed by the target, reported as ``server refused``).
        """
        slots = slot.slots
        before = slots.limit
        open_now = entry.count.open
        _log.debug(
            "run",
            "server refused a channel",
            err=one_line(exc),
            open_channels=open_now,
            max_sessions=before,
            **self._fields(target),
        )
        queue = slots.refused(open_now)
        if not queue:
            pause = next(pauses, None)
            if pause is not None:
                await asyncio.sleep(pause)
                return False
            queue = slots.refused(open_now, force=True)
            if not queue:
                fixed = f" (max_sessions={slots.limit})" if slots.fixed else ""
                raise SshUnavailable(
                    f"ssh {target.destination}: server refused a {what}{fixed}: {one_line(exc)}"
                ) from exc
        if slots.limit != before:
            _log.info(
                "run",
                "server allows fewer sessions per connection; queueing to its limit",
                max_sessions=slots.limit,
                **self._fields(target),
            )
        slot.release()
        await slot.acquire()
        return True

    async def _open(
        self,
        target: SshTarget,
        entry: _Conn,
        fresh: bool,
        command: str,
        tried: list[tuple[Collector, _Conn]],
        slot: Slot,
        streams: tuple[OutputStream, OutputStream],
    ) -> tuple[Collector, _Conn]:
        """Open a channel running ``command``; reconnect once if a reused connection died.

        Reconnecting is safe only while the server has not confirmed the channel: the exec
        request goes out after that, so the command cannot have started. Each session tried
        is appended to ``tried`` at once, so a timeout or cancellation arriving before this
        returns still finds the channel to kill.
        """
        import asyncssh

        pauses = iter(_REFUSED_OPEN_PAUSES_S)
        while True:
            session = Collector(*streams, entry.count, slot.slots.seen_open)
            tried.append((session, entry))
            try:
                await open_channel(entry.conn, session, command)
            except (OSError, asyncssh.Error) as exc:
                # "SSH connection closed" arrives as a ChannelOpenError: look at the connection.
                lost = entry.conn.is_closed() or not isinstance(exc, asyncssh.ChannelOpenError)
                if not lost:
                    if await self._after_refusal(target, entry, slot, pauses, "session", exc):
                        pauses = iter(_REFUSED_OPEN_PAUSES_S)
                    continue
                self._drop(target, entry)
                if fresh or session.opened:
                    raise SshUnavailable(
                        f"ssh {target.destination}: connection lost starting command:"
                        f" {one_line(exc)}"
                    ) from exc
                _log.info("run", "cached connection was lost, reconnecting", **self._fields(target))
                entry, fresh = await self._connection(target)
                continue
            return session, entry

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
    ) -> SshResult:
        """Run ``command`` on ``target``; ``timeout`` bounds connecting, queueing and running.

        Output comes back as bytes, each stream kept up to ``max_output`` bytes (None: all)
        with the rest counted in ``SshResult.*_dropped``; a stream given a sink (a binary
        file, a callable, an async callable) goes there as it arrives instead.
        Raises :class:`HomeopsTimeout` (4) after the deadline, having tried to kill a command
        that had started for up to :data:`KILL_BUDGET_S` more (its message says whether the
        command had started and whether the kill was confirmed),
        :class:`SshUnavailable`/:class:`SshAuthError`/:class:`HostKeyError` (3), and with
        ``check`` :class:`OperationalError` (1) naming the last stderr line on non-zero exit.
        A sink that raises stops the command (killed as on cancel) and its exception is
        raised. Cancelling the call kills the remote command the same way (a shorter SIGTERM
        grace) and waits up to :data:`CANCEL_KILL_BUDGET_S` for that before it goes on.
        """
        start = time.monotonic()
        data = stdin.encode() if isinstance(stdin, str) else stdin
        streams = (OutputStream(stdout, max_output), OutputStream(stderr, max_output))
        tried: list[tuple[Collector, _Conn]] = []
        slot = Slot(self._slots_in(self._slots, target))
        connected = False
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                entry, fresh = await self._connection(target)
                connected = True
                await slot.acquire()
                session, entry = await self._open(
                    target, entry, fresh, command, tried, slot, streams
                )
                assert session.chan is not None
                if data:
                    session.chan.write(data)
                # Without EOF a command that reads stdin would wait for the timeout.
                session.chan.write_eof()
                await session.finished.wait()
            if session.sink_error is not None:
                kill = self._start_kill(target, tried, command, CANCEL_GRACE_S, slot)
                how = await self._kill_outcome(target, command, kill, CANCEL_KILL_BUDGET_S)
                self._log_stopped("output sink failed", how, start, command, target)
                raise session.sink_error
        except TimeoutError:
            if not deadline.expired():
                raise
            kill = self._start_kill(target, tried, command, KILL_GRACE_S, slot)
            how = await self._kill_outcome(target, command, kill, KILL_BUDGET_S)
            self._log_stopped("command timed out", how, start, command, target)
            ending = {
                Kill.NONE: "before the command started"
                + ("" if connected else " (still connecting)"),
                Kill.EXITED: "(remote command had ended)",
                Kill.GONE: "(remote command is no longer running)",
                Kill.UNCONFIRMED: "(kill not confirmed: the remote command may still run)",
                Kill.PENDING: "(kill not confirmed yet: still trying in the background)",
            }.get(how, "(remote command killed)")
            raise HomeopsTimeout(
                f"ssh {target.destination}: {mask(command)!r} timed out after {timeout:g}s {ending}"
            ) from None
        except asyncio.CancelledError:
            # Cancelled from outside (a job's cancel or its own timeout): do not leave the
            # command running, but give the kill a bounded time before cancelling goes on.
            kill = self._start_kill(target, tried, command, CANCEL_GRACE_S, slot)
            how = await self._kill_outcome(target, command, kill, CANCEL_KILL_BUDGET_S)
            self._log_stopped("command cancelled", how, start, command, target)
            raise
        finally:
            slot.release()  # unless a kill took it over: it holds the channel until done
        return self._result(target, entry, session, streams, start, command, check)

    def _result(
        self,
        target: SshTarget,
        entry: _Conn,
        session: Collector,
        streams: tuple[OutputStream, OutputStream],
        start: float,
        command: str,
        check: bool,
    ) -> SshResult:
        elapsed = (time.monotonic() - start) * 1000
        if session.error is not None and not session.ended.is_set():
            self._drop(target, entry)
            raise SshUnavailable(
                f"ssh {target.destination}: connection lost while running command"
                f" (it may still run): {one_line(session.error)}"
            ) from session.error
        out, err = streams
        result = SshResult(
            session.status(), out.value(), err.value(), elapsed, out.dropped, err.dropped
        )
        if result.stdout_truncated or result.stderr_truncated:
            _log.info(
                "run",
                "output beyond the cap was dropped",
                stdout_dropped=result.stdout_dropped,
                stderr_dropped=result.stderr_dropped,
                command=mask(command),
                **self._fields(target),
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
            tail = err.last_line() or "no stderr"
            raise OperationalError(
                f"ssh {target.destination}: {mask(command)!r}: exit {result.exit_status}:"
                f" {mask(tail)}"
            )
        return result

    def _start_kill(
        self,
        target: SshTarget,
        tried: list[tuple[Collector, _Conn]],
        command: str,
        grace: float,
        slot: Slot,
    ) -> asyncio.Task[Kill] | None:
        """Start killing the command ``run`` started; None if no channel had opened.

        The kill runs in a task of its own, so cancelling the caller (again), or the caller
        giving up waiting, does not stop the kill; the caller's channel slot is handed to
        that task, which releases it when the kill is over.
        """
        session, entry = tried[-1] if tried else (None, None)
        if session is None or entry is None or session.chan is None:
            return None
        if session.kill is None:
            session.kill = task = asyncio.create_task(
                self._kill(target, entry, session, command, grace)
            )
            self._kills.add(task)
            task.add_done_callback(self._kills.discard)
            handed = Slot(slot.slots)
            handed.held, slot.held = slot.held, False
            task.add_done_callback(lambda _: handed.release())
        return session.kill

    async def _kill_outcome(
        self,
        target: SshTarget,
        command: str,
        kill: asyncio.Task[Kill] | None,
        wait_s: float | None,
    ) -> Kill:
        """Wait up to ``wait_s`` seconds (None: until done) for ``kill``; how it ended."""
        if kill is None:
            return Kill.NONE
        # asyncio.wait never cancels what it waits for: the kill outlives this wait.
        await asyncio.wait({kill}, timeout=wait_s)
        if not kill.done():
            kill.add_done_callback(functools.partial(self._log_late_kill, target, command))
            return Kill.PENDING
        return self._kill_result(target, kill)

    def _kill_result(self, target: SshTarget, kill: asyncio.Task[Kill]) -> Kill:
        if kill.cancelled():
            return Kill.UNCONFIRMED
        exc = kill.exception()
        if exc is not None:  # a failed kill must not hide the timeout or cancellation
            _log.warn("run", "kill failed", err=one_line(exc), **self._fields(target))
            return Kill.UNCONFIRMED
        return kill.result()

    def _log_late_kill(self, target: SshTarget, command: str, kill: asyncio.Task[Kill]) -> None:
        how = self._kill_result(target, kill)
        (_log.info if how.ended else _log.warn)(
            "run", "kill finished", kill=str(how), command=mask(command), **self._fields(target)
        )

    async def _kill(
        self,
        target: SshTarget,
        entry: _Conn,
        session: Collector,
        command: str,
        grace: float,
    ) -> Kill:
        """End a started remote command: SIGTERM, ``grace`` seconds, SIGKILL, fallback.

        First a "signal" channel request: OpenSSH's sshd turns it into killpg() of the
        session's process group, so the shell and its children die. sshd silently refuses it
        for root logins (no privilege-separated child: "session signalling requires privilege
        separation") and for ForceCommand sessions; and a channel that went away without an
        exit status (its connection or sshd died) proves nothing either. In those cases a
        separate connection SIGKILLs the command's process group (:data:`KILL_SCRIPT`).
        Closing the channel alone would not do: sshd leaves a no-pty command running.
        Only an exit status or signal from the server, or the fallback's own report, counts
        as confirmation.
        """
        chan = session.chan
        assert chan is not None
        try:
            if session.ended.is_set():
                return Kill.EXITED
            for sig, wait_s in (("TERM", grace), ("KILL", SIGKILL_WAIT_S)):
                if session.done.is_set():
                    break
                with contextlib.suppress(OSError):  # OSError: the channel closed meanwhile
                    chan.send_signal(sig)
                await wait_any(wait_s, session.ended, session.done)
                if session.ended.is_set():
                    return Kill.SIGNAL
            found = await self._kill_by_script(target, entry, command)
            if found is Fallback.KILLED:
                # Its report is the confirmation: waiting for an exit status would only wait
                # out a stopped or dead sshd.
                return Kill.PROCESS_GROUP
            if session.ended.is_set():
                return Kill.SIGNAL
            # Nothing of the connection runs; but a command whose start was never confirmed
            # may still be started by an sshd that was only stopped.
            return (
                Kill.GONE if found is Fallback.NONE_LEFT and session.started else Kill.UNCONFIRMED
            )
        finally:
            chan.close()

    def _log_stopped(
        self, what: str, how: Kill, start: float, command: str, target: SshTarget
    ) -> None:
        # A timeout is worth a warning; a cancellation only when the command may live on.
        if what != "command cancelled" or (not how.ended and how is not Kill.NONE):
            log = _log.warn
        else:
            log = _log.debug if how is Kill.NONE else _log.info
        log(
            "run",
            what,
            kill=str(how),
            duration_ms=(time.monotonic() - start) * 1000,
            command=mask(command),
            **self._fields(target),
        )

    @contextlib.asynccontextmanager
    async def _kill_connection(self, target: SshTarget) -> AsyncIterator[_Conn]:
        """A connection of its own for fallback kills, shared by the kills running at once.

        Never the commands' connection: that one may be dead, or served by an sshd that is
        stopped, or full; a new login also proves the host answers.
        """
        key = self._key(target)
        shared = self._kill_conns.get(key)
        if shared is None:
            task = asyncio.create_task(self._new_conn(target, purpose="kill"))
            shared = self._kill_conns[key] = _Shared(task)
        shared.users += 1
        try:
            yield await asyncio.shield(shared.task)
        finally:
            shared.users -= 1
            if shared.users == 0:
                if self._kill_conns.get(key) is shared:
                    del self._kill_conns[key]
                shared.task.add_done_callback(_close_late)
                shared.task.cancel()

    async def _kill_by_script(self, target: SshTarget, entry: _Conn, command: str) -> Fallback:
        """SIGKILL the process group of ``command``'s session from a separate connection."""
        import asyncssh

        if entry.identity is None:
            _log.warn("run", "fallback kill impossible: connection address unknown")
            return Fallback.FAILED
        streams = (OutputStream(None, _SCRIPT_OUTPUT_CAP), OutputStream(None, _SCRIPT_OUTPUT_CAP))
        slot = Slot(self._slots_in(self._kill_slots, target))
        try:
            async with asyncio.timeout(FALLBACK_BUDGET_S), self._kill_connection(target) as conn:
                if conn.identity is None:
                    return Fallback.FAILED
                await slot.acquire()
                pauses = iter(_REFUSED_OPEN_PAUSES_S)
                while True:
                    session = Collector(*streams, conn.count, slot.slots.seen_open)
                    try:
                        chan = await open_channel(conn.conn, session, KILL_SCRIPT)
                        break
                    except asyncssh.ChannelOpenError as exc:
                        if conn.conn.is_closed():
                            raise
                        what = "session for the fallback kill"
                        if await self._after_refusal(target, conn, slot, pauses, what, exc):
                            pauses = iter(_REFUSED_OPEN_PAUSES_S)
                chan.write(kill_script_input(entry.identity, conn.identity, command))
                chan.write_eof()
                await session.done.wait()
        except (TimeoutError, OSError, asyncssh.Error, HomeopsError) as exc:
            _log.warn("run", "fallback kill failed", err=one_line(exc), **self._fields(target))
            return Fallback.FAILED
        finally:
            slot.release()
        found = fallback_outcome(session.status())
        fields = {"exit_status": session.status(), **self._fields(target)}
        if found is Fallback.KILLED:
            pgids = streams[0].value().decode(errors="replace").strip()
            _log.info("run", "killed command by process group", pgids=pgids, **fields)
        else:
            _log.warn("run", "fallback kill found no process to kill", found=str(found), **fields)
        return found

    async def _start_sftp(self, entry: _Conn) -> SFTPClient:
        # As with commands: a timeout must not leave a late-opened SFTP channel behind.
        task = asyncio.ensure_future(entry.conn.start_sftp_client())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_exit_late_sftp)
            raise

    async def _sftp(self, target: SshTarget, op: str, src: str, dst: str, timeout: float) -> None:
        """Copy ``src`` to ``dst`` through a temporary name beside ``dst``, renamed when done.

        ``dst`` is never seen half-written: a transfer that fails or times out removes its
        temporary file (remotely: if the connection still answers within a moment).
        """
        import asyncssh

        start = time.monotonic()
        what = f"ssh {target.destination}: sftp {op} {src} -> {dst}"
        slot = Slot(self._slots_in(self._slots, target))
        sftp: SFTPClient | None = None
        entry: _Conn | None = None
        counted = False
        temp: str | None = None
        try:
            async with asyncio.timeout(timeout):
                entry, _ = await self._connection(target)
                await slot.acquire()
                pauses = iter(_REFUSED_OPEN_PAUSES_S)
                while sftp is None:
                    try:
                        sftp = await self._start_sftp(entry)
                    except asyncssh.ChannelOpenError as exc:
                        if entry.conn.is_closed():
                            raise
                        if await self._after_refusal(
                            target, entry, slot, pauses, "sftp session", exc
                        ):
                            pauses = iter(_REFUSED_OPEN_PAUSES_S)
                entry.count.open += 1
                counted = True
                slot.slots.seen_open(entry.count.open)
                temp = _temp_name(dst, remote=op == "put")
                if op == "put":
                    await sftp.put(src, temp)
                    await _replace_remote(sftp, temp, dst)
                else:
                    await sftp.get(src, temp)
                    os.replace(temp, dst)
                temp = None
        except TimeoutError as exc:
            raise HomeopsTimeout(f"{what}: timed out after {timeout:g}s") from exc
        except (asyncssh.DisconnectError, asyncssh.SFTPConnectionLost, ConnectionError) as exc:
            if entry is not None:
                self._drop(target, entry)
            raise SshUnavailable(f"{what}: connection lost: {one_line(exc)}") from exc
        except asyncssh.ChannelOpenError as exc:
            raise SshUnavailable(f"{what}: server refused sftp: {one_line(exc)}") from exc
        except (asyncssh.SFTPError, OSError) as exc:
            raise OperationalError(f"{what}: {one_line(exc)}") from exc
        finally:
            if temp is not None:
                await _remove_temp(sftp, temp, remote=op == "put")
            if sftp is not None:
                sftp.exit()
            if counted and entry is not None:
                entry.count.open -= 1
            slot.release()
        _log.debug(
            "sftp",
            f"{op} done",
            duration_ms=(time.monotonic() - start) * 1000,
            src=src,
            dst=dst,
            **self._fields(target),
        )

    async def put(self, target: SshTarget, local: Path, remote: str, *, timeout: float) -> None:
        """Copy local file ``local`` to ``remote`` on ``target`` over SFTP (atomically).

        ``timeout`` bounds the whole call, connecting included.
        """
        await self._sftp(target, "put", str(local), remote, timeout)

    async def get(self, target: SshTarget, remote: str, local: Path, *, timeout: float) -> None:
        """Copy ``remote`` on ``target`` to local file ``local`` over SFTP (atomically).

        ``timeout`` bounds the whole call, connecting included.
        """
        await self._sftp(target, "get", remote, str(local), timeout)

    async def close(self) -> None:
        """Close every connection; the pool cannot be used afterwards.

        Kills still running (of commands that timed out or were cancelled) are waited for
        first, as they need their connection; a connect in flight is cancelled.
        """
        self._closed = True
        if self._kills:
            await asyncio.wait(set(self._kills), timeout=_CLOSE_KILL_WAIT_S)
        connecting = [*self._connecting.values(), *(s.task for s in self._kill_conns.values())]
        for shared in self._kill_conns.values():
            shared.task.add_done_callback(_close_late)
        self._kill_conns.clear()
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


def _temp_name(dst: str, *, remote: bool) -> str:
    # Beside the destination, so the final rename stays on one file system (atomic).
    split = posixpath.split if remote else os.path.split
    join = posixpath.join if remote else os.path.join
    folder, name = split(dst)
    return join(folder, f".{name}.homeops-{uuid.uuid4().hex[:12]}.part")


async def _replace_remote(sftp: SFTPClient, temp: str, dst: str) -> None:
    import asyncssh

    try:
        # OpenSSH's posix-rename@openssh.com: replaces dst atomically.
        await sftp.posix_rename(temp, dst)
    except asyncssh.SFTPOpUnsupported:
        # Plain SFTP rename refuses an existing target: a short window without dst instead.
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await sftp.remove(dst)
        await sftp.rename(temp, dst)


async def _remove_temp(sftp: SFTPClient | None, temp: str, *, remote: bool) -> None:
    import asyncssh

    if not remote:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return
    if sftp is None:
        return
    with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
        async with asyncio.timeout(_SFTP_CLEANUP_S):
            await sftp.remove(temp)
