"""One service's restore from one repository (seed 002's ``svc restore``), and its job type.

Both modes first pick the snapshot: ``latest`` is the newest snapshot tagged with the
service; an id (a prefix of 4+ hex digits) must name exactly one snapshot, and that snapshot
must carry the service's tag (another service's data is refused). The snapshot's ``paths``
(the service's ``backup.paths`` and volume mountpoints as they were at backup time) are what
is restored; a path inside another one counts once, as part of the outer one.

**Into staging** (the default): ``restic restore ID --target DIR`` into
``<restore.staging_dir>/<svc>/<short id>`` or ``--target`` (an existing non-empty directory
is refused, never mixed into), the restored files checked against ``restic ls --json``
(count and sizes), then, per path, what differs from the live data: files only in the
snapshot, only live, and changed (type, size, else a SHA-256 of the content). Nothing live
is touched.

**In place** (``--in-place``, which needs ``--yes``):

1. Checks before anything happens: no path is ``/`` or a mount point (bind mounts
   included), none overlaps ``restore.aside_dir``; the service's docker volumes exist.
2. ``restic restore`` into ``<aside_dir>/<svc>/<timestamp>.incoming`` while the service
   still runs, checked against the snapshot's listing. A restore that fails or does not
   match changes nothing: the service is not even stopped.
3. The service is stopped (units.pause_plan/pause: its unit through systemd, or its running
   containers through docker). A service that was not running is not started afterwards.
4. Each live path goes to ``<aside_dir>/<svc>/<timestamp>/<its absolute path>`` and the
   restored one into its place, by ``rename(2)`` where both sides are on one mount. Across
   mounts (another filesystem, or a bind mount: dockerd bind-mounts its data root onto
   itself, so a volume's ``_data`` is never on the aside dir's mount) the live data is
   *copied* aside (mode, times, owner, symlinks; checked: the same entries and sizes) and
   kept there, the restored copy is copied beside the live path and renamed into place,
   and only when every path is in place is the old live data removed (its checked copy is
   aside; ``--yes`` allowed this). Any failure undoes every step made so far, last first.
5. The paths now in place are checked against the snapshot again (count and sizes).
6. The service is started again, in a ``finally``, whatever happened. Steps 3-6 are never
   cut short: a stop request or a cancellation arriving then waits for them.

The data moved or copied aside is kept (its path is printed) and svc never deletes it.
Besides the old live data of a path copied across mounts (step 4), svc removes only what it
made itself in the same run: the restored copies in the incoming directory once they are in
place, and the empty directories around them. A path that is not in the snapshot (it did
not exist at backup time) is left as it is, with a warning.

The job type ``services.restore`` (:func:`restore_job_type`) runs one restore; ``svc
restore`` runs it here through the core's worker. Its result is :meth:`RestoreRecord.result`,
its artifacts ``restore/summary.json`` (the same record, also for a failed run),
``restore/diff.json`` (staging: every differing path, not only the first few) and
``restic/restore.txt`` (restic's own output). It is never retried, and marks itself
unrepeatable before it moves any data.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from homeops.core.errors import ExitCode, HomeopsError, OperationalError, UsageError
from homeops.core.logging import format_ts, get_logger
from homeops.services import restic as r
from homeops.services.settings import AbsolutePath, check_service_name
from homeops.services.stop import StopRequest as StopRequest  # re-exported
from homeops.services.stop import guard

if TYPE_CHECKING:
    from homeops.core.jobs.types import JobType
    from homeops.core.jobs.worker import JobContext
    from homeops.services.repo import Repo
    from homeops.services.settings import SvcSettings
    from homeops.services.units import Paused

T = TypeVar("T")

RESTORE: Final = "services.restore"
# How many paths of each kind a summary names (the artifact has them all).
SHOWN_PATHS: Final = 10
INCOMING_SUFFIX: Final = ".incoming"
NOT_CONFIRMED: Final = (
    "--in-place replaces the service's live data: add --yes to confirm; nothing was done"
)
_DIR_MODE: Final = 0o700
UNLOCK_TIMEOUT_S: Final = 120.0
_SNAPSHOT_ID: Final = re.compile(r"[0-9a-f]{4,64}")

_log = get_logger("services.restore")

ProgressCallback = Callable[[float | None, str], None]


class RestoreMode(StrEnum):
    """Where a restore goes."""

    STAGING = "staging"
    IN_PLACE = "in-place"


class RestoreFailed(OperationalError):
    """A restore failed; the message says what happened to the data. Never retried."""

    retryable = False

    def __init__(self, message: str, *, exit_code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RestoreInterrupted(RestoreFailed):
    """A stop request (SIGINT/SIGTERM) ended the restore before it changed anything."""

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(f"restore interrupted by {reason}; {where}")
        self.reason = reason


# -- pure: choosing the snapshot, the paths ---------------------------------------------------


def is_snapshot_id(text: str) -> bool:
    """A snapshot id or a prefix of one restic accepts (4 to 64 lowercase hex digits)."""
    return _SNAPSHOT_ID.fullmatch(text) is not None


def choose_snapshot(
    snapshots: Sequence[r.Snapshot], service: str, wanted: str, repo: str
) -> r.Snapshot:
    """The snapshot ``wanted`` (``latest`` or an id prefix) of ``service`` among every
    snapshot of the repository; a one-line error saying why there is none."""
    mine = sorted((s for s in snapshots if service in s.tags), key=lambda s: s.time)
    if wanted == "latest":
        if not mine:
            raise OperationalError(
                f"no backup of {service} in {repo} yet (run `svc backup {repo} {service}`)"
            )
        return mine[-1]
    if not is_snapshot_id(wanted):
        raise UsageError(f"snapshot: expected 'latest' or a hex snapshot id, got {wanted!r}")
    found = [s for s in snapshots if s.id.startswith(wanted)]
    if not found:
        raise UsageError(
            f"no snapshot {wanted} in {repo} (list them with `svc list-backups {repo} {service}`)"
        )
    if len(found) > 1:
        ids = ", ".join(s.short_id for s in found[:5])
        raise UsageError(f"snapshot id {wanted} is ambiguous ({ids}): give more of it")
    [chosen] = found
    if service not in chosen.tags:
        tags = ", ".join(chosen.tags) or "none"
        raise UsageError(
            f"snapshot {chosen.short_id} is not a backup of {service} (its tags: {tags}); "
            "refusing to restore another service's data"
        )
    return chosen


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def normal(path: str) -> str:
    """``path`` without ``.``, ``..``, doubled or trailing slashes (no file system access)."""
    return os.path.normpath(path)


def snapshot_roots(paths: Iterable[str]) -> list[str]:
    """The snapshot's paths, normalised, without those inside another one, in order."""
    found = list(dict.fromkeys(normal(p) for p in paths if p.startswith("/")))
    return [p for p in found if not any(o != p and _inside(p, o) for o in found)]


def under(base: Path, path: str) -> Path:
    """Where restic puts absolute ``path`` when it restores into ``base``."""
    return base / path.lstrip("/")


def overlapping(a: str, b: str) -> bool:
    """Whether one of two absolute paths is inside the other, as written or once their
    symlinks are resolved (a --target reached through a link into the live data)."""
    pairs = {(normal(a), normal(b)), (os.path.realpath(a), os.path.realpath(b))}
    return any(_inside(x, y) or _inside(y, x) for x, y in pairs)


def aside_stamp(when: float) -> str:
    """The directory name of one in-place restore: its UTC time, ``20250102T030405Z``."""
    return datetime.fromtimestamp(when, tz=UTC).strftime("%Y%m%dT%H%M%SZ")


# -- the file system: trees, differences, checks --------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A non-directory entry of a tree: its kind, size, and a symlink's target."""

    kind: Literal["file", "symlink", "other"]
    size: int = 0
    link: str | None = None


def scan_tree(root: Path) -> dict[str, Entry]:
    """Every non-directory entry under ``root`` by path relative to it (``""``: ``root``
    itself when it is not a directory); empty when ``root`` does not exist. Symlinks are
    not followed."""
    try:
        top = root.lstat()
    except FileNotFoundError:
        return {}
    if not stat.S_ISDIR(top.st_mode):
        return {"": _entry(root, top)}
    found: dict[str, Entry] = {}
    for directory, dirs, files in os.walk(root):
        base = Path(directory)
        rel = base.relative_to(root)
        for name in [*files, *(d for d in dirs if (base / d).is_symlink())]:
            path = base / name
            found[str(rel / name) if str(rel) != "." else name] = _entry(path, path.lstat())
    return found


def _entry(path: Path, info: os.stat_result) -> Entry:
    if stat.S_ISREG(info.st_mode):
        return Entry("file", info.st_size)
    if stat.S_ISLNK(info.st_mode):
        return Entry("symlink", info.st_size, os.readlink(path))
    return Entry("other")


_HASH_CHUNK: Final = 8 << 20


def _digest(path: Path, stopped: Callable[[], str | None] | None = None) -> bytes:
    """SHA-256 of a file, asking ``stopped`` between chunks: a many-GiB image must not
    hold a Ctrl-C until it is read to its end."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            reason = stopped() if stopped is not None else None
            if reason is not None:
                raise RestoreInterrupted(reason, "the comparison with the live data was cut short")
    return digest.digest()


def _same(
    a: Path, b: Path, ea: Entry, eb: Entry, stopped: Callable[[], str | None] | None = None
) -> bool:
    if ea.kind != eb.kind or ea.size != eb.size or ea.link != eb.link:
        return False
    return ea.kind != "file" or _digest(a, stopped) == _digest(b, stopped)


@dataclass(frozen=True)
class PathDiff:
    """One snapshot path: what differs between the restored copy and the live data."""

    path: str
    kind: str  # path (backup.paths), volume (a backup.volumes mountpoint), other
    volume: str | None
    restored_at: str
    live_exists: bool
    only_snapshot: tuple[str, ...]
    only_live: tuple[str, ...]
    changed: tuple[str, ...]
    same: int

    @property
    def differs(self) -> bool:
        """Whether anything differs."""
        return bool(self.only_snapshot or self.only_live or self.changed)

    def as_json(self, shown: int | None = SHOWN_PATHS) -> dict[str, Any]:
        """Counts and the first ``shown`` paths of each kind (None: all of them)."""

        def part(paths: tuple[str, ...]) -> dict[str, Any]:
            return {"count": len(paths), "first": list(paths[:shown] if shown else paths)}

        return {
            "path": self.path,
            "kind": self.kind,
            "volume": self.volume,
            "restored_at": self.restored_at,
            "live_exists": self.live_exists,
            "only_snapshot": part(self.only_snapshot),
            "only_live": part(self.only_live),
            "changed": part(self.changed),
            "same": self.same,
        }


def diff_path(
    path: str,
    restored: Path,
    *,
    kind: str = "path",
    volume: str | None = None,
    stopped: Callable[[], str | None] | None = None,
) -> PathDiff:
    """Compare the restored copy of ``path`` (at ``restored``) with the live ``path``.

    ``stopped`` is asked before each file is hashed; a reason ends the comparison with
    :class:`RestoreInterrupted` (it runs on a thread, where cancelling cannot reach)."""
    live = Path(path)
    snap, now = scan_tree(restored), scan_tree(live)

    def shown(rel: str) -> str:
        return str(live / rel) if rel else path

    only_snapshot = sorted(shown(k) for k in snap.keys() - now.keys())
    only_live = sorted(shown(k) for k in now.keys() - snap.keys())
    changed, same = [], 0
    for rel in sorted(snap.keys() & now.keys()):
        reason = stopped() if stopped is not None else None
        if reason is not None:
            raise RestoreInterrupted(reason, "the comparison with the live data was cut short")
        if _same(
            restored / rel if rel else restored,
            live / rel if rel else live,
            snap[rel],
            now[rel],
            stopped,
        ):
            same += 1
        else:
            changed.append(shown(rel))
    return PathDiff(
        path=path,
        kind=kind,
        volume=volume,
        restored_at=str(restored),
        live_exists=os.path.lexists(live),
        only_snapshot=tuple(only_snapshot),
        only_live=tuple(only_live),
        changed=tuple(changed),
        same=same,
    )


def file_sizes(base: Path | None, roots: Iterable[str]) -> dict[str, int]:
    """Original absolute path → size of every regular file under ``roots``, as restored
    under ``base`` (None: in place)."""
    found: dict[str, int] = {}
    for root in roots:
        where = Path(root) if base is None else under(base, root)
        for rel, entry in scan_tree(where).items():
            if entry.kind == "file":
                found[f"{root}/{rel}" if rel else root] = entry.size
    return found


@dataclass(frozen=True)
class TreeCheck:
    """Restored files against the snapshot's listing: restic's check plus files the
    snapshot does not have (so that the count matches too)."""

    check: r.RestoreCheck
    unexpected: tuple[str, ...]
    found_files: int

    @property
    def ok(self) -> bool:
        """Every file there with its size, and no other file."""
        return self.check.ok and not self.unexpected

    def problem(self) -> str:
        """What is wrong, in one line (the first few paths of each kind)."""
        parts = []
        if self.check.missing:
            parts.append(f"{len(self.check.missing)} missing ({_first(self.check.missing)})")
        if self.check.wrong_size:
            wrong = [f"{p}: {want} != {got}" for p, want, got in self.check.wrong_size]
            parts.append(f"{len(wrong)} of the wrong size ({_first(wrong)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} not in the snapshot ({_first(self.unexpected)})")
        return "; ".join(parts) or "none"

    def as_json(self) -> dict[str, Any]:
        """The check in the result."""
        return {
            "ok": self.ok,
            "expected_files": self.check.expected_files,
            "expected_bytes": self.check.expected_bytes,
            "found_files": self.found_files,
            "missing": list(self.check.missing[:SHOWN_PATHS]),
            "wrong_size": [
                {"path": p, "snapshot": want, "found": got}
                for p, want, got in self.check.wrong_size[:SHOWN_PATHS]
            ],
            "unexpected": list(self.unexpected[:SHOWN_PATHS]),
        }


def _first(items: Sequence[str], n: int = 3) -> str:
    more = len(items) - n
    return ", ".join(items[:n]) + (f" and {more} more" if more > 0 else "")


def check_tree(listing: r.LsListing, base: Path | None, roots: Sequence[str]) -> TreeCheck:
    """The files under ``roots`` (restored under ``base``, or in place) against ``listing``."""
    found = file_sizes(base, roots)
    check = r.verify_restore(listing, found, only=roots)
    expected = {n.path for n in listing.files}
    unexpected = tuple(sorted(p for p in found if p not in expected))
    return TreeCheck(check, unexpected, len(found))


# -- the record -------------------------------------------------------------------------------


@dataclass
class Moved:
    """One live path and where its data went."""

    path: str
    aside: str | None  # None: there was no live data
    how: Literal["rename", "copy"] | None = None  # copy: across mounts (see _swap_files)


@dataclass
class RestoreRecord:
    """Everything one restore did, filled in as it goes (also when it fails part-way);
    :meth:`result` is the job result and the command's JSON."""

    repo: str
    service: str
    mode: RestoreMode
    snapshot: r.Snapshot | None = None
    restic_version: str | None = None
    target: str | None = None  # staging: the restore's directory
    aside: str | None = None  # in place: where the live data went
    incoming: str | None = None  # in place: where restic restored to
    paths: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # kind, volume
    restic_output: str = ""
    check: TreeCheck | None = None
    diffs: list[PathDiff] = field(default_factory=list)
    moved: list[Moved] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    final_check: TreeCheck | None = None
    stopped: bool = False
    via: str | None = None
    started_again: bool | None = None
    warnings: list[str] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    def result(self, shown: int | None = SHOWN_PATHS) -> dict[str, Any]:
        """The ``services.restore`` job result (see the module docstring)."""
        snap = self.snapshot
        started, finished = self.started_at, self.finished_at
        return {
            "repo": self.repo,
            "service": self.service,
            "mode": str(self.mode),
            "snapshot": (
                {
                    "id": snap.id,
                    "short_id": snap.short_id,
                    "time": snap.time.isoformat(),
                    "hostname": snap.hostname,
                    "tags": list(snap.tags),
                    "paths": list(snap.paths),
                }
                if snap is not None
                else None
            ),
            "restic_version": self.restic_version,
            "target": self.target,
            "aside": self.aside,
            "incoming": self.incoming,
            "paths": [
                {"path": p, "kind": kind, "volume": volume}
                for p, (kind, volume) in self.paths.items()
            ],
            "check": self.check.as_json() if self.check is not None else None,
            "diff": [d.as_json(shown) for d in self.diffs],
            "moved": [{"path": m.path, "aside": m.aside, "how": m.how} for m in self.moved],
            "skipped": list(self.skipped),
            "final_check": self.final_check.as_json() if self.final_check is not None else None,
            "stopped": self.stopped,
            "via": self.via,
            "started_again": self.started_again,
            "warnings": list(self.warnings),
            "started_at": format_ts(started) if started is not None else None,
            "finished_at": format_ts(finished) if finished is not None else None,
            "error": self.error,
        }


# -- the flow ---------------------------------------------------------------------------------


async def _guard(awaitable: Awaitable[T], stop: StopRequest | None, where: str) -> T:
    """Await ``awaitable``; a stop request cancels it and raises
    :class:`RestoreInterrupted` saying ``where`` things are."""
    return await guard(awaitable, stop, lambda reason: RestoreInterrupted(reason, where))


async def _labels(
    settings: SvcSettings, service: str, roots: Sequence[str], *, required: bool
) -> dict[str, tuple[str, str | None]]:
    """Each root's kind: ``path`` (in backup.paths), ``volume`` (a volume's mountpoint
    now), ``other``. Without ``required``, docker not answering only loses the labels."""
    from homeops.services import units

    backup = settings.services[service].backup
    paths = {normal(str(p)) for p in backup.paths}
    try:
        mounts = await units.volume_mountpoints(settings, backup.volumes)
    except HomeopsError as exc:
        if required:
            raise type(exc)(
                f"{service}: the service's docker volumes must exist for an in-place restore "
                f"(start it once, or `docker volume create`): {exc}"
            ) from exc
        _log.debug("labels", "volume mountpoints unknown", service=service, err=exc)
        mounts = {}
    by_mount = {normal(m): name for name, m in mounts.items()}
    labels: dict[str, tuple[str, str | None]] = {}
    for root in roots:
        if root in by_mount:
            labels[root] = ("volume", by_mount[root])
        elif root in paths:
            labels[root] = ("path", None)
        else:
            labels[root] = ("other", None)
    return labels


async def run_restore(
    settings: SvcSettings,
    repo: Repo,
    service: str,
    *,
    snapshot: str = "latest",
    target: Path | None = None,
    in_place: bool = False,
    yes: bool = False,
    systemd: bool | None = None,
    record: RestoreRecord | None = None,
    stop: StopRequest | None = None,
    on_progress: ProgressCallback | None = None,
    on_swap_start: Callable[[], None] | None = None,
    lock_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> RestoreRecord:
    """Restore ``service`` from ``repo`` (the steps in the module docstring); the record,
    or :class:`RestoreFailed` (the record still says what happened). With ``lock_dir``,
    a second restore of the same service while one runs is refused (:func:`one_restore`)."""
    mode = RestoreMode.IN_PLACE if in_place else RestoreMode.STAGING
    if record is None:
        record = RestoreRecord(repo.name, service, mode)
    if service not in settings.services:
        raise UsageError(f"no service {service!r} in the config")
    if in_place and not yes:
        raise UsageError(NOT_CONFIRMED)
    if in_place and target is not None:
        raise UsageError("--target is for a restore into staging; --in-place restores in place")
    if target is not None and not target.is_absolute():
        raise UsageError(f"--target must be an absolute path, got {str(target)!r}")

    def progress(fraction: float | None, message: str) -> None:
        if on_progress is not None:
            on_progress(fraction, message)

    record.started_at = clock()
    _log.info("start", "restore started", service=service, repo=repo.name, mode=str(mode))
    try:
        with one_restore(lock_dir, service):
            await _restore(
                settings, repo, service, record, snapshot, target, in_place,
                systemd=systemd, stop=stop, progress=progress,
                on_swap_start=on_swap_start, clock=clock,
            )  # fmt: skip
    except HomeopsError as exc:
        record.error = str(exc)
        _log.error("done", "restore failed", service=service, repo=repo.name, err=exc)
        raise
    finally:
        record.finished_at = clock()
    _log.info(
        "done", "restore finished", service=service, repo=repo.name, mode=str(mode),
        snapshot=record.snapshot.short_id if record.snapshot else None,
    )  # fmt: skip
    return record


@contextlib.contextmanager
def one_restore(lock_dir: Path | None, service: str) -> Iterator[None]:
    """Hold ``<lock_dir>/restore-<service>.lock`` (flock) for one restore; a second one
    of the service is refused at once. Two at a time mixed snapshots in one staging target,
    and in place the second found the live data already moved aside by the first."""
    if lock_dir is None:
        yield
        return
    path = lock_dir / f"restore-{service}.lock"
    try:
        lock_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise OperationalError(
            f"cannot take the restore lock {path}: {exc.strerror or exc}"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OperationalError(
                f"another restore of {service} is running (it holds {path}): svc restores a "
                "service one run at a time; wait for it to end"
            ) from None
        yield
    finally:
        os.close(fd)


async def _restore(
    settings: SvcSettings,
    repo: Repo,
    service: str,
    record: RestoreRecord,
    snapshot: str,
    target: Path | None,
    in_place: bool,
    *,
    systemd: bool | None,
    stop: StopRequest | None,
    progress: ProgressCallback,
    on_swap_start: Callable[[], None] | None,
    clock: Callable[[], float],
) -> None:
    progress(None, "finding the snapshot")
    restic = await _guard(repo.restic(), stop, "nothing was changed")
    record.restic_version = str(restic.version) if restic.version is not None else None
    done = await _guard(repo.checked(r.snapshots_argv(restic)), stop, "nothing was changed")
    chosen = choose_snapshot(r.parse_snapshots(done.stdout), service, snapshot, repo.name)
    record.snapshot = chosen
    roots = snapshot_roots(chosen.paths)
    if not roots:
        raise RestoreFailed(f"snapshot {chosen.short_id} names no absolute path to restore")
    record.paths = await _labels(settings, service, roots, required=in_place)
    for path in settings.services[service].backup.paths:
        wanted = normal(str(path))
        if not any(_inside(wanted, root) for root in roots):
            # restic 0.14 leaves a source path that did not exist out of the snapshot.
            record.warnings.append(
                f"{wanted} is in backup.paths but not in snapshot {chosen.short_id}: "
                + ("left as it is" if in_place else "nothing of it was restored")
            )
    if in_place:
        await _in_place(
            settings, repo, restic, record, roots,
            systemd=systemd, stop=stop, progress=progress,
            on_swap_start=on_swap_start, clock=clock,
        )  # fmt: skip
    else:
        await _staging(settings, repo, restic, record, roots, target, stop, progress)


async def _listing(repo: Repo, restic: r.Restic, snapshot_id: str) -> r.LsListing:
    done = await repo.checked(r.ls_argv(restic, snapshot_id))
    return r.parse_ls(done.stdout)


async def _unlock(repo: Repo, restic: r.Restic) -> None:
    """Remove the stale lock a killed restic left (0.14 leaves it on SIGTERM); only stale
    ones, never a live run's. A failure is only logged."""
    try:
        _done, verdict = await repo.run(r.unlock_argv(restic), timeout=UNLOCK_TIMEOUT_S)
    except HomeopsError as exc:
        _log.warn("unlock", "could not remove the interrupted restore's lock", err=exc)
        return
    if verdict.error() is not None:
        _log.warn("unlock", "could not remove the interrupted restore's lock", err=verdict.message)


async def _restore_and_list(
    repo: Repo,
    restic: r.Restic,
    record: RestoreRecord,
    into: Path,
    stop: StopRequest | None,
    where: str,
) -> r.LsListing:
    """``restic restore`` into ``into``, with the snapshot's listing (what the restore is
    checked against) read meanwhile; the listing."""
    assert record.snapshot is not None
    listing = asyncio.ensure_future(_listing(repo, restic, record.snapshot.id))
    argv = r.restore_argv(restic, record.snapshot.id, into)
    try:
        done, verdict = await _guard(repo.run(argv), stop, where)
        record.restic_output = (done.stdout + done.stderr).strip()
        error = verdict.error()
        if error is not None:
            raise type(error)(f"restic restore: {error}; {where}")
        return await _guard(listing, stop, where)
    except (RestoreInterrupted, asyncio.CancelledError):
        listing.cancel()
        await asyncio.gather(listing, return_exceptions=True)
        # restic killed: 0.14 leaves its lock behind on SIGTERM.
        await asyncio.shield(_unlock(repo, restic))
        raise
    finally:
        if not listing.done():
            # restic restore failed: let ls end by itself rather than leave a lock.
            await asyncio.gather(listing, return_exceptions=True)


def _prepare_target(target: Path, roots: Sequence[str]) -> None:
    for root in roots:
        if overlapping(str(target), root):
            raise UsageError(
                f"the restore target {target} overlaps the snapshot path {root}: choose a "
                "--target outside the service's data"
            )
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise UsageError(f"the restore target {target} exists and is not a directory")
        if any(target.iterdir()):
            raise UsageError(
                f"the restore target {target} is not empty: svc does not mix restores; "
                "remove it or pass another --target"
            )
    try:
        target.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot make the restore target {target}: {exc.strerror or exc} (--target, or "
            "restore.staging_dir)"
        ) from exc


async def _staging(
    settings: SvcSettings,
    repo: Repo,
    restic: r.Restic,
    record: RestoreRecord,
    roots: Sequence[str],
    target: Path | None,
    stop: StopRequest | None,
    progress: ProgressCallback,
) -> None:
    assert record.snapshot is not None
    chosen = record.snapshot
    into = target or settings.restore.staging_dir / record.service / chosen.short_id
    into = Path(normal(str(into)))
    _prepare_target(into, roots)
    record.target = str(into)
    where = f"the live data was not touched; what was restored is in {into}"
    progress(0.1, f"restoring snapshot {chosen.short_id} into {into}")
    listed = await _restore_and_list(repo, restic, record, into, stop, where)
    progress(0.6, "checking the restored files against the snapshot")
    record.check = await asyncio.to_thread(check_tree, listed, into, roots)
    progress(0.7, "comparing with the live data")

    def stopped() -> str | None:
        return (stop.reason or "a stop request") if stop is not None and stop.requested else None

    def diffs() -> list[PathDiff]:
        return [
            diff_path(root, under(into, root), kind=record.paths[root][0],
                      volume=record.paths[root][1], stopped=stopped)
            for root in roots
        ]  # fmt: skip

    try:
        record.diffs = await asyncio.to_thread(diffs)
    except RestoreInterrupted as exc:
        raise RestoreInterrupted(exc.reason, where) from None
    if not record.check.ok:
        raise RestoreFailed(
            f"the restored files do not match snapshot {chosen.short_id}: "
            f"{record.check.problem()}; {where}"
        )


_MOUNTINFO: Final = Path("/proc/self/mountinfo")
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def mount_points(mountinfo: str) -> set[str]:
    """The mount points in ``/proc/self/mountinfo`` text (field 5, octal escapes undone):
    bind mounts too, which st_dev cannot tell from their parent."""
    found = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            found.add(_OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return found


def _is_mount_point(path: Path, known: set[str]) -> bool:
    return str(path) in known or (path.is_dir() and not path.is_symlink() and path.is_mount())


def _check_in_place(aside_root: Path, roots: Sequence[str]) -> None:
    """Refuse what cannot be moved aside: ``/``, a mount point, a path overlapping the
    aside directory. Nothing has changed yet when this raises."""
    where = f"restore.aside_dir ({aside_root.parent})"
    try:
        known = mount_points(_MOUNTINFO.read_text())
    except OSError:
        known = set()
    for root in roots:
        path = Path(root)
        if path.parent == path:
            raise UsageError("cannot restore / in place: restore into staging and copy by hand")
        if overlapping(root, str(aside_root)):
            raise UsageError(
                f"{root} overlaps {where}: set restore.aside_dir outside the service's data"
            )
        if _is_mount_point(path, known):
            raise OperationalError(
                f"{root} is a mount point: svc cannot move it aside; restore into staging "
                "(without --in-place) and copy the files by hand"
            )


def _new_dir(parent: Path, name: str) -> Path:
    """``parent/name`` made now (``name-2``, ``-3`` … when it exists)."""
    for n in range(1, 1000):
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            continue
        return path
    raise OperationalError(f"cannot make a new directory for {name} in {parent}")


def _copy_tree(src: Path, dst: Path) -> None:
    """``cp -a`` of one entry: contents, mode, times, owner (when allowed), symlinks as
    symlinks; a socket or device is refused."""
    info = src.lstat()
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(mode):
        shutil.copy2(src, dst, follow_symlinks=False)
    elif stat.S_ISDIR(mode):
        dst.mkdir(mode=_DIR_MODE)
        for name in sorted(os.listdir(src)):
            _copy_tree(src / name, dst / name)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, stat.S_IMODE(mode))
    else:
        raise OperationalError(f"cannot copy {src}: not a file, directory, symlink or FIFO")
    with contextlib.suppress(PermissionError):  # not root: the copy is ours, as the data was
        os.lchown(dst, info.st_uid, info.st_gid)
    # Last: after the children and chown. A symlink gets its times (Linux has no lchmod).
    shutil.copystat(src, dst, follow_symlinks=False)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _sibling(path: Path, what: str, stamp: str) -> Path:
    """A hidden name beside ``path`` (the same mount: rename(2) works there)."""
    return path.with_name(f".{path.name}.svc-{what}-{stamp}")


@dataclass(frozen=True)
class _Step:
    kind: Literal["rename", "copy"]
    src: Path
    dst: Path
    remove_on_undo: bool = False


def _make_parents(directory: Path, *, like: Path) -> None:
    """Make ``directory`` and its missing parents, each with the mode of its counterpart
    under ``like`` (the same place counted from the end: restic restored those with the
    snapshot's modes), else 0700. A data directory's parents made 0700 locked its service
    out of them."""
    missing: list[tuple[Path, Path]] = []
    here, there = directory, like
    while not os.path.lexists(here) and here.parent != here:
        missing.append((here, there))
        here, there = here.parent, there.parent
    for path, model in reversed(missing):
        try:
            info = model.lstat()
            mode = stat.S_IMODE(info.st_mode) if stat.S_ISDIR(info.st_mode) else _DIR_MODE
        except OSError:
            mode = _DIR_MODE
        path.mkdir(mode=mode)
        os.chmod(path, mode)  # mkdir's mode is cut by the umask; the snapshot's is meant


class _Journal:
    """What the swap did so far, so that a failure can undo it all, last first."""

    def __init__(self) -> None:
        self.steps: list[_Step] = []

    def _free(self, src: Path, dst: Path) -> None:
        _make_parents(dst.parent, like=src.parent)
        if os.path.lexists(dst):
            raise OperationalError(f"cannot move {src} to {dst}: it exists")

    def rename(self, src: Path, dst: Path) -> None:
        self._free(src, dst)
        os.rename(src, dst)
        self.steps.append(_Step("rename", src, dst))

    def copy(self, src: Path, dst: Path, *, remove_on_undo: bool) -> None:
        """A verified copy: the same entries, kinds, sizes and link targets."""
        self._free(src, dst)
        self.steps.append(_Step("copy", src, dst, remove_on_undo))  # a half copy is undone too
        _copy_tree(src, dst)
        if scan_tree(src) != scan_tree(dst):
            raise OperationalError(f"the copy of {src} at {dst} does not match it")

    def undo(self) -> list[str]:
        """Undo every step, last first; what could not be undone."""
        stuck = []
        for step in reversed(self.steps):
            try:
                if step.kind == "rename":
                    os.rename(step.dst, step.src)
                elif step.remove_on_undo and os.path.lexists(step.dst):
                    _remove_tree(step.dst)  # a copy of restored data this run made
            except OSError as exc:
                what = "is at" if step.kind == "rename" else "was copied to"
                stuck.append(f"{step.src} {what} {step.dst} ({exc.strerror or exc})")
        self.steps.clear()
        return stuck


def _swap_files(record: RestoreRecord, incoming: Path, aside: Path, roots: Sequence[str]) -> None:
    """Move each live root aside and the restored one into its place (all or nothing).

    A rename across mounts fails (EXDEV) without doing anything; then the live data is
    copied aside (verified) and renamed to a hidden sibling, the restored copy copied to a
    hidden sibling and renamed into place, and once every root is in place the hidden old
    data is removed (its verified copy is kept aside; ``--yes`` allowed this)."""
    journal = _Journal()
    moved: list[Moved] = []
    old: list[Path] = []
    copied_in: list[Path] = []
    stamp = aside.name
    try:
        for root in roots:
            live, kept = Path(root), under(aside, root)
            if not os.path.lexists(live):
                moved.append(Moved(root, None))
                continue
            try:
                journal.rename(live, kept)
                moved.append(Moved(root, str(kept), "rename"))
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                journal.copy(live, kept, remove_on_undo=False)
                journal.rename(live, _sibling(live, "old", stamp))
                old.append(_sibling(live, "old", stamp))
                moved.append(Moved(root, str(kept), "copy"))
        for root in roots:
            live, restored = Path(root), under(incoming, root)
            try:
                journal.rename(restored, live)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                fresh = _sibling(live, "new", stamp)
                journal.copy(restored, fresh, remove_on_undo=True)
                journal.rename(fresh, live)
                copied_in.append(restored)
    except (OSError, HomeopsError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        stuck = journal.undo()
        if stuck:
            raise RestoreFailed(
                f"moving the data failed ({why}) and NOT everything could be put back: "
                + "; ".join(stuck)
            ) from exc
        raise RestoreFailed(
            f"moving the data failed ({why}); every path was put back as it was"
        ) from exc
    record.moved = moved
    # Both only once every root is in place: the old data has its verified copy aside, the
    # restored copies in incoming are duplicates of what is now in place.
    for path in [*old, *copied_in]:
        try:
            _remove_tree(path)
        except OSError as exc:
            record.warnings.append(
                f"could not remove {path} ({exc.strerror or exc}): remove it by hand"
            )


def _tidy(top: Path, roots: Sequence[str]) -> bool:
    """Remove the directories between ``top`` and where each root goes under it, and
    ``top`` itself, as far as they are empty: the skeleton svc or restic made around the
    roots. Never a file, never a non-empty directory, never anything inside a root.
    Whether ``top`` is still there."""
    parents: set[Path] = {top}
    for root in roots:
        parents.update(p for p in under(top, root).parents if p.is_relative_to(top))
    for directory in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    return os.path.lexists(top)


def _remove_if_empty(record: RestoreRecord, aside: Path, incoming: Path) -> None:
    """After a failure before the swap: the directories this run made, if still empty."""
    for made in (aside, incoming):
        with contextlib.suppress(OSError):
            made.rmdir()
    if not incoming.exists():
        record.incoming = None


def _present(incoming: Path, roots: Sequence[str]) -> list[str]:
    """The roots the restore brought back (a path missing at backup time is not there)."""
    return [root for root in roots if os.path.lexists(under(incoming, root))]


async def _in_place(
    settings: SvcSettings,
    repo: Repo,
    restic: r.Restic,
    record: RestoreRecord,
    roots: Sequence[str],
    *,
    systemd: bool | None,
    stop: StopRequest | None,
    progress: ProgressCallback,
    on_swap_start: Callable[[], None] | None,
    clock: Callable[[], float],
) -> None:
    from homeops.services import units

    assert record.snapshot is not None
    chosen = record.snapshot
    aside_root = settings.restore.aside_dir / record.service
    # Checked before anything is made: a refusal changes nothing.
    _check_in_place(aside_root, roots)
    others = [root for root in roots if record.paths[root][0] == "other"]
    if others:
        raise UsageError(
            f"snapshot {chosen.short_id} holds {', '.join(others)}, which is not one of "
            f"{record.service}'s backup.paths or volumes now: svc will not put it in place; "
            "restore into staging (without --in-place) and copy by hand"
        )
    try:
        aside_root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot make {aside_root} (restore.aside_dir): {exc.strerror or exc}"
        ) from exc
    if settings.services[record.service].compose.enable:
        # Docker must answer before restic spends its time: the service is stopped later.
        await units.containers(settings, record.service)
    stamp = aside_stamp(clock())
    aside = _new_dir(aside_root, stamp)
    incoming = _new_dir(aside_root, aside.name + INCOMING_SUFFIX)
    record.incoming = str(incoming)
    unchanged = "the live data was not touched"
    try:
        progress(0.1, f"restoring snapshot {chosen.short_id} into {incoming}")
        listed = await _restore_and_list(repo, restic, record, incoming, stop, unchanged)
        progress(0.5, "checking the restored files against the snapshot")
        record.check = await asyncio.to_thread(check_tree, listed, incoming, roots)
    except BaseException as exc:
        _remove_if_empty(record, aside, incoming)
        if record.incoming is None or not isinstance(exc, HomeopsError):
            raise
        # What restic wrote before it failed takes room on the aside filesystem: say where.
        note = f"what was restored before it stopped is in {incoming} (remove it)"
        if isinstance(exc, RestoreInterrupted):
            raise RestoreInterrupted(exc.reason, f"{unchanged}; {note}") from exc
        raise RestoreFailed(f"{exc}; {note}", exit_code=exc.exit_code) from exc
    if not record.check.ok:
        _remove_if_empty(record, aside, incoming)
        raise RestoreFailed(
            f"the restored files do not match snapshot {chosen.short_id}: "
            f"{record.check.problem()}; {unchanged}; what was restored is in {incoming}"
        )
    present = _present(incoming, roots)
    for root in roots:
        if root not in present:
            record.skipped.append(root)
            record.warnings.append(
                f"{root} is not in snapshot {chosen.short_id} (it did not exist at backup "
                "time): left as it is"
            )
    if stop is not None and stop.requested:
        _remove_if_empty(record, aside, incoming)
        raise RestoreInterrupted(
            stop.reason or "a stop request", f"{unchanged}; what was restored is in {incoming}"
        )
    record.aside = str(aside)
    use_systemd = units.systemd_wanted(settings) if systemd is None else systemd
    swap = asyncio.ensure_future(
        _swap(settings, record, listed, incoming, aside, present, use_systemd,
              progress, on_swap_start)
    )  # fmt: skip
    cancelled = False
    while not swap.done():
        try:
            # asyncio.wait is cancelled without cancelling the swap it waits for.
            await asyncio.wait({swap})
        except asyncio.CancelledError:
            # Stopped and half moved is the one state never to leave a service in.
            cancelled = True
            _log.warn("cancel", "cancelled while the data is being swapped; finishing first")
    swap.result()  # its failure, if it failed
    if cancelled:
        raise asyncio.CancelledError


async def _swap(
    settings: SvcSettings,
    record: RestoreRecord,
    listing: r.LsListing,
    incoming: Path,
    aside: Path,
    roots: Sequence[str],
    systemd: bool,
    progress: ProgressCallback,
    on_swap_start: Callable[[], None] | None,
) -> None:
    """Stop, move aside, move into place, check, start again (in a finally)."""
    from homeops.services import units

    service = record.service
    paused: Paused | None = None
    errors: list[HomeopsError] = []
    try:
        if settings.services[service].compose.enable:
            progress(0.6, "stopping the service")
            try:
                plan = await units.pause_plan(settings, service, systemd=systemd)
                if plan is not None:
                    record.via = str(plan.via)
                    paused = plan  # started again below, even when stopping fails half-way
                    await units.pause(settings, plan)
            except HomeopsError as exc:
                raise RestoreFailed(
                    f"could not stop {service}: {exc}; the live data was not touched",
                    exit_code=exc.exit_code,
                ) from exc
            record.stopped = paused is not None
        if on_swap_start is not None:
            on_swap_start()
        progress(0.7, f"moving the live data aside to {aside}")
        # On a thread: a copy across mounts may take minutes, and the worker's heartbeat
        # (the job's lease) runs on this loop.
        await asyncio.to_thread(_swap_files, record, incoming, aside, roots)
        progress(0.8, "checking the data in place against the snapshot")
        record.final_check = await asyncio.to_thread(check_tree, listing, None, roots)
        if not record.final_check.ok:
            errors.append(
                RestoreFailed(
                    f"the data in place does not match snapshot "
                    f"{record.snapshot.short_id if record.snapshot else ''}: "
                    f"{record.final_check.problem()}; the old data is kept at {aside}"
                )
            )
    except HomeopsError as exc:
        errors.append(exc)
    finally:
        if paused is not None:
            progress(0.9, "starting the service again")
            try:
                await units.resume(settings, paused)
                record.started_again = True
            except HomeopsError as exc:
                record.started_again = False
                errors.insert(0, RestoreFailed(f"{service} was NOT started again: {exc}"))
        if not _tidy(incoming, roots):
            record.incoming = None  # emptied: everything restored is in place
        if not _tidy(aside, roots):
            record.aside = None  # there was no live data to move aside
    if errors:
        message = "; ".join(str(e) for e in errors)
        if record.aside and str(aside) not in message:
            kept = "the old data" if record.moved else "a copy of the live data made on the way"
            message += f"; {kept} is kept at {aside}"
        if not record.moved and record.incoming:
            message += f"; what was restored is in {record.incoming}"
        raise RestoreFailed(message, exit_code=errors[0].exit_code)


# -- the job type -----------------------------------------------------------------------------


def _snapshot_arg(value: str) -> str:
    if value != "latest" and not is_snapshot_id(value):
        raise ValueError("'latest' or a hex snapshot id (4 to 64 digits)")
    return value


class RestorePayload(BaseModel):
    """``services.restore``: restore one service from one repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: Literal["local", "remote"] = Field(description="Repository: local or remote")
    service: Annotated[str, AfterValidator(check_service_name)] = Field(
        description="The service (its name in services.json)"
    )
    snapshot: Annotated[str, AfterValidator(_snapshot_arg)] = Field(
        default="latest", description="'latest' (the service's newest) or a snapshot id"
    )
    target: AbsolutePath | None = Field(
        default=None, description="Restore into this empty directory (default: staging_dir)"
    )
    in_place: bool = Field(default=False, description="Replace the live data (needs yes)")
    yes: bool = Field(default=False, description="Confirms in_place")
    no_systemd: bool = Field(default=False, description="Stop/start through compose directly")
    retry_lock_s: float | None = Field(
        default=None, ge=1, le=86400, description="Wait this long for a locked repository"
    )

    @model_validator(mode="after")
    def _confirmed(self) -> RestorePayload:
        if self.in_place and not self.yes:
            raise ValueError(NOT_CONFIRMED)
        if self.in_place and self.target is not None:
            raise ValueError("target is for a restore into staging, not in_place")
        return self


@dataclass
class RestoreWatch:
    """How ``svc restore`` follows the job it runs in its own process: its stop request,
    a progress display, the record and error by job id (a daemon worker's: empty)."""

    stop: StopRequest | None = None
    on_progress: Callable[[str, float | None, str], None] | None = None
    records: dict[str, RestoreRecord] = field(default_factory=dict)
    errors: dict[str, HomeopsError] = field(default_factory=dict)


def _json_bytes(data: Any) -> bytes:  # noqa: ANN401 - a JSON document
    import json

    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


async def _keep_artifacts(ctx: JobContext, record: RestoreRecord) -> None:
    files = {"restore/summary.json": _json_bytes(record.result())}
    if record.diffs:
        files["restore/diff.json"] = _json_bytes([d.as_json(None) for d in record.diffs])
    restic = {"restic/restore.txt": record.restic_output.encode() + b"\n"}
    try:
        await ctx.artifacts.write_files(files, type="summary")
        if record.restic_output:
            await ctx.artifacts.write_files(restic, type="restic")
    except (HomeopsError, OSError) as exc:
        ctx.log.warn("artifacts", "could not keep the restore's summary", err=exc)


def _restore_handler(
    settings: SvcSettings, watch: RestoreWatch, lock_dir: Path | None
) -> Callable[[JobContext, RestorePayload], Awaitable[dict[str, Any]]]:
    async def run_restore_job(ctx: JobContext, payload: RestorePayload) -> dict[str, Any]:
        from homeops.services import units
        from homeops.services.repo import Repo

        mode = RestoreMode.IN_PLACE if payload.in_place else RestoreMode.STAGING
        record = RestoreRecord(payload.repo, payload.service, mode)
        watch.records[ctx.job.id] = record
        repo = Repo.of(settings, payload.repo, retry_lock_s=payload.retry_lock_s)

        def progress(fraction: float | None, message: str) -> None:
            ctx.progress(fraction, message)
            if watch.on_progress is not None:
                watch.on_progress(payload.service, fraction, message)

        def swap_starts() -> None:
            # From here a second run would move the restored data aside as "live" data.
            ctx.mark_unrepeatable("restore started moving data")

        try:
            await run_restore(
                settings,
                repo,
                payload.service,
                snapshot=payload.snapshot,
                target=payload.target,
                in_place=payload.in_place,
                yes=payload.yes,
                systemd=units.systemd_wanted(settings, no_systemd=payload.no_systemd),
                record=record,
                stop=watch.stop,
                on_progress=progress,
                on_swap_start=swap_starts,
                lock_dir=lock_dir,
            )
        except HomeopsError as exc:
            watch.errors[ctx.job.id] = exc
            raise
        finally:
            await _keep_artifacts(ctx, record)
        return record.result()

    return run_restore_job


def cleanup_s() -> float:
    """How long a stopped restore may take to finish: while the data is being swapped it
    goes on, and stopping and starting the service each take up to ACTION_TIMEOUT_S."""
    from homeops.services.units import ACTION_TIMEOUT_S

    return 3 * ACTION_TIMEOUT_S + 600


def restore_job_type(
    settings: SvcSettings, watch: RestoreWatch | None = None, *, lock_dir: Path | None = None
) -> JobType[Any]:
    """``services.restore`` on ``settings`` (``watch``: see :class:`RestoreWatch`;
    ``lock_dir``: where the one-restore-per-service locks live, the state dir)."""
    from homeops.core.jobs.types import JobType

    return JobType(
        RESTORE,
        RestorePayload,
        _restore_handler(settings, watch or RestoreWatch(), lock_dir),
        retryable=False,
        description="Restore one service from one repository (svc restore)",
        unwind_s=cleanup_s(),
    )
