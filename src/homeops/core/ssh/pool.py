"""The pool: one reused connection per host, and running one command on it.

Connecting is :mod:`~homeops.core.ssh.connect`, a command's session
:mod:`~homeops.core.ssh.channel`, killing what ran too long :mod:`~homeops.core.ssh.kill`,
file transfers :mod:`~homeops.core.ssh.sftp`; this module ties them to one cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from homeops.core.errors import HomeopsTimeout, OperationalError, SshUnavailable
from homeops.core.logging import get_logger, mask
from homeops.core.retry import SEED_POLICY, RetryPolicy, Sleep
from homeops.core.ssh import sftp
from homeops.core.ssh.channel import (
    REFUSED_OPEN_PAUSES_S,
    Collector,
    Conn,
    OutputStream,
    SessionSlots,
    Slot,
    after_refusal,
    open_channel,
    slots_for,
)
from homeops.core.ssh.connect import open_connection
from homeops.core.ssh.errors import one_line
from homeops.core.ssh.kill import (
    CANCEL_GRACE_S,
    CANCEL_KILL_BUDGET_S,
    KILL_BUDGET_S,
    KILL_GRACE_S,
    Kill,
    Killer,
    connection_identity,
    log_stopped,
)
from homeops.core.ssh.model import (
    DEFAULT_MAX_OUTPUT,
    ConnectionKey,
    OutputSink,
    SshResult,
    SshTarget,
    connection_key,
    log_fields,
)

_log = get_logger("core.ssh")

# How long close() waits for kills still running before it closes their connections.
_CLOSE_KILL_WAIT_S: Final = 10.0


class SshPool:
    """Reusable SSH connections, one per (user, host, port); use as ``async with SshPool()``.

    ``policy`` and ``sleep`` govern only retries of connection establishment.
    """

    def __init__(self, *, policy: RetryPolicy = SEED_POLICY, sleep: Sleep = asyncio.sleep) -> None:
        self._policy = policy
        self._sleep = sleep
        self._conns: dict[ConnectionKey, Conn] = {}
        # The connect in flight per host: every command that needs the host meanwhile waits
        # for this one task and gets its connection or its failure.
        self._connecting: dict[ConnectionKey, asyncio.Task[Conn]] = {}
        self._connect_waiters: dict[ConnectionKey, int] = {}
        self._seen: set[ConnectionKey] = set()  # connected before: a new connect is a reconnect
        # Per host, not per connection: the server's limit outlives a reconnect, and commands
        # on a dropped connection hold their slots until they are done.
        self._slots: dict[ConnectionKey, SessionSlots] = {}
        self._killer = Killer(functools.partial(self._new_conn, purpose="kill"))
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

    def _command_slots(self, target: SshTarget) -> SessionSlots:
        """The session slots commands and SFTP to ``target`` share."""
        return slots_for(self._slots, connection_key(target), target)

    def _live(self, key: ConnectionKey) -> Conn | None:
        entry = self._conns.get(key)
        return entry if entry is not None and not entry.conn.is_closed() else None

    async def _connection(self, target: SshTarget) -> tuple[Conn, bool]:
        """The cached connection for ``target``, or a new one; the flag says it is new.

        Concurrent first commands to a host share one connect (with its retries): all of
        them get its connection, or its failure. The failure is not remembered beyond the
        commands already waiting: the next command after it starts a new connect, as a
        host that was just down may be back, and the retry policy already spaced the tries.
        A connect nobody waits for any more (all their deadlines passed) is cancelled.
        """
        if self._closed:
            raise OperationalError("ssh pool is closed")
        key = connection_key(target)
        entry = self._live(key)
        if entry is not None:
            return entry, False
        pending = self._connecting.get(key)
        if pending is None or pending.done():
            stale = self._conns.pop(key, None)
            if stale is not None:
                stale.forget_sftp()  # its session slot is the next connection's
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

    async def _establish(self, target: SshTarget, key: ConnectionKey) -> Conn:
        entry = await self._new_conn(target, reconnect=key in self._seen)
        if self._closed:
            entry.conn.abort()
            raise OperationalError("ssh pool is closed")
        self._seen.add(key)
        self._conns[key] = entry
        return entry

    async def _new_conn(
        self, target: SshTarget, *, reconnect: bool = False, purpose: str = "commands"
    ) -> Conn:
        conn = await open_connection(
            target, policy=self._policy, sleep=self._sleep, reconnect=reconnect, purpose=purpose
        )
        return Conn(conn, identity=connection_identity(conn))

    def _connect_done(self, key: ConnectionKey, task: asyncio.Task[Conn]) -> None:
        if self._connecting.get(key) is task:
            del self._connecting[key]
        # Every waiter may have been cancelled; the failure was logged by _connect already.
        if not task.cancelled():
            task.exception()

    def _drop(self, target: SshTarget, entry: Conn) -> None:
        key = connection_key(target)
        if self._conns.get(key) is entry:
            del self._conns[key]
        entry.forget_sftp()
        entry.conn.abort()

    async def _open(
        self,
        target: SshTarget,
        entry: Conn,
        fresh: bool,
        command: str,
        tried: list[tuple[Collector, Conn]],
        slot: Slot,
        streams: tuple[OutputStream, OutputStream],
    ) -> tuple[Collector, Conn]:
        """Open a channel running ``command``; reconnect once if a reused connection died.

        Reconnecting is safe only while the server has not confirmed the channel: the exec
        request goes out after that, so the command cannot have started. Each session tried
        is appended to ``tried`` at once, so a timeout or cancellation arriving before this
        returns still finds the channel to kill.
        """
        import asyncssh

        pauses = iter(REFUSED_OPEN_PAUSES_S)
        while True:
            session = Collector(*streams, entry.count, slot.slots.seen_open)
            tried.append((session, entry))
            try:
                await open_channel(entry.conn, session, command)
            except (OSError, asyncssh.Error) as exc:
                # "SSH connection closed" arrives as a ChannelOpenError: look at the connection.
                lost = entry.conn.is_closed() or not isinstance(exc, asyncssh.ChannelOpenError)
                if not lost:
                    if await after_refusal(target, entry, slot, pauses, "session", exc):
                        pauses = iter(REFUSED_OPEN_PAUSES_S)
                    continue
                self._drop(target, entry)
                if fresh or session.opened:
                    raise SshUnavailable(
                        f"ssh {target.destination}: connection lost starting command:"
                        f" {one_line(exc)}"
                    ) from exc
                _log.info("run", "cached connection was lost, reconnecting", **log_fields(target))
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
        display: str | None = None,
    ) -> SshResult:
        """Run ``command`` on ``target``; ``timeout`` bounds connecting, queueing and running.

        ``display`` is what logs and errors show for the command (default: the command with
        registered secrets masked); the Runner passes the argv it quoted, as an encoded
        PowerShell command would hide a secret from masking without hiding it from a reader.

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
        shown = mask(command) if display is None else mask(display)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        streams = (OutputStream(stdout, max_output), OutputStream(stderr, max_output))
        tried: list[tuple[Collector, Conn]] = []
        slot = Slot(self._command_slots(target))
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
                # A command that exits without reading its stdin may close the channel
                # before the write: its result, not a broken pipe, is the answer.
                with contextlib.suppress(BrokenPipeError):
                    if data:
                        session.chan.write(data)
                    # Without EOF a command that reads stdin would wait for the timeout.
                    session.chan.write_eof()
                await session.finished.wait()
            if session.sink_error is not None:
                kill = self._killer.start(target, tried, command, CANCEL_GRACE_S, slot)
                how = await self._killer.outcome(target, shown, kill, CANCEL_KILL_BUDGET_S)
                log_stopped("output sink failed", how, start, shown, target)
                raise session.sink_error
        except TimeoutError:
            if not deadline.expired():
                raise
            kill = self._killer.start(target, tried, command, KILL_GRACE_S, slot)
            how = await self._killer.outcome(target, shown, kill, KILL_BUDGET_S)
            log_stopped("command timed out", how, start, shown, target)
            ending = {
                Kill.NONE: "before the command started"
                + ("" if connected else " (still connecting)"),
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
            # Cancelled from outside (a job's cancel or its own timeout): do not leave the
            # command running, but give the kill a bounded time before cancelling goes on.
            kill = self._killer.start(target, tried, command, CANCEL_GRACE_S, slot)
            how = await self._killer.outcome(target, shown, kill, CANCEL_KILL_BUDGET_S)
            log_stopped("command cancelled", how, start, shown, target)
            raise
        finally:
            slot.release()  # unless a kill took it over: it holds the channel until done
        return self._result(target, entry, session, streams, start, shown, check)

    def _result(
        self,
        target: SshTarget,
        entry: Conn,
        session: Collector,
        streams: tuple[OutputStream, OutputStream],
        start: float,
        shown: str,
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
                **log_fields(target),
            )
        if check and not result.ok:
            tail = err.last_line() or "no stderr"
            raise OperationalError(
                f"ssh {target.destination}: {shown!r}: exit {result.exit_status}: {mask(tail)}"
            )
        return result

    async def put(self, target: SshTarget, local: Path, remote: str, *, timeout: float) -> None:
        """Copy local file ``local`` to ``remote`` on ``target`` over SFTP (atomically).

        ``timeout`` bounds the whole call, connecting included.
        """
        await sftp.transfer(self, target, "put", str(local), remote, timeout)

    async def get(self, target: SshTarget, remote: str, local: Path, *, timeout: float) -> None:
        """Copy ``remote`` on ``target`` to local file ``local`` over SFTP (atomically).

        ``timeout`` bounds the whole call, connecting included.
        """
        await sftp.transfer(self, target, "get", remote, str(local), timeout)

    async def listdir(
        self, target: SshTarget, remote: str, *, timeout: float
    ) -> list[sftp.RemoteEntry] | None:
        """Directory ``remote`` on ``target`` over SFTP, sorted by name; None if it is absent."""
        return await sftp.listdir(self, target, remote, timeout)

    async def close(self) -> None:
        """Close every connection; the pool cannot be used afterwards.

        Kills still running (of commands that timed out or were cancelled) are waited for
        first, as they need their connection; a connect in flight is cancelled.
        """
        self._closed = True
        await self._killer.wait(_CLOSE_KILL_WAIT_S)
        connecting = [*self._connecting.values(), *self._killer.close()]
        for task in connecting:
            task.cancel()
        if connecting:
            await asyncio.wait(connecting, timeout=5)
        entries = list(self._conns.values())
        self._conns.clear()
        for entry in entries:
            entry.forget_sftp()
            entry.conn.close()
        for entry in entries:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.conn.wait_closed(), 5)
