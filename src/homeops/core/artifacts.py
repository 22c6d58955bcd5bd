"""Per-job artifact store: files under ``<root>/<job_id>/`` plus a ``manifest.json``.

Seed 001: every job keeps its artifacts (``ssh``: stdout.txt, stderr.txt, exit_code.txt;
``aloha``: response.json; ``playwright``: screenshot.png, trace.zip) in its own directory
with a manifest of ``job_id``, ``trace_id``, ``created_at`` and ``artifacts[]`` (type, path,
size_bytes, sha256). Retention defaults to 7 days.

Every file lands by write-to-temp, flush to disk, ``os.replace`` so a reader never sees half a
file or half a manifest; files are durable before the manifest that lists them is. The flushes
are the store's :class:`~homeops.core.durable.Flusher`: concurrent jobs share one ``syncfs``
instead of paying an fsync per file and directory. A job's files of one moment go in together
(:meth:`ArtifactStore.add_many`): one manifest update for all of them. Manifest updates are
read-modify-write under a per-job thread lock and an ``flock`` on ``.manifest.lock`` so
concurrent writers (tasks, threads, processes) never lose an entry. Job ids and artifact paths
come from users and remote hosts, so both are validated before they touch the filesystem and
symlinks are never followed out of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Final

from homeops.core.durable import Flusher
from homeops.core.errors import OperationalError, UsageError
from homeops.core.jobs.model import validate_job_id  # one id rule: an id is also a dir name
from homeops.core.logging import format_ts, get_logger

_log = get_logger("core.artifacts")

_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_-]*")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
MANIFEST: Final = "manifest.json"
# A swept job dir is renamed to this prefix + its id before it is deleted; not a job id, so
# never listed as a job.
SWEEP_TRASH_PREFIX: Final = ".sweep-"
LOCK_FILE: Final = ".manifest.lock"
# Names the store itself uses inside a job dir; an artifact must never overwrite them.
_RESERVED: Final = frozenset({MANIFEST, LOCK_FILE})
_TMP_PREFIX: Final = ".tmp-"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
_CHUNK: Final = 1024 * 1024
DAY_S: Final = 86400.0
# A manifest lists file names and digests; far past any real one, and a bound on memory.
MAX_MANIFEST_BYTES: Final = 64 * 1024 * 1024


def _is_job_id(name: str) -> bool:
    try:
        validate_job_id(name)
    except UsageError:
        return False
    return True


def validate_artifact_type(kind: str) -> str:
    """Return ``kind`` if it matches ``[a-z][a-z0-9_-]*``, else :class:`UsageError`."""
    if not isinstance(kind, str) or _TYPE_RE.fullmatch(kind) is None:
        raise UsageError(f"invalid artifact type {kind!r}: must match [a-z][a-z0-9_-]*")
    return kind


def validate_artifact_path(rel_path: str) -> str:
    """Return ``rel_path`` if it is a safe relative posix path inside a job dir."""

    def bad(reason: str) -> UsageError:
        return UsageError(f"invalid artifact path {rel_path!r}: {reason}")

    if not isinstance(rel_path, str) or not rel_path:
        raise bad("empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel_path):
        raise bad("control character")
    if "\\" in rel_path:
        raise bad("backslash")
    if rel_path.startswith("/"):
        raise bad("absolute")
    parts = rel_path.split("/")
    if any(p == "" for p in parts):
        raise bad("empty segment")
    if any(p in (".", "..") for p in parts):
        raise bad("'.' or '..' segment")
    if parts[0] in _RESERVED or any(p.startswith(_TMP_PREFIX) for p in parts):
        raise bad("reserved name")
    return rel_path


@dataclass(frozen=True)
class Artifact:
    """One stored file: its type, posix path relative to the job dir, size and sha256."""

    type: str
    path: str
    size_bytes: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        """The manifest entry, keys in the seed's order."""
        return {
            "type": self.type,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Manifest:
    """A job's ``manifest.json``."""

    job_id: str
    trace_id: str
    created_at: str
    artifacts: tuple[Artifact, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The manifest as written to disk."""
        return {
            "job_id": self.job_id,
            "trace_id": self.trace_id,
            "created_at": self.created_at,
            "artifacts": [a.to_json() for a in self.artifacts],
        }

    def created_epoch(self) -> float:
        """``created_at`` as seconds since the epoch."""
        return parse_rfc3339(self.created_at)


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of an RFC3339 timestamp carrying a zone; ValueError otherwise."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return dt.timestamp()


def parse_manifest(raw: bytes, *, source: str) -> Manifest:
    """Parse and validate manifest bytes; :class:`OperationalError` naming ``source``."""

    def corrupt(reason: str) -> OperationalError:
        return OperationalError(f"{source}: corrupt manifest: {reason}")

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise corrupt("top level is not an object")
    for key in ("job_id", "trace_id", "created_at"):
        if not isinstance(doc.get(key), str):
            raise corrupt(f"{key!r} missing or not a string")
    entries = doc.get("artifacts")
    if not isinstance(entries, list):
        raise corrupt("'artifacts' missing or not a list")
    try:
        validate_job_id(doc["job_id"])
        parse_rfc3339(doc["created_at"])
        artifacts = tuple(_parse_entry(e) for e in entries)
    except (UsageError, ValueError, TypeError) as exc:
        raise corrupt(str(exc)) from None
    return Manifest(doc["job_id"], doc["trace_id"], doc["created_at"], artifacts)


def _parse_entry(entry: object) -> Artifact:
    if not isinstance(entry, dict):
        raise TypeError("artifact entry is not an object")
    size = entry.get("size_bytes")
    digest = entry.get("sha256")
    # bool is an int subclass; true as a size is corruption, not 1 byte.
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TypeError(f"bad size_bytes {size!r}")
    if not isinstance(digest, str) or _SHA256_RE.fullmatch(digest) is None:
        raise TypeError(f"bad sha256 {digest!r}")
    kind = entry.get("type")
    path = entry.get("path")
    if not isinstance(kind, str) or not isinstance(path, str):
        raise TypeError("artifact type or path is not a string")
    return Artifact(
        type=validate_artifact_type(kind),
        path=validate_artifact_path(path),
        size_bytes=size,
        sha256=digest,
    )


def _open_regular(path: Path) -> int:
    """A read descriptor of the regular file ``path``, never following a final symlink.

    O_NONBLOCK: opening a FIFO would otherwise wait for a writer (``artifacts list`` hung,
    and a worker sweeping in a thread could not exit on SIGTERM) before fstat can refuse
    it. On a regular file the flag changes nothing.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _read_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink; refusing to follow"
    return exc.strerror or str(exc)


def _fsync_dir(path: Path) -> None:
    # The rename itself is only durable once the directory entry is flushed.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(final: Path, data: bytes, mode: int = FILE_MODE) -> None:
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)


class _TempArtifact:
    """A temp file next to an artifact's final name that hashes what is written into it."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX)
        self.path = Path(name)
        self.fh: IO[bytes] = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.size = 0
        self.moved = False

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.fh.write(chunk)
        self.size += len(chunk)

    def finish(self, *, sync: bool = True) -> None:
        """Close the file; ``sync=False`` leaves making it durable to the caller."""
        self.fh.flush()
        if sync:
            os.fsync(self.fh.fileno())
        self.fh.close()

    def move_to(self, final: Path) -> None:
        os.chmod(self.path, FILE_MODE)
        os.replace(self.path, final)
        self.moved = True

    def discard(self) -> None:
        """Close and remove the temp file unless it already became the real one."""
        self.fh.close()
        if not self.moved:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@dataclass(frozen=True)
class _Staged:
    """A finished temp file waiting to become artifact ``rel_path``."""

    rel_path: str
    kind: str
    tmp: _TempArtifact


def _make_out_dir(path: Path) -> None:
    """Create a destination directory, or a one-line error naming why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{path}: exists and is not a directory") from None
    except OSError as exc:
        raise OperationalError(f"{path}: cannot create: {exc.strerror or exc}") from exc


def _make_out_subdirs(out_dir: Path, parts: list[str]) -> Path:
    """``out_dir/parts…``, created one level at a time without following symlinks.

    ``out_dir`` itself is the user's choice and may be a link; below it, an ``ssh`` that is a
    symlink to elsewhere would make a fetch write outside the directory it was given (the
    source side already refuses symlinks).
    """
    path = out_dir
    for part in parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            _make_out_dir(path)
            continue
        except OSError as exc:
            raise OperationalError(f"{path}: cannot create: {exc.strerror or exc}") from exc
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{path}: is a symlink; refusing to write through it")
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: exists and is not a directory")
    return path


class ArtifactStore:
    """Artifacts of many jobs under one root directory."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.flusher = Flusher(self.root)

    # -- paths -----------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        """The directory of ``job_id`` (validated; not created)."""
        return self.root / validate_job_id(job_id)

    def _existing_job_dir(self, job_id: str) -> Path:
        path = self.job_dir(job_id)
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise UsageError(f"no artifacts for job {job_id!r} under {self.root}") from None
        except NotADirectoryError:
            raise OperationalError(f"{self.root}: artifact root is not a directory") from None
        except OSError as exc:
            raise OperationalError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise OperationalError(f"{path}: not a directory (symlink or file); refusing to use")
        return path

    def _make_job_dir(self, job_id: str) -> Path:
        path = self.job_dir(job_id)
        self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=DIR_MODE)
        if not stat.S_ISDIR(path.lstat().st_mode):
            raise OperationalError(f"{path}: not a directory (symlink or file); refusing to use")
        return path

    def _parent_for(self, job_dir: Path, rel_path: str, *, create: bool) -> Path:
        """The real directory that will hold ``rel_path``; no segment may be a symlink."""
        current = job_dir
        for part in rel_path.split("/")[:-1]:
            current = current / part
            try:
                st = current.lstat()
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    current.mkdir(mode=DIR_MODE)
                st = current.lstat()
            if not stat.S_ISDIR(st.st_mode):
                raise OperationalError(
                    f"{current}: not a directory (symlink or file); refusing to follow"
                )
        return current

    # -- manifest --------------------------------------------------------------------

    def _thread_lock(self, job_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(job_id, threading.Lock())

    @contextlib.contextmanager
    def _locked(self, job_id: str, job_dir: Path) -> Iterator[None]:
        # The thread lock orders commits inside this process (asyncio tasks run them in
        # worker threads); flock covers other processes sharing the root.
        with self._thread_lock(job_id):
            fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _read_manifest(self, job_dir: Path) -> Manifest | None:
        path = job_dir / MANIFEST
        try:
            fd = _open_regular(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OperationalError(f"{path}: cannot read manifest: {_read_reason(exc)}") from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise OperationalError(f"{path}: cannot read manifest: {_read_reason(exc)}") from exc
        if len(raw) > MAX_MANIFEST_BYTES:
            raise OperationalError(
                f"{path}: corrupt manifest: larger than {MAX_MANIFEST_BYTES >> 20} MiB"
            )
        manifest = parse_manifest(raw, source=str(path))
        if manifest.job_id != job_dir.name:
            raise OperationalError(
                f"{path}: corrupt manifest: job_id {manifest.job_id!r} "
                f"does not match directory {job_dir.name!r}"
            )
        return manifest

    def _write_manifest(self, job_dir: Path, manifest: Manifest) -> None:
        data = json.dumps(manifest.to_json(), indent=2).encode("utf-8") + b"\n"
        _write_atomic(job_dir / MANIFEST, data)

    def _new_manifest(self, job_id: str, trace_id: str) -> Manifest:
        return Manifest(job_id, trace_id, format_ts(self._clock()), ())

    def _ensure_job_sync(self, job_id: str, trace_id: str) -> Manifest:
        try:
            job_dir = self._make_job_dir(job_id)
        except OSError as exc:
            where = self.job_dir(job_id)
            raise OperationalError(f"{where}: cannot create: {exc.strerror or exc}") from exc
        with self._locked(job_id, job_dir):
            manifest = self._read_manifest(job_dir)
            if manifest is None:
                manifest = self._new_manifest(job_id, trace_id)
                self._write_manifest(job_dir, manifest)
                _log.debug("ensure_job", "job artifact dir created", job_id=job_id)
            elif trace_id and manifest.trace_id != trace_id:
                # The first trace id wins: a retry of the job keeps the original trace.
                _log.debug(
                    "ensure_job",
                    "trace id already recorded",
                    job_id=job_id,
                    trace_id=manifest.trace_id,
                    ignored=trace_id,
                )
            return manifest

    def ensure_job(self, job_id: str, trace_id: str) -> Manifest:
        """Create the job dir and its manifest if absent; the first ``trace_id`` is kept."""
        return self._ensure_job_sync(job_id, trace_id)

    def manifest(self, job_id: str) -> Manifest:
        """The parsed manifest of ``job_id``; a corrupt one raises naming the file."""
        job_dir = self._existing_job_dir(job_id)
        manifest = self._read_manifest(job_dir)
        if manifest is None:
            raise OperationalError(f"{job_dir / MANIFEST}: missing")
        return manifest

    def list_jobs(self) -> list[str]:
        """Ids of the job directories under the root, sorted.

        A job directory has a valid job id as its name and a ``manifest.json`` regular file
        in it; symlinks, stray files and other directories (the root may be misconfigured
        to be somebody's home) are not jobs.
        """
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OperationalError(
                f"{self.root}: cannot list artifacts: {exc.strerror or exc}"
            ) from exc
        jobs = []
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                job_id = validate_job_id(entry.name)
                manifest = os.lstat(os.path.join(entry.path, MANIFEST))
            except (UsageError, OSError):
                continue
            if stat.S_ISREG(manifest.st_mode):
                jobs.append(job_id)
        return sorted(jobs)

    # -- adding ----------------------------------------------------------------------

    def _commit(self, job_id: str, staged: list[_Staged], trace_id: str = "") -> list[Artifact]:
        """Move finished temp files to their names and list them in the manifest, at once.

        Order: the files' data and the new manifest's are flushed before any rename, the
        renames after; so a manifest on disk never lists a file whose bytes are not.
        """
        job_dir = self._make_job_dir(job_id)
        artifacts = [
            Artifact(s.kind, s.rel_path, s.tmp.size, s.tmp.hasher.hexdigest()) for s in staged
        ]
        with self._locked(job_id, job_dir):
            # Re-check under the lock: a concurrent writer may have swapped a dir for a symlink.
            parents = [self._parent_for(job_dir, s.rel_path, create=False) for s in staged]
            # Read first: an unreadable manifest must stop us before the file lands unlisted.
            manifest = self._read_manifest(job_dir) or self._new_manifest(job_id, trace_id)
            # Re-adding a path replaces its entry: the manifest describes what is on disk.
            paths = {a.path for a in artifacts}
            kept = tuple(a for a in manifest.artifacts if a.path not in paths)
            updated = Manifest(
                manifest.job_id, manifest.trace_id, manifest.created_at, (*kept, *artifacts)
            )
            data = json.dumps(updated.to_json(), indent=2).encode("utf-8") + b"\n"
            manifest_tmp = _TempArtifact(job_dir)
            try:
                manifest_tmp.write(data)
                manifest_tmp.finish(sync=False)
                self.flusher.flush([*(s.tmp.path for s in staged), manifest_tmp.path])
                for item, parent in zip(staged, parents, strict=True):
                    item.tmp.move_to(parent / item.rel_path.rsplit("/", 1)[-1])
                manifest_tmp.move_to(job_dir / MANIFEST)
            finally:
                manifest_tmp.discard()
            self.flusher.flush(dict.fromkeys([*parents, job_dir, self.root]))
        for artifact in artifacts:
            _log.debug(
                "add",
                "artifact stored",
                job_id=job_id,
                path=artifact.path,
                type=artifact.type,
                size_bytes=artifact.size_bytes,
            )
        return artifacts

    def _store_error(self, job_id: str, rel_path: str, exc: OSError) -> OperationalError:
        where = self.job_dir(job_id) / rel_path
        return OperationalError(f"{where}: cannot store artifact: {exc.strerror or exc}")

    def _start(self, job_id: str, rel_path: str, kind: str) -> _TempArtifact:
        validate_artifact_type(kind)
        validate_artifact_path(rel_path)
        try:
            job_dir = self._make_job_dir(job_id)
            return _TempArtifact(self._parent_for(job_dir, rel_path, create=True))
        except OSError as exc:
            raise self._store_error(job_id, rel_path, exc) from exc

    def _add_many_sync(
        self,
        job_id: str,
        items: list[tuple[str, Iterable[bytes], str]],
        trace_id: str,
    ) -> list[Artifact]:
        for rel_path, _, kind in items:
            validate_artifact_type(kind)
            validate_artifact_path(rel_path)
        staged: list[_Staged] = []
        rel_path = items[0][0] if items else ""
        try:
            for rel_path, chunks, kind in items:
                staged.append(_Staged(rel_path, kind, self._start(job_id, rel_path, kind)))
                tmp = staged[-1].tmp
                for chunk in chunks:
                    tmp.write(chunk)
                tmp.finish(sync=False)
            return self._commit(job_id, staged, trace_id)
        except OSError as exc:
            raise self._store_error(job_id, rel_path, exc) from exc
        finally:
            for item in staged:
                item.tmp.discard()

    def _add_chunks_sync(
        self, job_id: str, rel_path: str, chunks: Iterable[bytes], kind: str, trace_id: str = ""
    ) -> Artifact:
        return self._add_many_sync(job_id, [(rel_path, chunks, kind)], trace_id)[0]

    async def add_bytes(
        self, job_id: str, rel_path: str, data: bytes, *, type: str, trace_id: str = ""
    ) -> Artifact:
        """Store ``data`` as ``rel_path`` of ``job_id`` (a new manifest gets ``trace_id``)."""
        return await asyncio.to_thread(
            self._add_chunks_sync, job_id, rel_path, (data,), type, trace_id
        )

    async def add_many(
        self, job_id: str, files: Mapping[str, bytes], *, type: str, trace_id: str = ""
    ) -> list[Artifact]:
        """Store several small files of ``job_id`` with one manifest update (and one flush).

        All paths are validated before anything is written; a failure stores none of them.
        """
        items: list[tuple[str, Iterable[bytes], str]] = [
            (rel_path, (data,), type) for rel_path, data in files.items()
        ]
        if not items:
            return []
        return await asyncio.to_thread(self._add_many_sync, job_id, items, trace_id)

    async def add_file(
        self, job_id: str, rel_path: str, src: Path, *, type: str, trace_id: str = ""
    ) -> Artifact:
        """Copy the file ``src`` into the store as ``rel_path`` of ``job_id``."""

        def chunks() -> Iterator[bytes]:
            try:
                with open(src, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        yield chunk
            except OSError as exc:
                raise OperationalError(f"{src}: cannot read: {exc.strerror}") from exc

        return await asyncio.to_thread(
            self._add_chunks_sync, job_id, rel_path, chunks(), type, trace_id
        )

    async def add_stream(
        self,
        job_id: str,
        rel_path: str,
        chunks: Iterable[bytes] | AsyncIterable[bytes],
        *,
        type: str,
        trace_id: str = "",
    ) -> Artifact:
        """Store chunks as they arrive, hashing on the way: memory stays constant."""
        if not isinstance(chunks, AsyncIterable):
            return await asyncio.to_thread(
                self._add_chunks_sync, job_id, rel_path, chunks, type, trace_id
            )
        validate_artifact_type(type)
        validate_artifact_path(rel_path)
        tmp = await asyncio.to_thread(self._start, job_id, rel_path, type)
        try:
            async for chunk in chunks:
                tmp.write(chunk)
            await asyncio.to_thread(tmp.finish, sync=False)
            staged = [_Staged(rel_path, type, tmp)]
            done = await asyncio.to_thread(self._commit, job_id, staged, trace_id)
            return done[0]
        except OSError as exc:
            raise self._store_error(job_id, rel_path, exc) from exc
        finally:
            tmp.discard()

    # -- reading ---------------------------------------------------------------------

    def fetch(self, job_id: str, out_dir: Path) -> list[Path]:
        """Copy every artifact to ``out_dir/<path>``, verifying size and sha256 on the way.

        A file that does not match its manifest entry is never left under its final name.
        """
        manifest = self.manifest(job_id)
        job_dir = self.job_dir(job_id)
        out_dir = Path(out_dir)
        _make_out_dir(out_dir)
        delivered = [self._fetch_one(job_dir, a, out_dir) for a in manifest.artifacts]
        _log.debug("fetch", "artifacts fetched", job_id=job_id, count=len(delivered), out=out_dir)
        return delivered

    def _fetch_one(self, job_dir: Path, artifact: Artifact, out_dir: Path) -> Path:
        try:
            src_parent = self._parent_for(job_dir, artifact.path, create=False)
        except FileNotFoundError:
            raise OperationalError(f"{job_dir / artifact.path}: missing") from None
        src = src_parent / artifact.path.rsplit("/", 1)[-1]
        dest_parent = _make_out_subdirs(out_dir, artifact.path.split("/")[:-1])
        dest = dest_parent / src.name
        try:
            fd = _open_regular(src)
        except FileNotFoundError:
            raise OperationalError(f"{src}: missing") from None
        except OSError as exc:
            raise OperationalError(f"{src}: cannot read: {_read_reason(exc)}") from exc
        try:
            tmp = _TempArtifact(dest_parent)
        except OSError as exc:
            os.close(fd)
            # /proc, /sys/kernel, a read-only mount: one line naming the directory.
            raise OperationalError(f"{dest_parent}: cannot write: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    tmp.write(chunk)
                    if tmp.size > artifact.size_bytes:
                        break
            tmp.finish()
            if tmp.size != artifact.size_bytes or tmp.hasher.hexdigest() != artifact.sha256:
                raise OperationalError(
                    f"{src}: does not match manifest (size/sha256 mismatch); not delivered"
                )
            tmp.move_to(dest)
        except OSError as exc:
            raise OperationalError(f"{dest}: cannot write: {exc.strerror or exc}") from exc
        finally:
            tmp.discard()
        return dest

    # -- retention -------------------------------------------------------------------

    def _job_created(self, job_dir: Path) -> float | None:
        """When the job of ``job_dir`` was created, or None if it is not a job dir we made."""
        try:
            manifest = self._read_manifest(job_dir)
        except OperationalError as exc:
            _log.warn("sweep", "manifest unreadable; directory kept", err=exc)
            return None
        if manifest is None:
            _log.warn("sweep", "no manifest; directory kept", path=job_dir)
            return None
        return manifest.created_epoch()

    def sweep(
        self, retention_days: float, *, keep: Callable[[str], bool] | None = None
    ) -> list[str]:
        """Delete job dirs created more than ``retention_days`` ago; returns their ids.

        ``keep(job_id)`` true spares a directory whatever its age (a job still queued or
        running is still writing its artifacts).

        Only directories this store made are deleted: a valid job id as the name and a
        readable manifest with that id inside. Everything else (symlinks, corrupt or missing
        manifests, a misconfigured root's photos/ and src/) is left alone, so nothing outside
        the store is ever touched.
        """
        # NaN would compare false against every age and delete everything: refuse it.
        if not math.isfinite(retention_days) or retention_days < 0:
            raise UsageError(f"retention must be a finite number >= 0 days, got {retention_days}")
        cutoff = self._clock() - retention_days * DAY_S
        removed = []
        # Dirs a previous sweep moved aside but could not delete: try again.
        retried = (self._remove_tree(trash) for trash in self._sweep_leftovers())
        failed = [problem for problem in retried if problem is not None]
        for job_id in self.list_jobs():
            job_dir = self.root / job_id
            try:
                created = self._job_created(job_dir)
                if created is None or created >= cutoff or (keep is not None and keep(job_id)):
                    continue
                # Moved aside first: a delete that fails half-way must not leave a job dir
                # whose manifest lists files that are gone (fetch would then fail on it).
                trash = self.root / f"{SWEEP_TRASH_PREFIX}{job_id}"
                os.rename(job_dir, trash)
            except OSError as exc:
                failed.append(f"{job_dir}: {exc.strerror or exc}")
                continue
            removed.append(job_id)
            if (problem := self._remove_tree(trash)) is not None:
                failed.append(problem)
        if removed:
            _log.info("sweep", "expired artifacts removed", count=len(removed))
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise OperationalError(
                f"artifact sweep: {len(removed)} job dir(s) removed, but not all of it could be "
                f"deleted: {failed[0]}{more}; what is left is under {self.root}/"
                f"{SWEEP_TRASH_PREFIX}* and the next sweep tries again"
            )
        return removed

    def _sweep_leftovers(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []  # list_jobs reports an unreadable root
        return [
            Path(entry.path)
            for entry in entries
            if entry.name.startswith(SWEEP_TRASH_PREFIX)
            and _is_job_id(entry.name[len(SWEEP_TRASH_PREFIX) :])
            and entry.is_dir(follow_symlinks=False)
        ]

    @staticmethod
    def _remove_tree(path: Path) -> str | None:
        """Delete ``path``; a one-line description of what stopped it, or None."""
        problems: list[str] = []

        def note(_func: object, name: str, exc: BaseException) -> None:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"{name}: {reason}")

        # rmtree never follows symlinks inside the tree (fd-based on Linux). onerror is
        # deprecated from 3.12 on (onexc replaces it), and nixpkgs' Python is newer than ours.
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=note)
        else:
            shutil.rmtree(path, onerror=lambda f, n, info: note(f, n, info[1]))
        return problems[0] if problems else None
