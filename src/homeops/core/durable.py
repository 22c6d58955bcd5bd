"""Making written files and renames durable, with one flush shared by concurrent writers.

An fsync per file and per directory costs a journal commit each (about 0.5 ms here), and a
job that stores three small artifacts paid fourteen of them: at ten jobs at a time that was
the whole budget of the worker. On Linux, ``syncfs(2)`` flushes a whole filesystem for the
price of one commit, so :class:`Flusher` does group commit the way databases do: a caller
that needs its writes durable waits for the next ``syncfs`` that *starts after* it asked,
and callers that ask while one runs all share the one after it. Elsewhere (no ``syncfs``, or
it failed once) each caller fsyncs its own paths, as before.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from homeops.core.logging import get_logger

_log = get_logger("core.durable")

SyncFs = Callable[[int], None]


def _load_syncfs() -> SyncFs | None:
    """``syncfs(fd)`` from the C library, raising OSError on failure; None where absent."""
    if not hasattr(os, "O_DIRECTORY"):
        return None
    try:
        # The running program's own symbols include libc's; find_library("c") would spawn
        # `ldconfig -p` (a fork and exec on every command that stores a file).
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if func(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


def fsync_path(path: Path) -> None:
    """fsync one file or directory by name (a directory makes its entries durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Flusher:
    """Flushes writes under ``anchor`` (a directory on the filesystem they live on).

    ``syncfs`` is the C library's unless given (tests pass a recorder); ``None`` means
    "not available": every :meth:`flush` then fsyncs its paths one by one.
    """

    def __init__(self, anchor: Path, *, syncfs: SyncFs | bool | None = True) -> None:
        self.anchor = anchor
        self._syncfs: SyncFs | None = _load_syncfs() if syncfs is True else (syncfs or None)
        self._cv = threading.Condition()
        self._started = 0  # syncs begun
        self._finished = 0  # the newest sync that has ended
        self._succeeded = 0  # the newest sync that has ended well
        self._running = False

    @property
    def grouped(self) -> bool:
        """Whether flushes are shared (``syncfs``) rather than one fsync per path."""
        return self._syncfs is not None

    def flush(self, paths: Iterable[Path]) -> None:
        """Return once everything written to ``paths`` (files written and closed, renames
        into or out of directories) is on stable storage. OSError if it cannot be."""
        wanted = list(paths)
        if not wanted:
            return
        if self._syncfs is not None and self._group_sync():
            return
        for path in wanted:
            fsync_path(path)

    def _group_sync(self) -> bool:
        """Wait for a syncfs that began after this call; False if none such succeeded."""
        with self._cv:
            needed = self._started + 1
            while self._finished < needed:
                if self._syncfs is None:
                    return False
                if self._running:
                    self._cv.wait()
                    continue
                self._running = True
                self._started += 1
                number = self._started
                self._cv.release()
                try:
                    ok = self._sync_once()
                finally:
                    self._cv.acquire()
                    self._running = False
                    self._finished = number
                    if ok:
                        self._succeeded = number
                    self._cv.notify_all()
            return self._succeeded >= needed

    def _sync_once(self) -> bool:
        syncfs = self._syncfs
        if syncfs is None:
            return False
        try:
            fd = os.open(self.anchor, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False  # this once: the callers fsync their own paths (and say why)
        try:
            syncfs(fd)
        except OSError as exc:
            # A filesystem that refuses syncfs refuses it every time: fsync from now on.
            _log.warn("flush", "syncfs failed; using fsync per file", path=self.anchor, err=exc)
            self._syncfs = None
            return False
        finally:
            os.close(fd)
        return True
