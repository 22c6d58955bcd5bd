"""The only place homeops spawns local processes.

argv lists only (never a shell), a timeout on every call, output captured and optionally
streamed line by line, and the whole process group killed on timeout or cancellation so
no grandchild (``nix build``'s builders, a shell's pipeline) outlives the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from homeops.core.errors import HomeopsTimeout, OperationalError, ToolMissing
from homeops.core.logging import get_logger, mask

_log = get_logger("core.process")

LineCallback = Callable[[str], None]
# After SIGTERM a process group gets this long to exit before SIGKILL.
KILL_GRACE_S = 2.0
# After the process exits, how long its pipes may stay open. A background grandchild
# (`daemon &`) inherits them and may never close them; what it writes later is not ours.
PIPE_DRAIN_S = 1.0
_CHUNK = 65536


@dataclass(frozen=True)
class RawProcessResult:
    """A finished process's output as the bytes it wrote (what the Runner seam hands on).

    ``*_dropped``: bytes cut from the front of a stream kept to its tail (``keep=``)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration_ms: float
    stdout_dropped: int = 0
    stderr_dropped: int = 0


@dataclass(frozen=True)
class ProcessResult:
    """What a finished process left: exit code, captured output, and how long it ran."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_ms: float
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.returncode == 0


class ProcessTimedOut(HomeopsTimeout):
    """A process killed at its timeout (exit 4); what it had written by then is kept
    (``partial``), so a caller can still show why it hung."""

    def __init__(self, message: str, partial: RawProcessResult) -> None:
        super().__init__(message)
        self.partial = partial


def display_argv(argv: Sequence[str]) -> str:
    """The argv as one string for logs and errors, registered secrets masked."""
    return mask(" ".join(_quote(a) for a in argv))


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./:=@%+,#" for c in arg) else repr(arg)


def which(name: str) -> str:
    """Absolute path of executable ``name``, or :class:`ToolMissing` (exit 3)."""
    if os.sep in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise ToolMissing(f"{name}: not an executable file")
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name}: not found on PATH")
    return found


class _Sink:
    """One stream's output: all of it, or (``keep``) only its last ``keep`` bytes, so a
    process that writes without end (a hook in a loop) costs bounded memory."""

    def __init__(self, keep: int | None) -> None:
        self.keep = keep
        self.chunks: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        # Trimmed once it holds twice what is kept: each byte is copied at most twice.
        if self.keep is not None and self.size > 2 * self.keep:
            self._trim(self.keep)

    def _trim(self, keep: int) -> None:
        data = b"".join(self.chunks)
        cut = max(len(data) - keep, 0)
        self.dropped += cut
        self.chunks = [data[cut:]]
        self.size = len(data) - cut

    def value(self) -> bytes:
        if self.keep is not None and self.size > self.keep:
            self._trim(self.keep)
        return b"".join(self.chunks)


async def _pump(
    stream: asyncio.StreamReader | None, sink: _Sink, on_line: LineCallback | None
) -> None:
    # Bytes are kept whole and decoded once at the end so a multi-byte character split
    # across two reads is not mangled; lines are decoded only for the callback.
    if stream is None:
        return
    pending = b""
    while chunk := await stream.read(_CHUNK):
        sink.add(chunk)
        if on_line is not None:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                on_line(raw.decode("utf-8", "replace"))
    if on_line is not None and pending:
        on_line(pending.decode("utf-8", "replace"))


async def _stop_reading(pumps: asyncio.Future[tuple[None, None]]) -> None:
    """End the pipe readers (done already unless the pipes outlived the call)."""
    if not pumps.done():
        pumps.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({pumps})
    if not pumps.cancelled():
        pumps.exception()  # retrieved: a reader's error is not logged as never retrieved


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    # asyncio offers no public way to drop a subprocess's pipes while someone else holds
    # their other ends; closing the transport does it and frees the file descriptors.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after the grace period."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
    # Children may ignore SIGTERM even after the leader is gone: always finish with SIGKILL.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, ProcessLookupError):
        await asyncio.wait_for(proc.wait(), PIPE_DRAIN_S)
        return
    # proc.wait() also waits for the pipes, which a process that left the group (setsid)
    # may hold for ever: drop them and wait for the exit status alone.
    _close_pipes(proc)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | str | None = None,
    on_stdout_line: LineCallback | None = None,
    on_stderr_line: LineCallback | None = None,
    check: bool = False,
    keep: int | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion within ``timeout`` seconds; output decoded as UTF-8.

    ``env`` replaces the environment when given (pass ``{**os.environ, ...}`` to extend).
    ``keep``: of each stream only its last ``keep`` bytes are kept (how many were cut is in
    the result); the line callbacks still see every line.
    Raises :class:`ToolMissing` (3) if the program is absent, :class:`HomeopsTimeout` (4)
    after killing the process group, and with ``check`` :class:`OperationalError` (1) on
    a non-zero exit.
    """
    raw = await run_bytes(
        argv,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=stdin,
        on_stdout_line=on_stdout_line,
        on_stderr_line=on_stderr_line,
        keep=keep,
    )
    result = decoded(raw)
    if check and result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["no stderr"]
        raise OperationalError(f"{display_argv(argv)}: exit {result.returncode}: {mask(tail[0])}")
    return result


def decoded(raw: RawProcessResult) -> ProcessResult:
    """``raw`` with its output decoded as UTF-8 (a stream cut at its front starts at the
    next whole character)."""
    stdout, stdout_dropped = _decode_tail(raw.stdout, raw.stdout_dropped)
    stderr, stderr_dropped = _decode_tail(raw.stderr, raw.stderr_dropped)
    return ProcessResult(
        raw.argv, raw.returncode, stdout, stderr, raw.duration_ms, stdout_dropped, stderr_dropped
    )


def _decode_tail(data: bytes, dropped: int) -> tuple[str, int]:
    """UTF-8 text of a stream and how many bytes were cut: one cut at its front starts at
    the next whole character (the bytes of the split one count as cut)."""
    if dropped:
        skip = next((i for i, b in enumerate(data[:4]) if b & 0xC0 != 0x80), 0)
        data, dropped = data[skip:], dropped + skip
    return data.decode("utf-8", "replace"), dropped


async def run_bytes(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | str | None = None,
    on_stdout_line: LineCallback | None = None,
    on_stderr_line: LineCallback | None = None,
    keep: int | None = None,
) -> RawProcessResult:
    """Like :func:`run`, but the output stays bytes and a non-zero exit is only reported.

    The machinery of every local spawn: :func:`run` and the local Runner
    (:class:`homeops.core.runner.LocalRunner`) both come through here.
    """
    if not argv:
        raise ValueError("argv must not be empty")
    if keep is not None and keep < 0:
        raise ValueError("keep must be >= 0")
    exe = which(argv[0])
    shown = display_argv(argv)
    _log.debug("spawn", "starting process", argv=shown, timeout_s=timeout)
    start = time.monotonic()
    data = stdin.encode() if isinstance(stdin, str) else stdin
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            *argv[1:],
            stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise OperationalError(f"{shown}: cannot start: {exc.strerror or exc}{where}") from exc
    out, err = _Sink(keep), _Sink(keep)
    # The pipes are read until the call is over, through a kill too: a process killed while
    # it writes (and what it writes as it dies) is read to its end, so the pipes close and
    # its exit is seen at once; left unread, a full pipe kept proc.wait() waiting for the
    # whole kill grace period.
    pumps = asyncio.ensure_future(
        asyncio.gather(
            _pump(proc.stdout, out, on_stdout_line), _pump(proc.stderr, err, on_stderr_line)
        )
    )

    async def communicate() -> int:
        if data is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(data)
                await proc.stdin.drain()
            proc.stdin.close()
        # Python 3.11's proc.wait() also waits for the pipes to close, so watch the exit
        # status directly while reading: a normal exit closes the pipes at once.
        while not pumps.done() and proc.returncode is None:
            await asyncio.wait({pumps}, timeout=0.05)
        if not pumps.done():
            done, _ = await asyncio.wait({pumps}, timeout=PIPE_DRAIN_S)
            if not done:
                # A background grandchild inherited the pipes; like on timeout, nothing
                # the call started may outlive it.
                _signal_group(proc.pid, signal.SIGKILL)
                done, _ = await asyncio.wait({pumps}, timeout=PIPE_DRAIN_S)
                if done:
                    _log.warn("spawn", "exited; killed its group that held the pipes", argv=shown)
                else:
                    # Only a process that left the group (setsid, a daemon) can still
                    # hold them: stop reading and report the real exit status.
                    _log.warn(
                        "spawn",
                        "exited; a process outside its group holds the pipes, not waiting",
                        argv=shown,
                    )
                    _close_pipes(proc)
                    return proc.returncode if proc.returncode is not None else -1
        # asyncio.wait: a cancellation here must not cancel the reading (see above).
        await asyncio.wait({pumps})
        pumps.result()
        return await proc.wait()

    try:
        async with asyncio.timeout(timeout):
            rc = await communicate()
    except TimeoutError:
        await _terminate(proc)
        await _stop_reading(pumps)
        elapsed = (time.monotonic() - start) * 1000
        _log.warn("spawn", "process timed out, killed", argv=shown, duration_ms=elapsed)
        partial = RawProcessResult(
            tuple(argv), -1, out.value(), err.value(), elapsed, out.dropped, err.dropped
        )
        raise ProcessTimedOut(f"{shown}: timed out after {timeout:g}s (killed)", partial) from None
    except BaseException:
        # Cancellation (or anything else) must not leave the group running.
        await asyncio.shield(_terminate(proc))
        await asyncio.shield(_stop_reading(pumps))
        raise
    finally:
        await _stop_reading(pumps)
    elapsed = (time.monotonic() - start) * 1000
    _log.debug("spawn", "process exited", argv=shown, rc=rc, duration_ms=elapsed)
    stdout, stderr = out.value(), err.value()
    return RawProcessResult(tuple(argv), rc, stdout, stderr, elapsed, out.dropped, err.dropped)
