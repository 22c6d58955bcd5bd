"""The embedded job queue: one SQLite file (WAL) under the state dir, shared by worker processes.

Every state change is one short write transaction. Claims run under ``BEGIN IMMEDIATE`` so two
worker processes on the same file can never take the same job: SQLite admits one writer at a
time and the second claim sees the first one's rows as ``running``. ``synchronous=NORMAL`` in
WAL mode means a commit does not fsync (a power cut may lose the last few commits, never
corrupt the file); that is the price of >1,000 jobs/s and fine for a homelab job log.

Leases: a claimed job carries ``lease_until``; the worker extends it with heartbeats. When a
worker dies the lease runs out and the next claim takes the job again (counting the lost try as
an attempt), or fails it with ``lease expired`` if it has no attempts left. Nothing is lost.

One connection per database file per process, shared by every queue object on that file and
guarded by a lock (opened with ``check_same_thread=False``), so queues may be used from
several threads; the worker makes its calls from a thread of its own. Sharing is not an
optimisation: POSIX advisory locks belong to the process, and closing *any* descriptor of the
file drops all of them (SQLite's "How To Corrupt An SQLite Database File", section 2.2). A
worker whose locks were dropped that way looks absent to the next process that closes its
connection, which then checkpoints and deletes the WAL under the worker: lost commits, double
claims, broken indexes. So nothing here ever opens the database file outside SQLite while a
connection to it may exist in this process: the file is created (0600) only when it is absent,
and a second ``SqliteJobQueue(path)`` in the same process (a handler that reads the store
inside a worker) reuses the connection of the first. SQLite itself copes with several of its
own connections to one file in one process, which is what a read-only queue next to a writer
of another file spelling would be.

``readonly=True`` opens for reading only (``jobs list``, ``jobs status``, ``doctor``): no
directory or file is created, no mode is changed, no write transaction is taken, and a store
that does not exist yet reads as empty.

A call that needs the write lock while another process holds it waits up to ``busy_timeout_s``
(10 s by default) before failing. Keep worker leases longer than that (the default lease is
30 s), or a worker whose heartbeat waited that long has to give up its running jobs.

Size: finished jobs stay until :meth:`SqliteJobQueue.prune` deletes them (``jobs prune``, the
artifact sweep), in short batches so that no other writer waits long. What callers ask often
stays flat however many jobs are stored: ``counts()`` reads ``job_counts``, one row per (type,
state) kept by triggers in the transaction of every change, and ``list(type=...)`` walks the
``jobs_type`` index. Schema 1 stores are migrated when a writer opens them; a read-only queue
on one that is not migrated yet reads the old way (correct, only slower).
"""

from __future__ import annotations

import builtins
import json
import math
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from homeops.core.errors import OperationalError, UsageError
from homeops.core.jobs.model import (
    Job,
    JobState,
    backoff_delay,
    canonical_payload,
    encode_payload,
    new_job_id,
    new_trace_id,
    validate_idempotency_key,
    validate_job_id,
    validate_job_type,
    validate_trace_id,
)
from homeops.core.jobs.queue import HeartbeatResult, MetricsSink, StoreBusy, StoreCorrupt
from homeops.core.logging import get_logger

_log = get_logger("core.jobs")

SCHEMA_VERSION: Final = 2
LIST_LIMIT_MAX: Final = 10_000
# Rows deleted per prune transaction: about 10-20 ms of write lock each (bench/jobs_store_bench.py),
# so a worker's claim or heartbeat waiting behind a 1M-row prune waits one batch, not seconds.
PRUNE_BATCH: Final = 1000
_TERMINAL_SQL: Final = "('succeeded', 'failed', 'cancelled')"
# How every problem with the counters starts: those, and only those, a recount repairs.
COUNTER_PROBLEM: Final = "job counters:"
# How a missing table or index is reported: `jobs check --repair` creates it again.
SCHEMA_PROBLEM: Final = "schema:"
_KNOWN_STATES: Final = frozenset(str(s) for s in JobState)

_COLUMNS: Final = (
    "id, type, payload, trace_id, state, attempts, max_attempts, idempotency_key, "
    "created_at, updated_at, started_at, finished_at, available_at, lease_until, worker_id, "
    "result, error, cancel_requested, timeout_s"
)

_SCHEMA: Final = (
    """
    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        type             TEXT NOT NULL,
        payload          TEXT NOT NULL,
        trace_id         TEXT NOT NULL,
        state            TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL,
        idempotency_key  TEXT UNIQUE,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        available_at     REAL NOT NULL,
        lease_until      REAL,
        worker_id        TEXT,
        result           TEXT,
        error            TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        timeout_s        REAL
    )
    """,
    # The claim reads due queued jobs in order and expired leases: both are index range scans.
    # (Partial indexes on available_at lost to jobs_state in the planner without ANALYZE.)
    "CREATE INDEX jobs_due ON jobs(state, available_at)",
    "CREATE INDEX jobs_lease ON jobs(state, lease_until)",
    # counts() and list(state=...) without scanning the whole history.
    "CREATE INDEX jobs_state ON jobs(state, created_at)",
    "CREATE INDEX jobs_created ON jobs(created_at)",
)

# Schema 2, applied after _SCHEMA to a new store and on its own to a schema 1 store.
_REFILL_COUNTS: Final = (
    "INSERT INTO job_counts (type, state, n) SELECT type, state, COUNT(*) FROM jobs "
    "GROUP BY type, state"
)
# Triggers, not Python, keep the counters: they run inside the statement's own transaction,
# so no code path (nor a hand-made UPDATE in the sqlite3 shell) changes a row without its
# count. Heartbeats set neither column and do not fire them.
_TRIGGERS: Final = {
    "jobs_count_insert": """
        CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO job_counts (type, state, n) VALUES (NEW.type, NEW.state, 1)
                ON CONFLICT (type, state) DO UPDATE SET n = n + 1;
        END
    """,
    "jobs_count_delete": """
        CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
            UPDATE job_counts SET n = n - 1 WHERE type = OLD.type AND state = OLD.state;
        END
    """,
    "jobs_count_update": """
        CREATE TRIGGER jobs_count_update AFTER UPDATE OF type, state ON jobs
            WHEN OLD.type IS NOT NEW.type OR OLD.state IS NOT NEW.state BEGIN
            UPDATE job_counts SET n = n - 1 WHERE type = OLD.type AND state = OLD.state;
            INSERT INTO job_counts (type, state, n) VALUES (NEW.type, NEW.state, 1)
                ON CONFLICT (type, state) DO UPDATE SET n = n + 1;
        END
    """,
}
_SCHEMA_2: Final = (
    # One row per (type, state) seen: counts() and the drain check read a few rows instead of
    # grouping the whole history (206 ms at 1M jobs in schema 1). Rows at n = 0 stay until a
    # prune clears them; they are as many as types times states, a handful.
    """
    CREATE TABLE job_counts (
        type  TEXT NOT NULL,
        state TEXT NOT NULL,
        n     INTEGER NOT NULL,
        PRIMARY KEY (type, state)
    ) WITHOUT ROWID
    """,
    _REFILL_COUNTS,
    *_TRIGGERS.values(),
    # list(type=T) without scanning for a rare T. Neither column ever changes, so claims and
    # completions do not touch this index (with state in it, and an index on finished_at
    # for prune, the claim-and-complete path lost a third of its speed).
    "CREATE INDEX jobs_type ON jobs(type, created_at)",
    # prune dates a job by finished_at; older versions may have left it NULL on a finished job.
    "UPDATE jobs SET finished_at = updated_at "
    f"WHERE finished_at IS NULL AND state IN {_TERMINAL_SQL}",
)

# A job finishes after it was created, so the jobs to prune are among the oldest by
# created_at: the walk up jobs_created passes only the few old jobs that are unfinished (or
# finished recently) before it has a batch, and stops at the cutoff. No index on finished_at
# needed (every completion would pay for it). The unary + keeps finished_at and state from
# qualifying any index, so jobs_created is the planner's only choice (left alone it took
# jobs_state and sorted every match). Not INDEXED BY: that made a missing index fatal, where
# this makes it a table scan (slow, and reported by `jobs check`).
_PRUNABLE: Final = f"""
    FROM jobs
   WHERE created_at < :cutoff AND +finished_at < :cutoff AND +state IN {_TERMINAL_SQL}
"""
_PRUNE: Final = f"""
    DELETE FROM jobs WHERE rowid IN (
        SELECT rowid {_PRUNABLE} ORDER BY created_at LIMIT :batch)
"""

# The counters against the rows, as (type, state, counter, rows) where they differ.
_COUNTS_DRIFT: Final = """
    SELECT type, state, SUM(c), SUM(r) FROM (
        SELECT type, state, n AS c, 0 AS r FROM job_counts
        UNION ALL
        SELECT type, state, 0, COUNT(*) FROM jobs GROUP BY type, state)
     GROUP BY type, state HAVING SUM(c) != SUM(r) ORDER BY type, state
"""

_CLAIM_DUE: Final = f"""
    UPDATE jobs
       SET state = 'running', attempts = attempts + 1, worker_id = :worker,
           lease_until = :until, started_at = :now, updated_at = :now
     WHERE id IN (SELECT id FROM jobs
                   WHERE state = 'queued' AND available_at <= :now AND NOT cancel_requested
                     AND (:types IS NULL OR type IN (SELECT value FROM json_each(:types)))
                     AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
                   ORDER BY available_at LIMIT :limit)
    RETURNING {_COLUMNS}
"""

_RECLAIM: Final = f"""
    UPDATE jobs
       SET attempts = attempts + 1, worker_id = ?, lease_until = ?, started_at = ?, updated_at = ?
     WHERE id IN (SELECT value FROM json_each(?)) AND state = 'running'
    RETURNING {_COLUMNS}
"""


_ANY_RUNNABLE: Final = """
    SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND available_at <= :now
                     AND NOT cancel_requested
                     AND (:types IS NULL OR type IN (SELECT value FROM json_each(:types)))
                     AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids))))
        OR EXISTS (SELECT 1 FROM jobs WHERE state = 'running' AND lease_until < :now)
"""


def _pick_index(conn: sqlite3.Connection, params: dict[str, Any]) -> builtins.list[str]:
    """For list(state=S, type=T): the WHERE terms that walk the smaller of T's and S's ranges.

    Either walk stops after ``limit`` matches, but for a rare type (or a rare state, such as
    running) the other range can be most of the table. The counters say which is smaller;
    a unary + on the other column keeps its index out of the planner's choice (jobs_type or
    jobs_state is then the only one left). Not INDEXED BY, which fails outright when the
    index is missing.
    """
    by_type, by_state = conn.execute(
        "SELECT COALESCE(SUM(CASE WHEN type = :type THEN n END), 0), "
        "COALESCE(SUM(CASE WHEN state = :state THEN n END), 0) FROM job_counts",
        params,
    ).fetchone()
    if by_type <= by_state:
        return ["+state = :state", "type = :type"]
    return ["state = :state", "+type = :type"]


def _schema_objects(version: int) -> dict[str, str]:
    """Every table, index and trigger of schema ``version`` (1 or 2), as name -> kind."""
    statements = _SCHEMA if version < 2 else _SCHEMA + _SCHEMA_2
    found = (_DDL_NAME.match(stmt) for stmt in statements)
    return {m[2]: m[1].lower() for m in found if m}


_DDL_NAME: Final = re.compile(r"\s*CREATE\s+(TABLE|INDEX|TRIGGER)\s+(\w+)", re.IGNORECASE)


def _ddl(name: str) -> str:
    """The CREATE statement of the schema object ``name``."""
    for stmt in _SCHEMA + _SCHEMA_2:
        m = _DDL_NAME.match(stmt)
        if m and m[2] == name:
            return stmt
    raise KeyError(name)


def _missing_objects(conn: sqlite3.Connection, version: int) -> dict[str, str]:
    """The tables, indexes and triggers of schema ``version`` that the file lacks."""
    present = {
        (kind, name)
        for kind, name in conn.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index', 'trigger')"
        )
    }
    return {
        name: kind for name, kind in _schema_objects(version).items() if (kind, name) not in present
    }


def _schema_problems(conn: sqlite3.Connection, version: int) -> builtins.list[str]:
    """A missing table or index, one problem each (missing triggers are counter problems)."""
    fix = " (`homeops jobs check --repair` creates it again)"
    return [
        f"{SCHEMA_PROBLEM} {kind} {name} is missing{fix}"
        for name, kind in _missing_objects(conn, version).items()
        if kind != "trigger"
    ]


def _unknown_state(job_id: str, state: object) -> StoreCorrupt:
    return StoreCorrupt(
        f"job {job_id} has state {state!r}, which this homeops does not know "
        "(a newer version's store?)"
    )


def _state_problems(
    conn: sqlite3.Connection, max_errors: int, *, jobs: bool = True
) -> builtins.list[str]:
    """Rows (and counters) in a state this version does not know; at most ``max_errors``.

    ``jobs`` False: the jobs table is missing (and so is job_counts, or it is not trusted).
    """
    if not jobs:
        return []
    known = sorted(_KNOWN_STATES)
    marks = ", ".join("?" * len(known))
    counters = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_counts'"
    ).fetchone()
    problems = [
        str(_unknown_state(job_id, state))
        for job_id, state in conn.execute(
            f"SELECT id, state FROM jobs WHERE state NOT IN ({marks}) ORDER BY id LIMIT ?",
            (*known, max_errors),
        )
    ]
    if counters is None:  # schema 1, or lost (a schema problem of its own)
        return problems[:max_errors]
    # A counter in an unknown state is a recount's business only when no row has that state.
    fix = " (`homeops jobs check --repair` recounts them)"
    problems += [
        f"{'' if held else COUNTER_PROBLEM + ' '}job_counts counts {n} job(s) of type "
        f"{job_type} in state {state!r}, which this homeops does not know"
        + (" (a newer version's store?)" if held else fix)
        for job_type, state, n, held in conn.execute(
            "SELECT type, state, n, EXISTS (SELECT 1 FROM jobs j "
            "WHERE j.type = c.type AND j.state = c.state) "
            f"FROM job_counts c WHERE state NOT IN ({marks}) AND n != 0 "
            "ORDER BY type, state LIMIT ?",
            (*known, max_errors),
        )
    ]
    return problems[:max_errors]


def _counter_problems(conn: sqlite3.Connection) -> builtins.list[str]:
    triggers = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'jobs'"
        )
    }
    fix = " (`homeops jobs check --repair` recounts them)"
    problems = [
        f"{COUNTER_PROBLEM} trigger {name} is missing{fix}"
        for name in _TRIGGERS
        if name not in triggers
    ]
    problems += [
        f"{COUNTER_PROBLEM} {job_type} {state} counted {counted}, the table holds {held}{fix}"
        for job_type, state, counted, held in conn.execute(_COUNTS_DRIFT)
    ]
    return problems


def _json_column(r: Sequence[Any], index: int, column: str) -> Any:  # noqa: ANN401
    """Decode one JSON column; a corrupt value is an OperationalError naming job and column."""
    try:
        return json.loads(r[index])
    except (TypeError, ValueError) as exc:  # JSONDecodeError, or not text at all
        raise OperationalError(
            f"jobs database: job {r[0]} has a corrupt {column} column (not JSON: {exc})"
        ) from exc


def _job_state(r: Sequence[Any]) -> JobState:
    """The row's state; one this version does not know is StoreCorrupt naming job and value."""
    try:
        return JobState(r[4])
    except ValueError:
        raise _unknown_state(r[0], r[4]) from None


def _row_to_job(r: Sequence[Any], *, lenient: bool = False) -> Job:
    """The row as a Job. A JSON column that does not decode raises, unless ``lenient`` (reads
    that only show jobs: one damaged row must not hide the others), which marks it damaged."""
    damage: builtins.list[str] = []

    def column(index: int, name: str, empty: Any) -> Any:  # noqa: ANN401
        if r[index] is None and name == "result":
            return None
        try:
            return _json_column(r, index, name)
        except OperationalError as exc:
            if not lenient:
                raise
            damage.append(str(exc).removeprefix(f"jobs database: job {r[0]} has a "))
            return empty

    payload = column(2, "payload", {})
    result = column(15, "result", None)
    return Job(
        id=r[0],
        type=r[1],
        payload=payload,
        trace_id=r[3],
        state=_job_state(r),
        attempts=r[5],
        max_attempts=r[6],
        idempotency_key=r[7],
        created_at=r[8],
        updated_at=r[9],
        started_at=r[10],
        finished_at=r[11],
        available_at=r[12],
        lease_until=r[13],
        worker_id=r[14],
        result=result,
        error=r[16],
        cancel_requested=bool(r[17]),
        timeout_s=r[18],
        damaged="; ".join(damage) or None,
    )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise UsageError(f"{name} must be > 0, got {value!r}")


# Primary result codes (the low byte of an extended code) that mean the file's content is
# damaged: retrying cannot help, and a worker must give up instead of polling forever.
_CORRUPT_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
# Another connection holds the lock past the busy timeout: worth waiting for, not damage.
_BUSY_CODES: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
# A read-only open of a WAL database whose -shm is missing and cannot be created.
_NO_SHM_CODES: Final = frozenset({14, 8})  # SQLITE_CANTOPEN, SQLITE_READONLY (_DIRECTORY etc.)


def _store_error(path: Path, exc: sqlite3.Error) -> OperationalError:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _BUSY_CODES:
        return StoreBusy(
            f"jobs database {path}: {exc} (another process holds its lock; it is retried "
            "for the busy timeout first)"
        )
    if isinstance(code, int) and code & 0xFF in _CORRUPT_CODES:
        return StoreCorrupt(
            f"jobs database {path}: {exc} (the file is damaged; `homeops jobs check` "
            "lists the problems)"
        )
    if str(exc).startswith(("no such table", "no such index")):
        return OperationalError(
            f"jobs database {path}: {exc} (`homeops jobs check` lists what is missing, "
            "`--repair` creates it again)"
        )
    return OperationalError(f"jobs database {path}: {exc}")


@dataclass(eq=False)
class _Connection:
    """One SQLite connection of this process to one database file, and who shares it."""

    conn: sqlite3.Connection
    key: tuple[int, int, bool]
    busy_ms: int
    # Schema version when opened: a read-only connection to a schema 1 store has no counters
    # and reads the old way, even if a writer elsewhere migrates the file meanwhile.
    version: int = SCHEMA_VERSION
    lock: threading.Lock = field(default_factory=threading.Lock)
    refs: int = 1


# (st_dev, st_ino, read-only) -> the connection every queue on that file shares. Keyed by
# inode, so two spellings of one path (symlink, relative) are one entry, and a file deleted
# and created again under the same name is another.
_OPEN: dict[tuple[int, int, bool], _Connection] = {}
_OPEN_LOCK = threading.Lock()


def _forget_inherited() -> None:
    # A forked child must neither use nor close its parent's connections (closing would drop
    # the child's own locks on the file): it starts with no entries and opens its own.
    global _OPEN_LOCK
    _OPEN.clear()
    _OPEN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited)


def _key(st: os.stat_result, readonly: bool) -> tuple[int, int, bool]:
    return (st.st_dev, st.st_ino, readonly)


def _refuse_dangling(path: Path) -> None:
    """A missing store is fine (created, or read as empty), a link to nothing is not.

    Otherwise `jobs list` said "no jobs", `jobs check` "not created yet" and `enqueue` a bare
    "No such file or directory" for the same misconfiguration.
    """
    if path.is_symlink():
        raise OperationalError(
            f"jobs database {path}: is a symlink to {os.readlink(path)!r}, which does not exist"
        )


def _create_if_absent(path: Path) -> os.stat_result:
    """Stat the database file, creating it 0600 first if it does not exist.

    The descriptor opened here is safe to close: the file did not exist a moment ago, so no
    connection of this process can hold a lock on it (opens are serialised by _OPEN_LOCK). An
    existing file is never opened outside SQLite.
    """
    try:
        return path.stat()
    except FileNotFoundError:
        _refuse_dangling(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # another process created it just now
        return path.stat()
    try:
        # Exactly 0600 whatever the umask; SQLite gives -wal and -shm the same mode.
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path.stat()


class SqliteJobQueue:
    """:class:`~homeops.core.jobs.queue.JobQueue` on one SQLite file (created 0600, dir 0700).

    With ``readonly`` only the reading calls work (get, list, counts, integrity_check), and
    a missing store reads as empty.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        metrics: MetricsSink | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        busy_timeout_s: float = 10.0,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._metrics = metrics
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self.busy_timeout_s = busy_timeout_s
        self.readonly = readonly
        self._busy_ms = int(busy_timeout_s * 1000)
        self._closed = False
        # None with ``readonly`` and no store yet: every read answers "nothing there".
        self._shared: _Connection | None = None
        with _OPEN_LOCK:
            self._shared = self._open_readonly() if readonly else self._open_writable()

    # -- plumbing -------------------------------------------------------------------------

    def _os_error(self, exc: OSError) -> OperationalError:
        where = f" ({exc.filename})" if exc.filename and exc.filename != str(self.path) else ""
        return OperationalError(f"jobs database {self.path}: {exc.strerror or exc}{where}")

    def _require_regular(self, st: os.stat_result) -> None:
        # SQLite's own error for a directory or device is a bare "disk I/O error".
        if not stat.S_ISREG(st.st_mode):
            raise OperationalError(f"jobs database {self.path}: not a regular file")

    def _share(self, key: tuple[int, int, bool]) -> _Connection | None:
        shared = _OPEN.get(key)
        if shared is not None:
            shared.refs += 1
        return shared

    def _open_writable(self) -> _Connection:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = _create_if_absent(self.path)
            self._require_regular(st)
            shared = self._share(_key(st, False))
            if shared is not None:
                return shared
            # Only ever tighten: drop group and other bits, never add one. Making a store the
            # owner made read-only (0400) writable again, before knowing whether the write
            # could even succeed, turned a refused prune into a loosened file.
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                os.chmod(self.path, mode & ~0o077)
        except OSError as exc:
            raise self._os_error(exc) from exc
        conn = self._connect(str(self.path), uri=False)
        shared = _Connection(conn, _key(st, False), self._busy_ms)
        try:
            self._setup(shared)
        except BaseException:
            conn.close()
            raise
        _OPEN[shared.key] = shared
        return shared

    def _open_readonly(self) -> _Connection | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            _refuse_dangling(self.path)
            return None
        except OSError as exc:
            raise self._os_error(exc) from exc
        self._require_regular(st)
        # A writer of this process already has the file open: read through its connection.
        shared = self._share(_key(st, False)) or self._share(_key(st, True))
        if shared is not None:
            return shared
        uri = self.path.absolute().as_uri() + "?mode=ro"
        conn = self._connect(uri, uri=True)
        shared = _Connection(conn, _key(st, True), self._busy_ms)
        try:
            version = self._read_version(shared)
        except OperationalError as exc:
            conn.close()
            cause = exc.__cause__
            code = getattr(cause, "sqlite_errorcode", None)
            shm = self.path.with_name(self.path.name + "-shm")
            wal = self.path.with_name(self.path.name + "-wal")
            no_shm = isinstance(code, int) and code & 0xFF in _NO_SHM_CODES
            if not no_shm or shm.exists():
                raise
            # A WAL database read by someone who may not create its -shm file (another
            # user's store, a read-only directory): readable only while its owner has it
            # open (then the -shm exists), or when nothing is left in a WAL to recover.
            if wal.exists():
                raise OperationalError(
                    f"jobs database {self.path}: cannot read it read-only: its -shm file is "
                    f"missing and cannot be created here ({cause}); run this as the store's "
                    "owner, or while a worker has the store open"
                ) from cause
            # No -wal and no -shm: no process has the store open and every commit is in the
            # main file, so reading that alone (immutable: no locks, no -shm) sees what a
            # normal reader would. A writer starting meanwhile could make this one read stale
            # or torn; that is the price of reading a store one cannot lock.
            conn = self._connect(uri + "&immutable=1", uri=True)
            shared = _Connection(conn, _key(st, True), self._busy_ms)
            try:
                version = self._read_version(shared)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        if version == 0:  # created, never set up: no jobs in it
            conn.close()
            return None
        shared.version = version
        _OPEN[shared.key] = shared
        return shared

    def _connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                target,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc

    def _read_version(self, shared: _Connection) -> int:
        try:
            version = int(shared.conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc
        if version > SCHEMA_VERSION:
            raise OperationalError(
                f"jobs database {self.path} has schema version {version}; this homeops "
                f"understands up to {SCHEMA_VERSION} (upgrade homeops)"
            )
        return version

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """Hold the connection; SQLite errors become OperationalError naming the file."""
        shared = self._shared
        if shared is None or self._closed:
            raise OperationalError(f"jobs database {self.path}: queue is closed")
        with shared.lock:
            try:
                if shared.busy_ms != self._busy_ms:  # shared with a queue that waits longer
                    shared.conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                    shared.busy_ms = self._busy_ms
                yield shared.conn
            except sqlite3.Error as exc:
                readonly = None if self.readonly else self._readonly_error(exc)
                raise readonly or _store_error(self.path, exc) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent claimers queue, not deadlock."""
        with self._writing() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection for a statement that writes; refused on a read-only queue."""
        if self.readonly:
            raise OperationalError(f"jobs database {self.path}: opened read-only")
        with self._guard() as conn:
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """The connection for a read; None for a read-only queue on a store not created yet."""
        if self._shared is None and self.readonly and not self._closed:
            yield None
            return
        with self._guard() as conn:
            yield conn

    def _setup(self, shared: _Connection) -> None:
        conn = shared.conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {shared.busy_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = NORMAL")
            if str(mode).lower() != "wal":
                raise OperationalError(f"jobs database {self.path}: cannot enable WAL ({mode})")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._readonly_error(exc) or _store_error(self.path, exc) from exc

    def _readonly_error(self, exc: sqlite3.Error) -> OperationalError | None:
        """A clear one line when a writable open fails because file or directory is read-only.

        SQLite's own words ("attempt to write a readonly database", "unable to open database
        file" for a -wal it may not create) do not say which.
        """
        code = getattr(exc, "sqlite_errorcode", None)
        if not (isinstance(code, int) and code & 0xFF in _NO_SHM_CODES):
            return None
        directory = self.path.parent
        effective = os.access in os.supports_effective_ids
        # SQLite creates -wal and -shm with the database's mode at the time: a -wal made
        # while the file was 0400 stays read-only after the file is made writable again.
        sidecars = [self.path.with_name(self.path.name + end) for end in ("-wal", "-shm")]
        unwritable = [
            p
            for p in (self.path, *sidecars)
            if os.path.lexists(p) and not os.access(p, os.W_OK, effective_ids=effective)
        ]
        if unwritable:
            what = "not writable: " + ", ".join(p.name for p in unwritable)
        elif not os.access(directory, os.W_OK | os.X_OK, effective_ids=effective):
            what = f"its directory {directory} is not writable"
        else:
            return None
        return OperationalError(
            f"job store {self.path} is read-only: {what}; `homeops jobs list` and "
            "`jobs status` can still read it"
        )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OperationalError(
                f"jobs database {self.path} has schema version {version}; this homeops "
                f"understands up to {SCHEMA_VERSION} (upgrade homeops)"
            )
        if version < SCHEMA_VERSION:
            # Inside the caller's BEGIN IMMEDIATE: another process sees schema 1 or schema 2,
            # never counters without their triggers. One pass over the rows (seconds at 1M
            # jobs), once per store.
            started = time.monotonic()
            for stmt in (_SCHEMA if version == 0 else ()) + _SCHEMA_2:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if version:
                _log.info(
                    "migrate",
                    f"job store migrated from schema {version} to {SCHEMA_VERSION}",
                    path=str(self.path),
                    duration_ms=round((time.monotonic() - started) * 1000, 1),
                )
        # Earlier versions could hand a job back as queued with its cancel request still set;
        # claims skip such rows, so finish them here, where every writer passes once. (A
        # store that lost a table is left for `jobs check --repair` to restore: the triggers
        # make every UPDATE of jobs need job_counts.)
        if {"jobs", "job_counts"} & _missing_objects(conn, SCHEMA_VERSION).keys():
            return
        now = self._clock()
        conn.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?, updated_at = ?, "
            "error = COALESCE(error, 'cancelled') WHERE state = 'queued' AND cancel_requested",
            (now, now),
        )

    def close(self) -> None:
        """Let go of the connection (closed with the last queue sharing it); idempotent."""
        if self._closed:
            return
        self._closed = True
        shared, self._shared = self._shared, None
        if shared is None:
            return
        with _OPEN_LOCK:
            shared.refs -= 1
            if shared.refs > 0:
                return
            if _OPEN.get(shared.key) is shared:
                del _OPEN[shared.key]
        with shared.lock:
            shared.conn.close()

    @property
    def exists(self) -> bool:
        """False only for a read-only queue on a store that has not been created yet."""
        return not (self.readonly and self._shared is None and not self._closed)

    def __enter__(self) -> SqliteJobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self, *, quick: bool = False, max_errors: int = 100) -> builtins.list[str]:
        """Problems ``PRAGMA integrity_check`` (or the faster ``quick_check``) finds; [] if none.

        ``quick_check`` skips the comparison of indexes with their tables, so only the full
        check finds rows missing from an index. A check that cannot even read the file
        reports that as its one problem.
        """
        pragma = "quick_check" if quick else "integrity_check"
        limit = int(max_errors)
        with self._reading() as conn:
            if conn is None:
                return []
            try:
                rows = conn.execute(f"PRAGMA {pragma}({limit})").fetchall()
            except sqlite3.DatabaseError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                if isinstance(code, int) and code & 0xFF in _CORRUPT_CODES:
                    return [str(exc)]
                raise
            problems = [str(r[0]) for r in rows]
            if problems != ["ok"]:
                return problems
            # Pages are good: now what SQLite cannot know. A missing table or index (a few
            # rows of sqlite_master, so the quick check looks too); then, in the full check
            # only, the counters (one more pass over the jobs_type index; doctor's quick check
            # is meant to stay the cheaper one) and states this version does not know.
            problems = _schema_problems(conn, self._version())
            if quick:
                return problems
            problems += self._counter_problems(conn)
            missing = _missing_objects(conn, self._version())
            problems += _state_problems(conn, limit, jobs="jobs" not in missing)
        return problems[:limit]

    def _counter_problems(self, conn: sqlite3.Connection) -> builtins.list[str]:
        if self._version() < 2:
            return []
        missing = _missing_objects(conn, 2)
        if "job_counts" in missing or "jobs" in missing:
            # Reported as a schema problem already; the repair creates it and counts.
            return [f"{COUNTER_PROBLEM} trigger {n} is missing" for n in _TRIGGERS if n in missing]
        return _counter_problems(conn)

    def counter_problems(self) -> builtins.list[str]:
        """Where ``job_counts`` disagrees with the rows (or lost a trigger); [] if exact."""
        with self._reading() as conn:
            if conn is None:
                return []
            return self._counter_problems(conn)

    def repair_counters(self) -> builtins.list[str]:
        """Restore lost tables, indexes and triggers and recount ``job_counts``; returns what
        was wrong ([] if nothing).

        One write transaction: no reader sees the counters half rebuilt, and no change to a
        job slips between the recount and the triggers. A restored ``jobs`` table is empty:
        the rows it held are gone, and only a backup brings them back.
        """
        with self._write() as conn:
            problems = _schema_problems(conn, SCHEMA_VERSION) + self._counter_problems(conn)
            missing = _missing_objects(conn, SCHEMA_VERSION)
            # Tables before the indexes and triggers on them (the DDL is in that order).
            for name in _schema_objects(SCHEMA_VERSION):
                if name in missing and missing[name] != "trigger":
                    conn.execute(_ddl(name))
            if problems:
                conn.execute("DELETE FROM job_counts")
                conn.execute(_REFILL_COUNTS)
                for name, ddl in _TRIGGERS.items():
                    conn.execute(f"DROP TRIGGER IF EXISTS {name}")
                    conn.execute(ddl)
        if problems:
            _log.warn(
                "repair",
                "job store schema restored and counters recounted",
                path=str(self.path),
                problems=len(problems),
            )
        return problems

    def _version(self) -> int:
        shared = self._shared
        return SCHEMA_VERSION if shared is None else shared.version

    # -- the JobQueue contract -----------------------------------------------------------

    def enqueue(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trace_id: str | None = None,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        delay_s: float = 0.0,
    ) -> Job:
        """Store a new queued job; an ``idempotency_key`` seen before returns the existing job.

        Only if that job has the same type and payload (as canonical JSON): the same key for
        different work is a UsageError, never silently the first job.
        """
        validate_job_type(type)
        payload_json = encode_payload(payload)
        if idempotency_key is not None:
            validate_idempotency_key(idempotency_key)
        trace = validate_trace_id(trace_id) if trace_id is not None else new_trace_id()
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise UsageError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if timeout_s is not None:
            _positive("timeout_s", timeout_s)
        if delay_s < 0:
            raise UsageError(f"delay_s must be >= 0, got {delay_s!r}")
        now = self._clock()
        job = Job(
            id=new_job_id(now),
            type=type,
            payload=json.loads(payload_json),
            trace_id=trace,
            state=JobState.QUEUED,
            attempts=0,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            available_at=now + delay_s,
            lease_until=None,
            worker_id=None,
            result=None,
            error=None,
            cancel_requested=False,
            timeout_s=timeout_s,
        )
        row = (
            job.id,
            job.type,
            payload_json,
            job.trace_id,
            str(job.state),
            0,
            max_attempts,
            idempotency_key,
            now,
            now,
            job.available_at,
            timeout_s,
        )
        insert = (
            "INSERT INTO jobs (id, type, payload, trace_id, state, attempts, max_attempts, "
            "idempotency_key, created_at, updated_at, available_at, timeout_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        if idempotency_key is None:
            with self._writing() as conn:
                conn.execute(insert, row)
        else:
            # Look-up and insert in one write transaction: two processes enqueueing the same key
            # at once get one job between them.
            with self._write() as conn:
                found = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if found is None:
                    conn.execute(insert, row)
            if found is not None:
                existing = _row_to_job(found)
                if existing.type != type:
                    raise UsageError(
                        f"idempotency key {idempotency_key!r} already belongs to job "
                        f"{existing.id} of type {existing.type!r}, not {type!r}"
                    )
                if canonical_payload(existing.payload) != canonical_payload(job.payload):
                    raise UsageError(
                        f"idempotency key {idempotency_key!r} already used by job "
                        f"{existing.id} with a different payload"
                    )
                _log.debug(
                    "enqueue",
                    "duplicate idempotency key; returning existing job",
                    job_id=existing.id,
                    idempotency_key=idempotency_key,
                )
                return existing
        if self._metrics is not None:
            self._metrics.inc("jobs_enqueued_total")
        _log.debug("enqueue", "job queued", job_id=job.id, trace_id=trace, job_type=type)
        return job

    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        *,
        types: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
    ) -> builtins.list[Job]:
        """Atomically take up to ``limit`` runnable jobs (queued and due, or lease expired).

        ``types`` restricts the claim to the job types this worker can run, so workers of
        different domains can share one store without taking each other's jobs. ``ids``
        restricts it to those jobs (a command running its own jobs here and now).
        """
        validate_job_id(worker_id)
        _positive("lease_s", lease_s)
        if limit < 1:
            return []
        now = self._clock()
        until = now + lease_s
        wanted = None if types is None else frozenset(types)
        types_json = None if wanted is None else json.dumps(sorted(wanted))
        only = None if ids is None else frozenset(ids)
        ids_json = None if only is None else json.dumps(sorted(only))
        rows: builtins.list[Any] = []
        # An idle worker polls often; a plain read (no write lock in WAL mode) keeps idle
        # workers from queueing behind each other and behind enqueuers for nothing.
        with self._writing() as conn:
            found = conn.execute(_ANY_RUNNABLE, {"now": now, "types": types_json, "ids": ids_json})
            if not found.fetchone()[0]:
                return []
        with self._write() as conn:
            expired = conn.execute(
                "SELECT id, type, attempts, max_attempts, cancel_requested, worker_id FROM jobs "
                "WHERE state = 'running' AND lease_until < ? ORDER BY lease_until",
                (now,),
            ).fetchall()
            reclaim: builtins.list[str] = []
            for job_id, job_type, attempts, max_attempts, cancel, old_worker in expired:
                if cancel or attempts >= max_attempts:
                    state = JobState.CANCELLED if cancel else JobState.FAILED
                    conn.execute(
                        "UPDATE jobs SET state = ?, error = 'lease expired', finished_at = ?, "
                        "updated_at = ?, lease_until = NULL WHERE id = ?",
                        (str(state), now, now, job_id),
                    )
                    _log.warn(
                        "claim",
                        f"lease expired; job {state}",
                        job_id=job_id,
                        attempt=attempts,
                        lost_worker=old_worker,
                    )
                elif (
                    len(reclaim) < limit
                    and (wanted is None or job_type in wanted)
                    and (only is None or job_id in only)
                ):
                    reclaim.append(job_id)
                    _log.warn(
                        "claim",
                        "lease expired; running job again",
                        job_id=job_id,
                        attempt=attempts + 1,
                        lost_worker=old_worker,
                    )
            if reclaim:
                rows += conn.execute(
                    _RECLAIM, (worker_id, until, now, now, json.dumps(reclaim))
                ).fetchall()
            if len(rows) < limit:
                params = {
                    "worker": worker_id,
                    "until": until,
                    "now": now,
                    "types": types_json,
                    "ids": ids_json,
                    "limit": limit - len(rows),
                }
                rows += conn.execute(_CLAIM_DUE, params).fetchall()
            jobs = self._decode_claimed(conn, rows, now)
        # RETURNING gives no order; hand jobs out oldest-due first.
        jobs.sort(key=lambda j: (j.available_at, j.id))
        return jobs

    def _decode_claimed(
        self, conn: sqlite3.Connection, rows: builtins.list[Any], now: float
    ) -> builtins.list[Job]:
        """Jobs from claimed rows; a row that cannot be decoded fails (final) right here.

        Handing it out is impossible and leaving it ``running`` would only re-claim it after
        every lease until its attempts ran out, so the claim records why and moves on.
        """
        jobs: builtins.list[Job] = []
        for r in rows:
            try:
                jobs.append(_row_to_job(r))
            except OperationalError as exc:
                conn.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, updated_at = ?, "
                    "lease_until = NULL WHERE id = ?",
                    (str(exc), now, now, r[0]),
                )
                _log.error("claim", "corrupt job row; job failed", job_id=r[0], err=exc)
        return jobs

    def heartbeat(self, worker_id: str, job_ids: Sequence[str], lease_s: float) -> HeartbeatResult:
        """Extend the leases this worker still holds; say which it holds and which to cancel.

        An id missing from ``held`` is no longer this worker's (its lease ran out and another
        claim took it, or it is no longer running): the worker must stop running it.
        """
        if not job_ids:
            return HeartbeatResult()
        now = self._clock()
        with self._writing() as conn:
            rows = conn.execute(
                "UPDATE jobs SET lease_until = ?, updated_at = ? "
                "WHERE id IN (SELECT value FROM json_each(?)) "
                "AND worker_id = ? AND state = 'running' RETURNING id, cancel_requested",
                (now + lease_s, now, json.dumps(list(job_ids)), worker_id),
            ).fetchall()
        return HeartbeatResult(
            held=frozenset(job_id for job_id, _cancel in rows),
            cancel_requested=frozenset(job_id for job_id, cancel in rows if cancel),
        )

    def complete(self, job_id: str, worker_id: str, result: Any) -> bool:  # noqa: ANN401
        """Mark succeeded with ``result``; False if ``worker_id`` no longer holds the job."""
        try:
            result_json = json.dumps(result, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"job {job_id} result is not JSON-serialisable: {exc}") from exc
        now = self._clock()
        with self._writing() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'succeeded', result = ?, error = NULL, finished_at = ?, "
                "updated_at = ?, lease_until = NULL "
                "WHERE id = ? AND worker_id = ? AND state = 'running'",
                (result_json, now, now, job_id, worker_id),
            )
            return cur.rowcount == 1

    def fail(self, job_id: str, worker_id: str, error: str, *, retryable: bool = True) -> bool:
        """Retry later (backoff) while attempts remain and ``retryable``, else mark failed.

        A job whose cancel was requested is not retried: it ends ``cancelled``.
        """
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                "SELECT attempts, max_attempts, cancel_requested FROM jobs "
                "WHERE id = ? AND worker_id = ? AND state = 'running'",
                (job_id, worker_id),
            ).fetchone()
            if row is None:
                return False
            attempts, max_attempts, cancel_requested = row
            if not cancel_requested and retryable and attempts < max_attempts:
                delay = backoff_delay(
                    attempts, base_s=self._backoff_base_s, max_s=self._backoff_max_s
                )
                conn.execute(
                    "UPDATE jobs SET state = 'queued', error = ?, available_at = ?, "
                    "updated_at = ?, lease_until = NULL, worker_id = NULL WHERE id = ?",
                    (error, now + delay, now, job_id),
                )
            else:
                state = JobState.CANCELLED if cancel_requested else JobState.FAILED
                conn.execute(
                    "UPDATE jobs SET state = ?, error = ?, finished_at = ?, updated_at = ?, "
                    "lease_until = NULL WHERE id = ?",
                    (str(state), error, now, now, job_id),
                )
        return True

    def requeue(self, job_id: str, worker_id: str) -> bool:
        """Give a running job back without using up its attempt (worker shutdown).

        The job goes behind the jobs already due (``available_at`` = now), so a job handed
        back again and again cannot starve the rest. A job whose cancel was requested is not
        handed back but ends ``cancelled``: a cancel request wins over every hand-back.
        """
        now = self._clock()
        with self._writing() as conn:
            row = conn.execute(
                "UPDATE jobs SET "
                "state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
                "attempts = CASE WHEN cancel_requested THEN attempts "
                "ELSE MAX(attempts - 1, 0) END, "
                "available_at = CASE WHEN cancel_requested THEN available_at ELSE ? END, "
                "started_at = CASE WHEN cancel_requested THEN started_at END, "
                "finished_at = CASE WHEN cancel_requested THEN ? END, "
                "error = CASE WHEN cancel_requested THEN COALESCE(error, 'cancelled') "
                "ELSE error END, "
                "updated_at = ?, lease_until = NULL, "
                "worker_id = CASE WHEN cancel_requested THEN worker_id END "
                "WHERE id = ? AND worker_id = ? AND state = 'running' "
                "RETURNING state, trace_id",
                (now, now, now, job_id, worker_id),
            ).fetchone()
        if row is None:
            return False
        if row[0] == JobState.CANCELLED:
            _log.info(
                "requeue",
                "cancel was requested; job cancelled instead of handed back",
                job_id=job_id,
                trace_id=row[1],
            )
        return True

    def cancel(self, job_id: str) -> Job:
        """Cancel: queued at once, running by request to its worker, terminal left unchanged.

        The returned job shows what happened: ``cancelled``, ``running`` with
        ``cancel_requested``, or its unchanged terminal state.
        """
        validate_job_id(job_id)
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UsageError(f"no such job: {job_id}")
            job = _row_to_job(row)
            if job.state is JobState.QUEUED:
                row = conn.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, "
                    f"updated_at = ? WHERE id = ? RETURNING {_COLUMNS}",
                    (now, now, job_id),
                ).fetchone()
            elif job.state is JobState.RUNNING:
                row = conn.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? "
                    f"WHERE id = ? RETURNING {_COLUMNS}",
                    (now, job_id),
                ).fetchone()
        new = _row_to_job(row)
        if job.state.terminal:
            _log.info(
                "cancel",
                f"job already {job.state}; nothing to cancel",
                job_id=job_id,
                trace_id=job.trace_id,
            )
        elif new.state is JobState.CANCELLED:
            _log.info("cancel", "queued job cancelled", job_id=job_id, trace_id=job.trace_id)
        else:
            _log.info(
                "cancel",
                "cancel requested; the worker will stop the job",
                job_id=job_id,
                trace_id=job.trace_id,
                worker_id=job.worker_id,
            )
        return new

    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        """Record that the worker stopped a running job because its cancel was requested."""
        now = self._clock()
        with self._writing() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, "
                "updated_at = ?, lease_until = NULL, error = COALESCE(error, 'cancelled') "
                "WHERE id = ? AND worker_id = ? AND state = 'running'",
                (now, now, job_id, worker_id),
            )
            return cur.rowcount == 1

    def get(self, job_id: str) -> Job:
        """The job with ``job_id``; an unknown id is a UsageError (exit 2)."""
        validate_job_id(job_id)
        with self._reading() as conn:
            row = None
            if conn is not None:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
        if row is None:
            raise UsageError(f"no such job: {job_id}")
        return _row_to_job(row, lenient=True)

    def list(
        self,
        state: JobState | None = None,
        type: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by state and type."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise UsageError(f"limit must be between 1 and {LIST_LIMIT_MAX}, got {limit!r}")
        where: builtins.list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            where.append("state = :state")
            params["state"] = str(JobState(state))
        if type is not None:
            where.append("type = :type")
            params["type"] = validate_job_type(type)
        with self._reading() as conn:
            if conn is None:
                return []
            if type is not None and state is not None and self._version() >= 2:
                where = _pick_index(conn, params)
            sql = f"SELECT {_COLUMNS} FROM jobs"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at DESC, id DESC LIMIT :limit"
            rows = conn.execute(sql, params).fetchall()
        return [_row_to_job(r, lenient=True) for r in rows]

    def created_since(
        self, since: float, *, types: Sequence[str] | None = None, queued_before: bool = False
    ) -> int:
        """How many jobs (of ``types``, if given) were enqueued at or after ``since``, by any
        process (one range of jobs_created); with ``queued_before``, how many enqueued before
        ``since`` are still queued instead. A worker's ``jobs_enqueued_total`` is the two."""
        types_json = None if types is None else json.dumps(sorted(set(types)))
        when = (
            "created_at < :since AND state = 'queued'"
            if queued_before
            else ("created_at >= :since")
        )
        with self._reading() as conn:
            if conn is None:
                return 0
            row = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE {when} AND "
                "(:types IS NULL OR type IN (SELECT value FROM json_each(:types)))",
                {"since": since, "types": types_json},
            ).fetchone()
        return int(row[0])

    def counts(self, *, types: Sequence[str] | None = None) -> dict[JobState, int]:
        """How many jobs (of ``types``, if given) are in each state; every state present."""
        types_json = None if types is None else json.dumps(sorted(set(types)))
        # Schema 1 (read-only, not migrated yet) has no counters: group the rows themselves.
        source = "jobs" if self._version() < 2 else "job_counts"
        total = "COUNT(*)" if source == "jobs" else "SUM(n)"
        out = dict.fromkeys(JobState, 0)
        with self._reading() as conn:
            if conn is None:
                return out
            rows = conn.execute(
                f"SELECT state, {total} FROM {source} WHERE "
                "(:types IS NULL OR type IN (SELECT value FROM json_each(:types))) "
                "GROUP BY state",
                {"types": types_json},
            ).fetchall()
            for state, n in rows:
                if state in _KNOWN_STATES:
                    out[JobState(state)] = n
                elif n:  # a counter left at 0 (its jobs pruned) is nothing to count
                    raise self._unknown_counted(conn, state, n)
        return out

    def _unknown_counted(self, conn: sqlite3.Connection, state: object, n: int) -> StoreCorrupt:
        """StoreCorrupt for ``n`` jobs counted in an unknown ``state``, naming one of them."""
        row = conn.execute("SELECT id FROM jobs WHERE state = ? LIMIT 1", (state,)).fetchone()
        if row is not None:
            return _unknown_state(row[0], state)
        return StoreCorrupt(
            f"jobs database {self.path}: job_counts counts {n} job(s) in state {state!r}, "
            "which this homeops does not know, and no job has it (`homeops jobs check "
            "--repair` recounts them)"
        )

    def prune(
        self, *, older_than_s: float, dry_run: bool = False, batch_size: int = PRUNE_BATCH
    ) -> int:
        """Delete finished jobs whose ``finished_at`` is more than ``older_than_s`` ago.

        Only succeeded, failed and cancelled jobs; queued, running and waiting-to-retry jobs
        are never touched. Deletes ``batch_size`` rows per transaction and pauses between
        batches, so a worker sharing the store waits for one batch at most. ``dry_run``
        counts instead (it also works read-only). Returns how many were (or would be) removed.
        """
        if not (isinstance(older_than_s, int | float) and math.isfinite(older_than_s)):
            raise UsageError(f"older_than_s must be a finite number, got {older_than_s!r}")
        _positive("older_than_s", older_than_s)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        # Fixed once: jobs that finish while the prune runs are recent, never its business.
        cutoff = self._clock() - older_than_s
        if dry_run:
            with self._reading() as conn:
                if conn is None:
                    return 0
                row = conn.execute(f"SELECT COUNT(*) {_PRUNABLE}", {"cutoff": cutoff}).fetchone()
                return int(row[0])
        removed = 0
        started = time.monotonic()
        while True:
            batch_started = time.monotonic()
            with self._write() as conn:
                n = conn.execute(_PRUNE, {"cutoff": cutoff, "batch": batch_size}).rowcount
                if n < batch_size:
                    conn.execute("DELETE FROM job_counts WHERE n = 0")
            removed += n
            if n < batch_size:
                break
            # As long again outside the lock as the batch held it (1-50 ms): another process
            # waiting in SQLite's busy handler retries at its own moments and must find the
            # lock free about half of the time, not for the odd microsecond between batches.
            time.sleep(min(max(time.monotonic() - batch_started, 0.001), 0.05))
        if removed:
            _log.info(
                "prune",
                "finished jobs deleted",
                removed=removed,
                older_than_s=older_than_s,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
        return removed


@dataclass(frozen=True)
class StoreCheck:
    """What :func:`check_store` found: whether the store exists, and its problems (if any)."""

    path: Path
    exists: bool
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when the check found nothing wrong (a store not created yet is fine)."""
        return not self.problems

    @property
    def repairable(self) -> bool:
        """True when :func:`repair_store` can fix every problem: job counters to recount, and
        tables, indexes or triggers to create again."""
        return bool(self.problems) and all(
            p.startswith((COUNTER_PROBLEM, SCHEMA_PROBLEM)) for p in self.problems
        )


def check_store(path: Path, *, quick: bool = False, max_errors: int = 100) -> StoreCheck:
    """Open the store read-only and run ``integrity_check`` (``quick_check`` with ``quick``).

    A file SQLite cannot read as a database at all is reported as the one problem, not
    raised; other failures to open (permissions, a lock) raise OperationalError.
    """
    try:
        queue = SqliteJobQueue(path, readonly=True)
    except StoreCorrupt as exc:
        return StoreCheck(Path(path), True, (str(exc.__cause__ or exc),))
    with queue:
        return StoreCheck(
            Path(path),
            queue.exists,
            tuple(queue.integrity_check(quick=quick, max_errors=max_errors)),
        )


def repair_store(path: Path) -> builtins.list[str]:
    """Restore missing tables, indexes and triggers of the store at ``path`` and recount its
    job counters; returns what was wrong ([] if none).

    Opened for writing, so a schema 1 store is migrated (and counted) on the way.
    """
    with SqliteJobQueue(path) as queue:
        return queue.repair_counters()
