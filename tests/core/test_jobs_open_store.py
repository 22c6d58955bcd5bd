"""core.jobs.store: the one place that picks a backend; the client/lease split; StoreBusy."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from homeops.core.errors import OperationalError
from homeops.core.jobs import JobClient, LeaseQueue, StoreBusy, StoreCorrupt, open_store
from homeops.core.jobs.sqlite import SqliteJobQueue
from homeops.core.jobs.store import open_worker_queue
from homeops.core.settings import CoreSettings

SRC = Path(__file__).parents[2] / "src" / "homeops"


def settings_for(tmp_path: Path) -> CoreSettings:
    return CoreSettings.model_validate({"state_dir": str(tmp_path / "state")})


def test_only_the_store_module_names_the_sqlite_backend() -> None:
    allowed = {
        SRC / "core/jobs/sqlite.py",
        SRC / "core/jobs/store.py",
        SRC / "core/jobs/__init__.py",
    }
    naming = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path not in allowed and re.search(r"\bSqliteJobQueue\b", path.read_text())
    )
    assert naming == []


def test_open_store_gives_a_client_and_the_worker_a_lease_queue(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    client = open_store(settings)
    try:
        assert isinstance(client, SqliteJobQueue)
        job = client.enqueue("t.x", {"n": 1})
        assert client.get(job.id).payload == {"n": 1}
    finally:
        client.close()
    queue: LeaseQueue = open_worker_queue(settings)
    try:
        claimed = queue.claim("w1", 1, 30.0)
        assert [j.id for j in claimed] == [job.id]
    finally:
        queue.close()
    reader: JobClient = open_store(settings, readonly=True)
    try:
        assert reader.get(job.id).state.value == "running"
    finally:
        reader.close()


def test_a_held_lock_is_store_busy_not_a_message_to_search(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    queue = SqliteJobQueue(db, busy_timeout_s=0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreBusy) as info:
            queue.enqueue("t.x", {}, idempotency_key="k1")
        # Opening while the lock is held is the same error (the worker waits on it).
        queue.close()
        with pytest.raises(StoreBusy):
            SqliteJobQueue(db, busy_timeout_s=0.05)
    finally:
        holder.execute("ROLLBACK")
        queue.close()
        holder.close()
    assert isinstance(info.value, OperationalError)
    assert not isinstance(info.value, StoreCorrupt)
    assert str(db) in str(info.value)
