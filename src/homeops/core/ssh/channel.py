"""One remote command's session: its channel, output streams, how it ended, session slots.

Also the live connection box (:class:`Conn`) the pool, the killer and SFTP share, and what
to do when a server refuses to open one more session on it.

Duck-typed against asyncssh's ``SSHClientSession`` callbacks, so this module needs no
asyncssh import at load time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import io
import signal as _signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from homeops.core.errors import SshUnavailable
from homeops.core.logging import get_logger
from homeops.core.ssh.errors import one_line
from homeops.core.ssh.model import (
    MAX_CHANNELS_PER_CONNECTION,
    ConnectionKey,
    OutputSink,
    SshTarget,
    log_fields,
)

if TYPE_CHECKING:
    from asyncssh import SSHClientChannel, SSHClientConnection, SSHClientSession

    from homeops.core.ssh.kill import Kill

_log = get_logger("core.ssh")

# OpenSSH's ssh exits 255 when the server sends no exit status; callers know that convention.
NO_EXIT_STATUS: Final = 255
_EXTENDED_DATA_STDERR: Final = 1
# Kept of each stream's end whatever the cap or sink, for error messages ("last stderr line").
_TAIL_BYTES: Final = 4096
# Output queued for an async sink before reading pauses, and below which it resumes. Reading
# is paused for a batch, not per chunk: asyncssh reopens the whole SSH window on every chunk
# it delivers, so pausing after each chunk would let its own buffer grow without bound.
_QUEUE_HIGH: Final = 1024 * 1024
_QUEUE_LOW: Final = _QUEUE_HIGH // 2
# Pauses before trying again a channel open the server refused although fewer of our
# channels were open than it allowed before (sshd frees a closed channel's slot late).
REFUSED_OPEN_PAUSES_S: Final = (0.01, 0.05, 0.1, 0.25)


class Abandoned(Exception):
    """The caller gave up before the server confirmed the channel; it was closed unused."""


def _writer(sink: OutputSink | None) -> Callable[[bytes], object] | None:
    if sink is None:
        return None
    write = getattr(sink, "write", None)
    return cast("Callable[[bytes], object]", write if callable(write) else sink)


class OutputStream:
    """stdout or stderr of one command: handed to a sink, or kept up to ``cap`` bytes."""

    def __init__(self, sink: OutputSink | None, cap: int | None) -> None:
        self._write = _writer(sink)
        self._cap = cap
        # BytesIO, not a list joined at the end: its getvalue() hands over the buffer without
        # a copy, so capturing N bytes peaks at about N, not 2N.
        self._kept_bytes = io.BytesIO()
        self._kept = 0
        self.dropped = 0
        self.tail = b""

    def feed(self, data: bytes) -> object:
        """Take one chunk; returns what the sink returned (maybe an awaitable)."""
        self.tail = data[-_TAIL_BYTES:] if len(data) >= _TAIL_BYTES else self.tail + data
        self.tail = self.tail[-_TAIL_BYTES:]
        if self._write is not None:
            return self._write(data)
        room = len(data) if self._cap is None else max(0, self._cap - self._kept)
        if room < len(data):
            self.dropped += len(data) - room
            data = data[:room]
        if data:
            self._kept_bytes.write(data)
            self._kept += len(data)
        return None

    def value(self) -> bytes:
        """The kept bytes (once: the buffer is released)."""
        data = self._kept_bytes.getvalue()
        self._kept_bytes = io.BytesIO()
        return data

    def last_line(self) -> str | None:
        """The last non-empty line of the stream, decoded leniently."""
        lines = self.tail.decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else None


class ChannelCount:
    """Session channels open on one connection (server-confirmed and not yet closed)."""

    def __init__(self) -> None:
        self.open = 0


@dataclass
class Conn:
    """A live connection (a box, so a dropped connection is told apart from its successor)."""

    conn: SSHClientConnection
    count: ChannelCount = field(default_factory=ChannelCount)
    # Its SSH_CONNECTION as the server's sessions see it (None: unknown), for the fallback kill.
    identity: str | None = None
    # One SFTP session kept open for every SFTP call on this connection (core/ssh/sftp.py):
    # starting one costs the server a new sftp-server process each time. It holds a session
    # slot while kept, and gives it back when a command waits for one and nobody uses it.
    sftp: Any = None
    sftp_slot: Slot | None = None
    sftp_users: int = 0
    sftp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def forget_sftp(self) -> None:
        """Close the kept SFTP session (if any) and give its slot back."""
        sftp, self.sftp = self.sftp, None
        slot, self.sftp_slot = self.sftp_slot, None
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.exit()
            self.count.open -= 1
        if slot is not None:
            if slot.slots.reclaim == self.reclaim_sftp:
                slot.slots.reclaim = None
            slot.release()

    def reclaim_sftp(self) -> bool:
        """Free the kept SFTP session's slot if nobody is using it; whether it did."""
        if self.sftp is None or self.sftp_users:
            return False
        self.forget_sftp()
        return True


class Collector:
    """One remote command's session: routes output, records how it ended.

    ``ended`` is set only when the server reports an exit status or signal: that alone proves
    the command is over. ``done`` is set when the channel is gone, which may also mean the
    connection died with the command still running.
    """

    def __init__(
        self,
        stdout: OutputStream,
        stderr: OutputStream,
        count: ChannelCount | None = None,
        on_open: Callable[[int], None] | None = None,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self._count = count
        self._on_open = on_open
        self.opened = False
        self.abandoned = False
        # The server accepted the exec request: OpenSSH's sshd has forked the command by then.
        self.started = False
        self.chan: SSHClientChannel[bytes] | None = None
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.error: Exception | None = None
        self.sink_error: BaseException | None = None
        self._pump: asyncio.Future[None] | None = None  # awaiting an async sink
        self._queue: collections.deque[tuple[OutputStream, bytes]] = collections.deque()
        self._queued = 0
        self._paused = False
        self._flushing = False
        self.kill: asyncio.Task[Kill] | None = None  # the one kill of this command, once begun
        # Events, not Futures: a timeout cancelling the waiter must not cancel the result.
        self.ended = asyncio.Event()
        self.done = asyncio.Event()
        # Channel gone and every sink write finished, or a sink failed.
        self.finished = asyncio.Event()

    # The callback signatures are asyncssh's; unused arguments are part of that protocol.
    def connection_made(self, chan: object) -> None:
        # Called once the server confirmed the channel open, before the exec request is
        # sent. A caller that gave up meanwhile must not start the command late: close the
        # channel (so it holds no server session) and stop asyncssh before it sends exec.
        channel = cast("SSHClientChannel[bytes]", chan)
        if self.abandoned:
            channel.close()
            raise Abandoned
        self.opened = True
        self.chan = channel
        if self._count is not None:
            self._count.open += 1
            if self._on_open is not None:
                self._on_open(self._count.open)

    def session_started(self) -> None:
        self.started = True

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.sink_error is not None:
            return
        stream = self.stderr if datatype == _EXTENDED_DATA_STDERR else self.stdout
        if self._pump is not None:  # an async sink is busy: keep the order, queue
            self._queue.append((stream, data))
            self._queued += len(data)
            if self._queued > _QUEUE_HIGH and not self._paused and not self._flushing:
                self._pause()
            return
        try:
            result = stream.feed(data)
        except Exception as exc:  # the caller's sink: its failure ends the command
            self._fail(exc)
            return
        if inspect.isawaitable(result):
            self._pump = asyncio.ensure_future(self._drain(result))

    async def _drain(self, first: Awaitable[object]) -> None:
        """Await the async sink's writes in order, resuming reading as the queue empties."""
        try:
            await first
            while self._queue:
                stream, data = self._queue.popleft()
                self._queued -= len(data)
                if self._paused and self._queued <= _QUEUE_LOW:
                    self._resume()
                result = stream.feed(data)
                if inspect.isawaitable(result):
                    await result
        # The caller's sink (run() re-raises it); a cancelled pump must end the wait too.
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._pump = None
            if self._paused and self.sink_error is None:
                self._resume()
            self._check_finished()

    def _pause(self) -> None:
        assert self.chan is not None
        self._paused = True
        self.chan.pause_reading()

    def _resume(self) -> None:
        assert self.chan is not None
        self._paused = False
        # asyncssh hands over everything it buffered meanwhile, right here: take it all
        # into the queue (no pausing half-way), then pause again if that is too much.
        self._flushing = True
        try:
            self.chan.resume_reading()
        finally:
            self._flushing = False
        if self._queued > _QUEUE_HIGH and self._pump is not None:
            self._pause()

    def _fail(self, exc: BaseException) -> None:
        if self.sink_error is None:
            self.sink_error = exc
        self._queue.clear()
        self.finished.set()

    def _check_finished(self) -> None:
        if self.done.is_set() and self._pump is None:
            self.finished.set()

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
        self.ended.set()

    def exit_signal_received(
        self,
        signal: str,
        core_dumped: bool,  # noqa: ARG002
        msg: str,  # noqa: ARG002
        lang: str,  # noqa: ARG002
    ) -> None:
        self.exit_signal = signal
        self.ended.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.opened and self._count is not None:
            self._count.open -= 1
        self.error = exc
        self.done.set()
        self._check_finished()

    def factory(self) -> Callable[[], SSHClientSession[bytes]]:
        """A session factory for ``create_session`` that hands out this collector."""
        return lambda: cast("SSHClientSession[bytes]", self)

    def status(self) -> int:
        if self.exit_status is not None:
            return self.exit_status
        if self.exit_signal is not None:
            try:
                return 128 + int(_signal.Signals[f"SIG{self.exit_signal}"])
            except KeyError:
                return 128
        return NO_EXIT_STATUS


def _retrieve(task: asyncio.Future[Any]) -> None:
    # A late open's outcome matters to nobody; fetch it so asyncio does not report it.
    if not task.cancelled():
        task.exception()


async def open_channel(
    conn: SSHClientConnection, session: Collector, command: str
) -> SSHClientChannel[bytes]:
    """Open a session channel running ``command`` with ``session`` as its callbacks.

    The open runs in a task of its own: cancelling the caller (its timeout) does not leave
    asyncssh half-way, with a channel the server confirms later and nobody closes (each
    such channel holds one of the server's MaxSessions). The caller's session is marked
    abandoned instead, and :meth:`Collector.connection_made` closes a late channel unused.
    """
    task = asyncio.ensure_future(
        conn.create_session(session.factory(), command, encoding=None, request_pty=False)
    )
    try:
        chan, _ = await asyncio.shield(task)
    except asyncio.CancelledError:
        session.abandoned = True
        task.add_done_callback(_retrieve)
        raise
    return chan


class SessionSlots:
    """How many session channels one host's connection may have at once; who waits for one.

    The limit starts at the target's ``max_sessions`` (then fixed), else at OpenSSH's default
    and is lowered when the server refuses an open: the number of our channels open at that
    moment is what it allows. sshd frees a closed channel's slot a moment after the close,
    so a refusal can also be spurious; ``proven`` (most channels ever open at once) tells the
    two apart, as the server allowed that many before.
    """

    def __init__(self, limit: int | None) -> None:
        self.fixed = limit is not None
        self.limit = limit if limit is not None else MAX_CHANNELS_PER_CONNECTION
        self.held = 0
        self.proven = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Frees a slot held by something idle (a kept SFTP session) when all are taken.
        self.reclaim: Callable[[], bool] | None = None

    def seen_open(self, count: int) -> None:
        self.proven = max(self.proven, count)

    def refused(self, open_now: int, *, force: bool = False) -> bool:
        """A refusal with ``open_now`` channels open: lower the limit if it says so.

        Returns whether the refused open should queue for a slot (the server is full) rather
        than pause and try again. ``force`` trusts a refusal below ``proven`` (it repeated).
        """
        if not self.fixed and 1 <= open_now < self.limit and (force or open_now >= self.proven):
            self.limit = open_now
        return open_now >= 1 and open_now >= self.limit

    async def acquire(self) -> None:
        if self.held >= self.limit and not self._waiters and self.reclaim is not None:
            self.reclaim()
        if self.held < self.limit and not self._waiters:
            self.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the caller gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.held -= 1
        while self._waiters and self.held < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)


class Slot:
    """One caller's hold on a :class:`SessionSlots` (idempotent release, handed over)."""

    def __init__(self, slots: SessionSlots) -> None:
        self.slots = slots
        self.held = False

    async def acquire(self) -> None:
        if not self.held:
            await self.slots.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()


async def wait_any(seconds: float, *events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set, at most ``seconds``."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def slots_for(
    table: dict[ConnectionKey, SessionSlots], key: ConnectionKey, target: SshTarget
) -> SessionSlots:
    """The session slots of ``key`` in ``table``, made on first use (limit from ``target``)."""
    slots = table.get(key)
    if slots is None:
        slots = table[key] = SessionSlots(target.max_sessions)
    elif target.max_sessions is not None and slots.limit != target.max_sessions:
        slots.fixed, slots.limit = True, target.max_sessions
    return slots


async def after_refusal(
    target: SshTarget,
    entry: Conn,
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
        **log_fields(target),
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
            **log_fields(target),
        )
    slot.release()
    await slot.acquire()
    return True
