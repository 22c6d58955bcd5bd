"""Flusher: group commit over syncfs, and fsync per path where that is not possible."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from homeops.core import durable
from homeops.core.durable import Flusher


class SlowSync:
    """A syncfs stand-in recording when each call began and ended."""

    def __init__(self, seconds: float = 0.02, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.calls: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        begin = time.monotonic()
        time.sleep(self.seconds)
        with self.lock:
            self.calls.append((begin, time.monotonic()))
        if self.fail:
            raise OSError(95, "Operation not supported")


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    seen: list[Path] = []
    monkeypatch.setattr(durable, "fsync_path", seen.append)
    return seen


def test_concurrent_flushes_share_syncs_that_began_after_each_asked(
    tmp_path: Path, fsyncs: list[Path]
) -> None:
    sync = SlowSync()
    flusher = Flusher(tmp_path, syncfs=sync)
    asked: dict[int, tuple[float, float]] = {}

    def one(n: int) -> None:
        begin = time.monotonic()
        flusher.flush([tmp_path])
        asked[n] = (begin, time.monotonic())

    threads = [threading.Thread(target=one, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(asked) == 12
    # Shared: fewer syncs than callers (one runs while the others queue for the next).
    assert 1 <= len(sync.calls) < 12
    # Sound: every caller was covered by a sync that started after it asked.
    for begin, end in asked.values():
        assert any(s >= begin and e <= end for s, e in sync.calls)
    assert fsyncs == []


def test_without_syncfs_each_path_is_fsynced(tmp_path: Path, fsyncs: list[Path]) -> None:
    flusher = Flusher(tmp_path, syncfs=None)
    assert not flusher.grouped
    flusher.flush([tmp_path / "a", tmp_path])
    assert fsyncs == [tmp_path / "a", tmp_path]


def test_a_failing_syncfs_falls_back_to_fsync_for_good(tmp_path: Path, fsyncs: list[Path]) -> None:
    sync = SlowSync(0.0, fail=True)
    flusher = Flusher(tmp_path, syncfs=sync)
    flusher.flush([tmp_path / "a"])
    flusher.flush([tmp_path / "b"])
    assert len(sync.calls) == 1
    assert not flusher.grouped
    assert fsyncs == [tmp_path / "a", tmp_path / "b"]


def test_a_missing_anchor_fsyncs_this_once(tmp_path: Path, fsyncs: list[Path]) -> None:
    sync = SlowSync(0.0)
    flusher = Flusher(tmp_path / "not-yet", syncfs=sync)
    flusher.flush([tmp_path / "a"])
    assert fsyncs == [tmp_path / "a"]
    (tmp_path / "not-yet").mkdir()
    flusher.flush([tmp_path / "b"])
    assert (flusher.grouped, len(sync.calls), fsyncs) == (True, 1, [tmp_path / "a"])


def test_nothing_to_flush_costs_nothing(tmp_path: Path, fsyncs: list[Path]) -> None:
    sync = SlowSync(0.0)
    Flusher(tmp_path, syncfs=sync).flush([])
    assert sync.calls == [] and fsyncs == []


def test_the_real_syncfs_on_linux(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    flusher = Flusher(tmp_path)
    assert flusher.grouped  # Linux with glibc: syncfs(2) is there
    flusher.flush([tmp_path / "f", tmp_path])
    assert flusher.grouped
