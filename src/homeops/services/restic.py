"""restic (CONTRACTS.md §5) as pure argv builders and parsers.

Debian's 0.14 runs here; NixOS ships 0.17+. What differs between them is decided in one place
each: exit codes 10/11 exist from 0.17 and 12 from 0.17.1 (0.14 says the same things as exit 1
plus a message), ``--retry-lock`` from 0.16, a ``backup --json`` error is a marshalled Go error
in 0.14 and ``{"message": ...}`` from 0.17, and 0.18 ends a failed ``--json`` run with an
``exit_error`` line on stderr. The repository and the password file travel in the environment
(:func:`restic_env`), never on argv.

No I/O here: the flows run what these build through the process seam and hand the output back.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, NamedTuple, TypeAlias, assert_never

from homeops.core.errors import (
    DependencyUnavailable,
    HomeopsError,
    OperationalError,
    UsageError,
)

PROGRAM: Final = "restic"

# restic's documented exit codes (doc/075_scripting.rst); 10-12 only from the versions below.
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_PARTIAL: Final = 3
EXIT_NO_REPOSITORY: Final = 10
EXIT_LOCKED: Final = 11
EXIT_WRONG_PASSWORD: Final = 12
EXIT_INTERRUPTED: Final = 130
# 128 + SIGTERM: what a shell wrapper reports for a restic killed by SIGTERM.
_EXIT_SHELL_SIGTERM: Final = 143

_DETAIL_CHARS: Final = 200
_SHOWN_PATHS: Final = 3


class ResticVersion(NamedTuple):
    """``restic version`` as a comparable tuple."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


V0_16: Final = ResticVersion(0, 16, 0)  # global --retry-lock
V0_17: Final = ResticVersion(0, 17, 0)  # exit 10 (no repository), 11 (locked)
V0_17_1: Final = ResticVersion(0, 17, 1)  # exit 12 (wrong password)

_VERSION = re.compile(r"\brestic (\d+)\.(\d+)\.(\d+)")


def parse_version(output: str) -> ResticVersion:
    """The version in ``restic version`` output (``restic 0.14.0 compiled with go1.19.8 ...``)."""
    found = _VERSION.search(output)
    if found is None:
        raise OperationalError(f"restic version: unexpected output: {_one_line(output)!r}")
    major, minor, patch = (int(part) for part in found.groups())
    return ResticVersion(major, minor, patch)


# -- argv -----------------------------------------------------------------------------------

_TAG = re.compile(r"^[^\s,]+$")  # restic reads "a,b" as two tags that must both match
_OPTION = re.compile(r"^[A-Za-z0-9_.-]+=")
_SNAPSHOT_ID = re.compile(r"^(?:latest|[0-9a-f]{4,64})$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_SUBSET = re.compile(r"^(?:\d+(?:\.\d+)?%|\d+/\d+|\d+[kKmMgGtT])$")
# restic check's own limits (cmd_check.go): t of n/t at most 256; a size fits an int64.
_SUBSET_BUCKETS_MAX: Final = 256
_SIZE_UNITS: Final = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SFTP_UNSAFE = re.compile(r"[\"'\\]")


@dataclass(frozen=True)
class Restic:
    """How restic is run: the program, its detected version and global options.

    ``retry_lock_s`` becomes ``--retry-lock`` only for a known version ≥ 0.16 (older ones
    reject the flag); otherwise the flow retries a ``locked`` run itself.
    ``options`` are extended options (``-o key=value``), e.g. :func:`sftp_command_option`.
    """

    program: str = PROGRAM
    version: ResticVersion | None = None
    retry_lock_s: int | None = None
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.retry_lock_s is not None and (
            isinstance(self.retry_lock_s, bool) or self.retry_lock_s < 1
        ):
            raise UsageError(f"--retry-lock: must be ≥ 1 second, got {self.retry_lock_s!r}")
        for option in self.options:
            if not _OPTION.match(option):
                raise UsageError(f"restic option must be key=value, got {option!r}")

    @property
    def native_retry_lock(self) -> bool:
        """Whether restic itself retries a locked repository (``--retry-lock``)."""
        return self.retry_lock_s is not None and self.version is not None and self.version >= V0_16

    def argv(self, command: str, *args: str) -> list[str]:
        """``restic [global options] COMMAND ARGS...``."""
        head = [self.program]
        for option in self.options:
            head += ["-o", option]
        if self.native_retry_lock:
            head.append(f"--retry-lock={self.retry_lock_s}s")
        return [*head, command, *args]


def sftp_command_option(ssh_argv: Sequence[str]) -> str:
    """``sftp.command=...`` running ``ssh_argv`` (which must end in ``-s sftp``).

    restic splits the value itself (quotes group, no escapes inside them), so an argument
    with a space is double-quoted and one with a quote or backslash is refused.
    """
    if not ssh_argv:
        raise UsageError("sftp.command: the ssh command is empty")
    words = []
    for arg in ssh_argv:
        if not arg or _SFTP_UNSAFE.search(arg):
            raise UsageError(f"sftp.command: cannot pass {arg!r} through restic's splitter")
        words.append(f'"{arg}"' if any(c.isspace() for c in arg) else arg)
    return "sftp.command=" + " ".join(words)


def _tag(tag: str, what: str) -> str:
    if not _TAG.match(tag):
        raise UsageError(
            f"{what}: a restic tag must be non-empty, without commas or spaces: {tag!r}"
        )
    return tag


def service_tags(service: str, tags: Iterable[str] = ()) -> tuple[str, ...]:
    """The tags a service's snapshots carry: its name first, then its own tags, once each."""
    out = [_tag(service, "service name")]
    for tag in tags:
        if _tag(tag, f"{service}: backup.tags") not in out:
            out.append(tag)
    return tuple(out)


def _snapshot_id(snapshot: str) -> str:
    if not _SNAPSHOT_ID.match(snapshot):
        raise UsageError(f"snapshot: expected 'latest' or a hex snapshot id, got {snapshot!r}")
    return snapshot


def _absolute(path: str | os.PathLike[str], what: str) -> str:
    text = os.fspath(path)
    # restic stores paths as given; a relative one would depend on the working directory.
    if not text.startswith("/"):
        raise UsageError(f"{what} must be an absolute path, got {text!r}")
    return text


def _filters(tag: str | None, host: str | None) -> list[str]:
    args = []
    if tag is not None:
        args.append(f"--tag={_tag(tag, 'tag filter')}")
    if host is not None:
        args.append(f"--host={_host(host)}")
    return args


def _host(host: str) -> str:
    if not _HOST.match(host):
        raise UsageError(f"host: not a host name: {host!r}")
    return host


def version_argv(restic: Restic) -> list[str]:
    """``restic version``."""
    return [restic.program, "version"]


def init_argv(restic: Restic) -> list[str]:
    """``restic init`` (text output on 0.14; :func:`parse_init` reads both forms)."""
    return restic.argv("init")


def cat_config_argv(restic: Restic) -> list[str]:
    """``restic cat config``: the cheap "is there a repository" probe restic documents."""
    return restic.argv("cat", "config")


def backup_argv(
    restic: Restic,
    paths: Sequence[str | os.PathLike[str]],
    *,
    service: str,
    tags: Iterable[str] = (),
    excludes: Iterable[str] = (),
    host: str | None = None,
    time: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """``restic backup --json`` of ``paths``, tagged with the service name and ``tags``.

    ``time`` is restic's ``--time`` (``YYYY-MM-DD HH:MM:SS`` in restic's local time zone).
    The paths follow ``--`` so none can be read as a flag.
    """
    seen: list[str] = []
    for path in paths:
        text = _absolute(path, f"{service}: backup path")
        if text not in seen:
            seen.append(text)
    if not seen:
        raise UsageError(f"{service}: nothing to back up (no paths and no volumes)")
    args = ["--json", *(f"--tag={tag}" for tag in service_tags(service, tags))]
    for pattern in excludes:
        if not pattern.strip():
            raise UsageError(f"{service}: backup.exclude has an empty pattern")
        args.append(f"--exclude={pattern}")
    if host is not None:
        args.append(f"--host={_host(host)}")
    if time is not None:
        if not _TIME.match(time):
            raise UsageError(f"backup time must be 'YYYY-MM-DD HH:MM:SS', got {time!r}")
        args.append(f"--time={time}")
    if dry_run:
        args.append("--dry-run")
    return restic.argv("backup", *args, "--", *seen)


def snapshots_argv(
    restic: Restic, *, tag: str | None = None, host: str | None = None, latest: int | None = None
) -> list[str]:
    """``restic snapshots --json``, only those carrying ``tag`` (the service tag) if given."""
    args = ["--json", *_filters(tag, host)]
    if latest is not None:
        if isinstance(latest, bool) or latest < 1:
            raise UsageError(f"--latest: must be ≥ 1, got {latest!r}")
        args.append(f"--latest={latest}")
    return restic.argv("snapshots", *args)


@dataclass(frozen=True)
class KeepPolicy:
    """A service's retention (the seed's ``policy {daily, weekly, monthly}``); 0 = not used."""

    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        for name in ("daily", "weekly", "monthly"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"policy.{name}: must be an integer ≥ 0, got {value!r}")

    @property
    def empty(self) -> bool:
        """No rule at all: restic would keep every snapshot, so there is nothing to run."""
        return self.daily == self.weekly == self.monthly == 0

    def args(self) -> list[str]:
        """The ``--keep-*`` flags of the rules in use."""
        rules = (("daily", self.daily), ("weekly", self.weekly), ("monthly", self.monthly))
        return [f"--keep-{name}={count}" for name, count in rules if count > 0]


def forget_argv(
    restic: Restic, *, tag: str, policy: KeepPolicy, prune: bool = True, dry_run: bool = False
) -> list[str]:
    """``restic forget --json [--prune] --tag=SVC --group-by=tags --keep-...`` for a service.

    Grouping by tags keeps the policy per tag set, so another service's snapshots never count
    towards this one's.
    """
    if policy.empty:
        raise UsageError(
            f"{tag}: the retention policy keeps nothing; set policy.daily/weekly/monthly"
        )
    args = ["--json"]
    if prune:
        args.append("--prune")
    args += [f"--tag={_tag(tag, 'forget tag')}", "--group-by=tags", *policy.args()]
    if dry_run:
        args.append("--dry-run")
    return restic.argv("forget", *args)


def check_argv(restic: Restic, *, read_data_subset: str | None = None) -> list[str]:
    """``restic check [--read-data-subset=N%|n/t|SIZE]``."""
    args = []
    if read_data_subset is not None:
        subset = read_data_subset.strip()
        if not _SUBSET.match(subset) or not _subset_in_range(subset):
            raise UsageError(
                "--read-data-subset: expected a percentage in (0, 100] ('2.5%'), n/t with "
                f"1 <= n <= t <= {_SUBSET_BUCKETS_MAX} ('1/5') or a size with its unit "
                f"('500M'), got {read_data_subset!r}"
            )
        args.append(f"--read-data-subset={subset}")
    return restic.argv("check", *args)


def _subset_in_range(subset: str) -> bool:
    """What restic itself would accept of a well-formed subset (it refuses the rest only
    after opening the repository, as an operational failure)."""
    if subset.endswith("%"):
        return 0 < float(subset[:-1]) <= 100
    if "/" in subset:
        n, t = (int(part) for part in subset.split("/"))
        return 1 <= n <= t <= _SUBSET_BUCKETS_MAX
    size = int(subset[:-1]) * _SIZE_UNITS[subset[-1].lower()]
    return 0 < size < 1 << 63


def restore_argv(
    restic: Restic,
    snapshot: str,
    target: str | os.PathLike[str],
    *,
    tag: str | None = None,
    host: str | None = None,
    includes: Iterable[str] = (),
    verify: bool = False,
) -> list[str]:
    """``restic restore SNAPSHOT --target=DIR``; restic recreates the original absolute paths
    under DIR. ``tag``/``host`` pick what ``latest`` means."""
    args = [_snapshot_id(snapshot), f"--target={_absolute(target, 'restore target')}"]
    args += _filters(tag, host)
    for pattern in includes:
        if not pattern.strip():
            raise UsageError("restore: an empty --include pattern")
        args.append(f"--include={pattern}")
    if verify:
        args.append("--verify")
    return restic.argv("restore", *args)


def ls_argv(
    restic: Restic, snapshot: str, *, tag: str | None = None, host: str | None = None
) -> list[str]:
    """``restic ls --json SNAPSHOT``: the file list a restore is verified against."""
    return restic.argv("ls", "--json", *_filters(tag, host), _snapshot_id(snapshot))


def unlock_argv(restic: Restic, *, remove_all: bool = False) -> list[str]:
    """``restic unlock``: removes stale locks (those of dead processes on this host, or older
    than 30 minutes); ``remove_all`` removes every lock, including live ones."""
    return restic.argv("unlock", *(["--remove-all"] if remove_all else []))


# Every way restic can be handed a repository or a password: an inherited one must not
# override (or, for RESTIC_PASSWORD_COMMAND, conflict with) the configured repository's.
_CREDENTIAL_VARS: Final = (
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
)


def restic_env(
    base: Mapping[str, str],
    *,
    password_file: str | os.PathLike[str],
    repository: str | None = None,
    repository_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """``base`` with exactly this repository and password file (never a password itself).

    Give ``repository`` or ``repository_file``, not both. ``cache_dir`` matters under a
    systemd ``DynamicUser``, which has no usable home for restic's default cache.
    """
    if (repository is None) == (repository_file is None):
        raise UsageError("restic: give exactly one of repository and repository_file")
    env = {key: value for key, value in base.items() if key not in _CREDENTIAL_VARS}
    if repository is not None:
        if not repository.strip():
            raise UsageError("restic: the repository location is empty")
        env["RESTIC_REPOSITORY"] = repository
    if repository_file is not None:
        env["RESTIC_REPOSITORY_FILE"] = os.fspath(repository_file)
    password = os.fspath(password_file)
    if not password.strip():
        raise UsageError("restic: the password file path is empty")
    env["RESTIC_PASSWORD_FILE"] = password
    if cache_dir is not None:
        env["RESTIC_CACHE_DIR"] = os.fspath(cache_dir)
    return env


# -- JSON helpers (restic omits zero values, and fields come and go between versions) -------


def _int(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _count(data: Mapping[str, object], key: str) -> int:
    value = _int(data, key)
    return value if value is not None and value >= 0 else 0


def _float(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _strs(data: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _time(data: Mapping[str, object], key: str) -> datetime | None:
    text = _str(data, key)
    if text is None:
        return None
    try:
        # Go writes RFC 3339 with up to nanoseconds; 3.11's parser keeps microseconds.
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _object(value: object) -> dict[str, object] | None:
    return value if isinstance(value, dict) else None


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean(line: str) -> str:
    # restic clears the progress line before a warning ("\x1b[2K...") and may use "\r".
    return _ANSI.sub("", line).replace("\r", "").strip()


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 3] + "..."


# -- backup --json --------------------------------------------------------------------------

# Beyond ~30 years an ETA is restic's "unknown" (it prints 2**63 when nothing is done yet).
_ETA_UNKNOWN: Final = 10**9


@dataclass(frozen=True)
class BackupStatus:
    """A ``status`` progress line."""

    percent_done: float = 0.0
    total_files: int = 0
    files_done: int = 0
    total_bytes: int = 0
    bytes_done: int = 0
    error_count: int = 0
    seconds_elapsed: int = 0
    seconds_remaining: int | None = None
    current_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackupSummary:
    """The ``summary`` line. ``snapshot_id`` is the short id on 0.14, the full one from 0.17,
    and absent when no snapshot was written (``--dry-run``, 0.17's skip-if-unchanged)."""

    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0
    data_added_packed: int | None = None
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    total_duration: float = 0.0
    snapshot_id: str | None = None
    dry_run: bool = False
    backup_start: datetime | None = None
    backup_end: datetime | None = None


@dataclass(frozen=True)
class BackupError:
    """An ``error`` line: a file restic could not read (``item``) and why."""

    item: str
    during: str
    message: str


@dataclass(frozen=True)
class VerboseStatus:
    """A ``verbose_status`` line (``--verbose``): what happened to one item."""

    action: str
    item: str
    duration: float = 0.0
    data_size: int = 0
    data_size_in_repo: int = 0
    metadata_size: int = 0
    metadata_size_in_repo: int = 0
    total_files: int = 0


@dataclass(frozen=True)
class ExitError:
    """0.18+'s last stderr line of a failed ``--json`` run."""

    code: int | None
    message: str


@dataclass(frozen=True)
class TextLine:
    """A plain-text line between the JSON ones (warnings such as ``X does not exist, skipping``)."""

    text: str


BackupEvent: TypeAlias = (
    BackupStatus | BackupSummary | BackupError | VerboseStatus | ExitError | TextLine
)


def _go_error(value: object) -> str:
    # 0.17+: {"message": "..."}. 0.14 marshals the Go error value itself: an *os.PathError is
    # {"Op", "Path", "Err": errno}, anything else is {}.
    if isinstance(value, str):
        return value
    data = _object(value)
    if data is None:
        return ""
    message = _str(data, "message")
    if message is not None:
        return message
    op, path, errno = _str(data, "Op"), _str(data, "Path"), _int(data, "Err")
    reason = os.strerror(errno).lower() if errno is not None else ""
    return ": ".join(part for part in (f"{op or ''} {path or ''}".strip(), reason) if part)


def _event(data: dict[str, object], line: str) -> BackupEvent | None:
    match data.get("message_type"):
        case "status":
            remaining = _int(data, "seconds_remaining")
            return BackupStatus(
                percent_done=_float(data, "percent_done"),
                total_files=_count(data, "total_files"),
                files_done=_count(data, "files_done"),
                total_bytes=_count(data, "total_bytes"),
                bytes_done=_count(data, "bytes_done"),
                error_count=_count(data, "error_count"),
                seconds_elapsed=_count(data, "seconds_elapsed"),
                seconds_remaining=(
                    remaining if remaining is not None and 0 < remaining < _ETA_UNKNOWN else None
                ),
                current_files=_strs(data, "current_files"),
            )
        case "summary":
            return BackupSummary(
                files_new=_count(data, "files_new"),
                files_changed=_count(data, "files_changed"),
                files_unmodified=_count(data, "files_unmodified"),
                dirs_new=_count(data, "dirs_new"),
                dirs_changed=_count(data, "dirs_changed"),
                dirs_unmodified=_count(data, "dirs_unmodified"),
                data_blobs=_count(data, "data_blobs"),
                tree_blobs=_count(data, "tree_blobs"),
                data_added=_count(data, "data_added"),
                data_added_packed=_int(data, "data_added_packed"),
                total_files_processed=_count(data, "total_files_processed"),
                total_bytes_processed=_count(data, "total_bytes_processed"),
                total_duration=_float(data, "total_duration"),
                snapshot_id=_str(data, "snapshot_id"),
                dry_run=data.get("dry_run") is True,
                backup_start=_time(data, "backup_start"),
                backup_end=_time(data, "backup_end"),
            )
        case "error":
            error = data.get("error")
            item = _str(data, "item") or ""
            return BackupError(item, _str(data, "during") or "", _go_error(error) or "unreadable")
        case "verbose_status":
            return VerboseStatus(
                action=_str(data, "action") or "",
                item=_str(data, "item") or "",
                duration=_float(data, "duration"),
                data_size=_count(data, "data_size"),
                data_size_in_repo=_count(data, "data_size_in_repo"),
                metadata_size=_count(data, "metadata_size"),
                metadata_size_in_repo=_count(data, "metadata_size_in_repo"),
                total_files=_count(data, "total_files"),
            )
        case "exit_error":
            return ExitError(_int(data, "code"), _str(data, "message") or "")
        case None:
            return TextLine(line)
        case _:
            # restic may add message types at any time; an unknown one is not an error.
            return None


def parse_backup_line(line: str) -> BackupEvent | None:
    """One line of ``backup --json`` stdout or stderr; None for blank lines and unknown
    message types. Anything that is not a JSON object is a :class:`TextLine`."""
    text = _clean(line)
    if not text:
        return None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return TextLine(text)
        obj = _object(data)
        if obj is not None:
            return _event(obj, text)
    return TextLine(text)


_MISSING_SOURCE = re.compile(r"^(?P<path>.+) does not exist, skipping$")
# Text mode (no --json): "error: open /x: permission denied", "error: Open: open /d: ...".
_TEXT_ERROR = re.compile(
    r"^error: (?:[A-Za-z]+: )?(?:open|read|lstat|stat|readlink|readdirnames) "
    r"(?P<path>/.+?): (?P<reason>[^:]+)$"
)
_WARNING_UNREADABLE = "Warning: at least one source file could not be read"


@dataclass(frozen=True)
class BackupReport:
    """What one ``backup --json`` run said, across stdout and stderr.

    ``unreadable`` and ``missing_sources`` are paths in first-seen order, each once.
    """

    summary: BackupSummary | None
    last_status: BackupStatus | None
    errors: tuple[BackupError, ...]
    unreadable: tuple[str, ...]
    missing_sources: tuple[str, ...]
    warnings: tuple[str, ...]
    exit_error: ExitError | None


def parse_backup_events(events: Iterable[BackupEvent | None]) -> BackupReport:
    """Fold parsed lines (as they streamed in) into a :class:`BackupReport`."""
    summary: BackupSummary | None = None
    status: BackupStatus | None = None
    exit_error: ExitError | None = None
    errors: list[BackupError] = []
    unreadable: list[str] = []
    missing: list[str] = []
    warnings: list[str] = []
    for event in events:
        match event:
            case None | VerboseStatus():
                pass
            case BackupStatus():
                status = event
            case BackupSummary():
                summary = event
            case BackupError():
                errors.append(event)
                if event.item and event.item not in unreadable:
                    unreadable.append(event.item)
            case ExitError():
                exit_error = event
            case TextLine(text):
                gone = _MISSING_SOURCE.match(text)
                failed = _TEXT_ERROR.match(text)
                if gone is not None:
                    if gone.group("path") not in missing:
                        missing.append(gone.group("path"))
                elif failed is not None:
                    path = failed.group("path")
                    errors.append(BackupError(path, "", failed.group("reason")))
                    if path not in unreadable:
                        unreadable.append(path)
                if text != _WARNING_UNREADABLE:
                    warnings.append(text)
            case _:
                assert_never(event)
    return BackupReport(
        summary,
        status,
        tuple(errors),
        tuple(unreadable),
        tuple(missing),
        tuple(warnings),
        exit_error,
    )


def parse_backup_output(stdout: str, stderr: str = "") -> BackupReport:
    """A finished ``backup --json`` run's output (errors are on stderr in every version)."""
    lines = [*stdout.splitlines(), *stderr.splitlines()]
    return parse_backup_events(parse_backup_line(line) for line in lines)


# -- snapshots / forget / ls / init / restore -----------------------------------------------


@dataclass(frozen=True)
class SnapshotSummary:
    """The statistics 0.17+ stores in each snapshot (absent on 0.14's)."""

    total_files_processed: int = 0
    total_bytes_processed: int = 0
    data_added: int = 0
    data_added_packed: int | None = None
    backup_start: datetime | None = None
    backup_end: datetime | None = None


@dataclass(frozen=True)
class Snapshot:
    """One snapshot as ``snapshots --json``, ``forget --json`` and ``ls --json`` show it."""

    id: str
    short_id: str
    time: datetime
    paths: tuple[str, ...] = ()
    hostname: str = ""
    username: str = ""
    tags: tuple[str, ...] = ()
    parent: str | None = None
    tree: str | None = None
    excludes: tuple[str, ...] = ()
    program_version: str | None = None
    summary: SnapshotSummary | None = None


def _snapshot(data: Mapping[str, object]) -> Snapshot | None:
    snapshot_id, when = _str(data, "id"), _time(data, "time")
    if snapshot_id is None or when is None:
        return None
    raw_summary = _object(data.get("summary"))
    summary = None
    if raw_summary is not None:
        summary = SnapshotSummary(
            total_files_processed=_count(raw_summary, "total_files_processed"),
            total_bytes_processed=_count(raw_summary, "total_bytes_processed"),
            data_added=_count(raw_summary, "data_added"),
            data_added_packed=_int(raw_summary, "data_added_packed"),
            backup_start=_time(raw_summary, "backup_start"),
            backup_end=_time(raw_summary, "backup_end"),
        )
    return Snapshot(
        id=snapshot_id,
        short_id=_str(data, "short_id") or snapshot_id[:8],
        time=when,
        paths=_strs(data, "paths"),
        hostname=_str(data, "hostname") or "",
        username=_str(data, "username") or "",
        tags=_strs(data, "tags"),
        parent=_str(data, "parent"),
        tree=_str(data, "tree"),
        excludes=_strs(data, "excludes"),
        program_version=_str(data, "program_version"),
        summary=summary,
    )


def _snapshots(value: object) -> tuple[Snapshot, ...]:
    if not isinstance(value, list):
        return ()
    found = (_snapshot(item) for item in value if isinstance(item, dict))
    return tuple(s for s in found if s is not None)


def _leading_json(stdout: str, what: str) -> tuple[object, str]:
    """The JSON document at the start of ``stdout`` and the text after it.

    ``forget --json --prune`` prints the forget JSON, then prune's plain text.
    """
    text = stdout.lstrip()
    if not text:
        return None, ""
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        raise OperationalError(f"{what}: output is not JSON: {_one_line(text)!r}") from None
    return value, text[end:].strip()


def parse_snapshots(stdout: str) -> tuple[Snapshot, ...]:
    """``snapshots --json``, oldest first (entries without an id or a time are skipped)."""
    value, _ = _leading_json(stdout, "restic snapshots")
    if value is not None and not isinstance(value, list):
        raise OperationalError("restic snapshots: expected a JSON array")
    return tuple(sorted(_snapshots(value), key=lambda s: s.time))


@dataclass(frozen=True)
class KeepReason:
    """Why ``forget`` kept a snapshot (0.14's reasons name it by time only)."""

    time: datetime | None
    snapshot_id: str | None
    matches: tuple[str, ...]


@dataclass(frozen=True)
class ForgetGroup:
    """One group ``forget`` applied the policy to."""

    tags: tuple[str, ...]
    host: str
    paths: tuple[str, ...]
    keep: tuple[Snapshot, ...]
    remove: tuple[Snapshot, ...]
    reasons: tuple[KeepReason, ...]


@dataclass(frozen=True)
class ForgetResult:
    """``forget --json``: its groups, and prune's text when ``--prune`` ran."""

    groups: tuple[ForgetGroup, ...]
    prune_output: str = ""

    @property
    def kept(self) -> tuple[Snapshot, ...]:
        """Every kept snapshot, across groups."""
        return tuple(s for group in self.groups for s in group.keep)

    @property
    def removed(self) -> tuple[Snapshot, ...]:
        """Every removed snapshot, across groups."""
        return tuple(s for group in self.groups for s in group.remove)


def parse_forget(stdout: str) -> ForgetResult:
    """``forget --json [--prune]``. Empty output (0.14 when no snapshot matched) is no groups."""
    value, rest = _leading_json(stdout, "restic forget")
    if value is not None and not isinstance(value, list):
        raise OperationalError("restic forget: expected a JSON array of groups")
    groups = []
    for item in _list(value):
        data = _object(item)
        if data is None:
            continue
        reasons = []
        for raw in _list(data.get("reasons")):
            reason = _object(raw)
            if reason is None:
                continue
            snap = _object(reason.get("snapshot")) or {}
            reasons.append(
                KeepReason(_time(snap, "time"), _str(snap, "id"), _strs(reason, "matches"))
            )
        groups.append(
            ForgetGroup(
                tags=_strs(data, "tags"),
                host=_str(data, "host") or "",
                paths=_strs(data, "paths"),
                keep=_snapshots(data.get("keep")),
                remove=_snapshots(data.get("remove")),
                reasons=tuple(reasons),
            )
        )
    return ForgetResult(tuple(groups), rest)


@dataclass(frozen=True)
class LsNode:
    """One entry of ``ls --json``."""

    path: str
    name: str
    type: str
    size: int = 0
    mode: int | None = None
    mtime: datetime | None = None


@dataclass(frozen=True)
class LsListing:
    """``ls --json SNAPSHOT``: the snapshot line, then its nodes."""

    snapshot: Snapshot | None
    nodes: tuple[LsNode, ...]

    @property
    def files(self) -> tuple[LsNode, ...]:
        """The regular files."""
        return tuple(node for node in self.nodes if node.type == "file")

    @property
    def file_count(self) -> int:
        """How many regular files the snapshot holds."""
        return len(self.files)

    @property
    def file_bytes(self) -> int:
        """The regular files' total size."""
        return sum(node.size for node in self.files)


def parse_ls(stdout: str) -> LsListing:
    """``ls --json`` lines (``struct_type`` on 0.14, ``message_type`` too from 0.17)."""
    snapshot: Snapshot | None = None
    nodes = []
    for line in stdout.splitlines():
        text = line.strip()
        if not text.startswith("{"):
            continue
        try:
            data = _object(json.loads(text))
        except ValueError:
            continue
        if data is None:
            continue
        kind = data.get("message_type") or data.get("struct_type")
        if kind == "snapshot":
            snapshot = _snapshot(data)
        elif kind == "node":
            path = _str(data, "path")
            if path is None:
                continue
            nodes.append(
                LsNode(
                    path=path,
                    name=_str(data, "name") or path.rsplit("/", 1)[-1],
                    type=_str(data, "type") or "",
                    size=_count(data, "size"),
                    mode=_int(data, "mode"),
                    mtime=_time(data, "mtime"),
                )
            )
    return LsListing(snapshot, tuple(nodes))


@dataclass(frozen=True)
class RestoreCheck:
    """A restored tree compared with the snapshot's listing (regular files only)."""

    expected_files: int
    expected_bytes: int
    missing: tuple[str, ...]
    wrong_size: tuple[tuple[str, int, int], ...]  # (path, in snapshot, on disk)

    @property
    def ok(self) -> bool:
        """Every expected file is there with its size."""
        return not self.missing and not self.wrong_size


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return not prefixes or any(
        path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes
    )


def verify_restore(
    listing: LsListing, found: Mapping[str, int], *, only: Sequence[str] = ()
) -> RestoreCheck:
    """Compare ``listing`` with ``found`` (original absolute path → size of the restored
    file), limited to paths under ``only`` when a restore used ``--include``."""
    expected = [node for node in listing.files if _under(node.path, only)]
    missing = tuple(node.path for node in expected if node.path not in found)
    wrong = tuple(
        (node.path, node.size, found[node.path])
        for node in expected
        if node.path in found and found[node.path] != node.size
    )
    return RestoreCheck(len(expected), sum(n.size for n in expected), missing, wrong)


_INIT_TEXT = re.compile(r"created restic repository (?P<id>[0-9a-f]+) at (?P<location>.+)")


def parse_init(stdout: str) -> str | None:
    """The new repository's id from ``init`` (0.14's text, or 0.17+'s ``initialized`` JSON)."""
    for line in stdout.splitlines():
        text = line.strip()
        if text.startswith("{"):
            try:
                data = _object(json.loads(text))
            except ValueError:
                continue
            if data is not None and data.get("message_type") == "initialized":
                return _str(data, "id")
        found = _INIT_TEXT.search(text)
        if found is not None:
            return found.group("id")
    return None


_RESTORE_BANNER = re.compile(
    r"^restoring <?[Ss]napshot (?P<id>[0-9a-f]+) of .* to (?P<target>.+)$", re.MULTILINE
)


@dataclass(frozen=True)
class RestoreBanner:
    """``restoring <Snapshot ID of [...] ...> to DIR``: which snapshot ``latest`` was."""

    short_id: str
    target: str


def parse_restore_banner(stdout: str) -> RestoreBanner | None:
    """The snapshot and target ``restore`` names in its text output (0.14 has no JSON)."""
    found = _RESTORE_BANNER.search(stdout)
    if found is None:
        return None
    return RestoreBanner(found.group("id"), found.group("target").strip())


# -- the outcome of a finished run ----------------------------------------------------------


class ResticOutcome(StrEnum):
    """What a finished restic run means to homeops."""

    OK = "ok"
    PARTIAL = "partial"  # snapshot saved, but some sources were unreadable or missing
    REPO_MISSING = "repo_missing"
    REPO_EXISTS = "repo_exists"  # init of an existing repository
    LOCKED = "locked"
    WRONG_PASSWORD = "wrong_password"
    UNREACHABLE = "unreachable"  # the backend (sftp host, ...) could not be opened
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclass(frozen=True)
class ResticVerdict:
    """A classified run: one-line ``message``, a suggested ``fix``, restic's own ``detail``."""

    outcome: ResticOutcome
    exit_code: int
    message: str
    fix: str | None = None
    detail: str | None = None
    unreadable: tuple[str, ...] = ()
    missing_sources: tuple[str, ...] = ()
    lock_holder: str | None = None
    location: str | None = None

    @property
    def succeeded(self) -> bool:
        """The command did its job (a partial backup still saved its snapshot)."""
        return self.outcome in (ResticOutcome.OK, ResticOutcome.PARTIAL)

    def error(self) -> HomeopsError | None:
        """The exception a flow raises for this run, or None when it succeeded."""
        text = f"{self.message} ({self.fix})" if self.fix else self.message
        match self.outcome:
            case ResticOutcome.OK | ResticOutcome.PARTIAL:
                return None
            case ResticOutcome.UNREACHABLE:
                return DependencyUnavailable(text)
            case (
                ResticOutcome.REPO_MISSING
                | ResticOutcome.REPO_EXISTS
                | ResticOutcome.LOCKED
                | ResticOutcome.WRONG_PASSWORD
                | ResticOutcome.INTERRUPTED
                | ResticOutcome.FAILED
            ):
                return OperationalError(text)
            case _:
                assert_never(self.outcome)


_LOCK_HOLDER = re.compile(r"already locked (?P<excl>exclusively )?by (?P<holder>[^\n]+)")
_LOCK_SINCE = re.compile(r"lock was created at (?P<at>[^\n(]+?) \(")
_LOCATION = re.compile(r"Is there a repository at the following location\?\n(?P<loc>[^\n]+)")
# 0.17's backend open: "repository does not exist at sftp:u@h:/r: <why>" (the location has colons).
_LOCATION_17 = re.compile(r"repository does not exist at (?P<loc>\S+): ")
_NOT_EXIST = ("no such file or directory", "does not exist", "not found")


def _paths(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_SHOWN_PATHS])
    more = len(paths) - _SHOWN_PATHS
    return shown + (f" and {more} more" if more > 0 else "")


def _supports(version: ResticVersion | None, needed: ResticVersion) -> bool:
    # Unknown version: trust the code (restic documents that codes only ever get added).
    return version is None or version >= needed


_ERRORS_TOTAL: Final = re.compile(r"^Fatal: There were \d+ errors$")
_IGNORED_ERROR: Final = re.compile(r"^ignoring error for (?P<what>.+?): (?P<err>.+)$")


def _detail(lines: Sequence[str]) -> str | None:
    fatal = [line for line in lines if line.startswith("Fatal:")]
    if fatal and _ERRORS_TOTAL.match(fatal[0]):
        # restore's total says nothing of why: the first error does (no space left ...).
        for line in lines:
            found = _IGNORED_ERROR.match(line)
            if found:
                # Why first (paths are long and a detail is cut at its end), then where.
                why = found.group("err").rsplit(": ", 1)[-1]
                return _one_line(f"{fatal[0]}; the first: {why} ({found.group('what')})")
    chosen = fatal or [line for line in lines if line != _WARNING_UNREADABLE]
    return _one_line(chosen[0]) if chosen else None


def _init_hint(repo: str | None) -> str:
    return f"svc init {repo}" if repo else "svc init <local|remote>"


@dataclass(frozen=True)
class _Explained:
    outcome: ResticOutcome
    message: str
    fix: str | None
    lock_holder: str | None = None
    location: str | None = None


# Backends that reach another host; anything else (a path, ``local:``) is this machine's disk.
_REMOTE_SCHEMES: Final = ("sftp:", "rest:", "s3:", "b2:", "azure:", "gs:", "swift:", "rclone:")
# restic's words when the host behind the repository could not be reached (0.14 and 0.17+,
# sftp and rest); a local repository never says them.
_UNREACHABLE_TEXTS: Final = (
    "unable to start the sftp session",
    "dial tcp",
    "connection refused",
    "no such host",
    "no route to host",
    "network is unreachable",
    "i/o timeout",
)
# Where restic names the repository it could not open or create (0.14 and 0.17).
_OPENED_AT = re.compile(
    r"(?:unable to open repository at|create repository at) (?P<loc>\S+?)(?::\s| failed)"
)


def is_local_location(location: str) -> bool:
    """Whether a repository location is on this machine (a path or ``local:``): such a
    repository can be missing or broken, never unreachable."""
    return not location.strip().lower().startswith(_REMOTE_SCHEMES)


def _local(said: str, location: str | None) -> bool | None:
    if location is not None and location.strip():
        return is_local_location(location)
    found = _OPENED_AT.search(said)
    return is_local_location(found.group("loc")) if found else None


def classify_run(
    exit_code: int,
    stderr: str,
    *,
    version: ResticVersion | None = None,
    repo: str | None = None,
    location: str | None = None,
    named: str | None = None,
) -> ResticVerdict:
    """Classify a finished restic run from its exit code and stderr (where restic writes
    every error, warning and, with ``--json``, its error lines). ``version`` decides whether
    codes 10/11/12 can be restic's own; ``repo`` (``local``/``remote``) goes into the fixes.

    ``location`` is the repository restic was given, when known (also when it came from a
    repository_file): a local one is never ``unreachable``. ``named`` is how to name it
    where restic leaves it out (0.14's ``create repository at  failed`` for a
    repository_file)."""
    if named:
        stderr = stderr.replace("repository at  failed", f"repository at {named} failed")
    report = parse_backup_output("", stderr)
    lines = [
        line
        for line in report.warnings
        if not line.startswith("{") and not _MISSING_SOURCE.match(line)
    ]
    if report.exit_error is not None:
        lines += [_clean(part) for part in report.exit_error.message.splitlines() if part.strip()]
    detail = _detail(lines)
    shown = detail.removeprefix("Fatal: ") if detail else None
    said = "\n".join(lines)
    explained = _explain_code(exit_code, said, shown, version, repo, report)
    if explained.outcome is ResticOutcome.UNREACHABLE and _local(said, location):
        explained = _Explained(
            ResticOutcome.FAILED,
            f"cannot open the repository: {shown or 'no detail'}",
            "a local repository: check that its path is a directory restic can read and write",
        )
    return ResticVerdict(
        outcome=explained.outcome,
        exit_code=exit_code,
        message=_one_line(explained.message),
        fix=explained.fix,
        detail=detail,
        unreadable=report.unreadable,
        missing_sources=report.missing_sources,
        lock_holder=explained.lock_holder,
        location=explained.location,
    )


def _explain_code(
    exit_code: int,
    said: str,
    detail: str | None,
    version: ResticVersion | None,
    repo: str | None,
    report: BackupReport,
) -> _Explained:
    if exit_code in (EXIT_INTERRUPTED, _EXIT_SHELL_SIGTERM, -signal.SIGINT, -signal.SIGTERM):
        # 0.17+ exits 130 for SIGTERM too; only its message tells them apart.
        terminated = exit_code in (-signal.SIGTERM, _EXIT_SHELL_SIGTERM)
        how = "SIGTERM" if terminated or "signal terminated received" in said else "SIGINT"
        return _Explained(
            ResticOutcome.INTERRUPTED,
            f"restic was interrupted ({how}) before it finished",
            # 0.14 has no SIGTERM handler: a terminated run leaves its lock behind.
            "run it again; if it then reports a lock, the interrupted run left it: "
            "run `restic unlock` with this repository's environment",
        )
    if exit_code == EXIT_OK:
        if report.missing_sources:
            return _Explained(
                ResticOutcome.PARTIAL,
                "snapshot saved, but these source paths do not exist: "
                + _paths(report.missing_sources),
                "fix backup.paths/volumes of the service in services.json, or create the paths",
            )
        return _Explained(ResticOutcome.OK, "ok", None)
    if exit_code == EXIT_PARTIAL:
        paths = report.unreadable
        what = f": {_paths(paths)}" if paths else " (restic named none)"
        gone = report.missing_sources
        also = f"; missing: {_paths(gone)}" if gone else ""
        return _Explained(
            ResticOutcome.PARTIAL,
            f"snapshot saved, but {len(paths) or 'some'} source path(s) could not be read"
            f"{what}{also}",
            "make them readable by the user restic runs as, or exclude them (backup.exclude)",
        )
    by_code = {
        EXIT_NO_REPOSITORY: (V0_17, ResticOutcome.REPO_MISSING),
        EXIT_LOCKED: (V0_17, ResticOutcome.LOCKED),
        EXIT_WRONG_PASSWORD: (V0_17_1, ResticOutcome.WRONG_PASSWORD),
    }
    known = by_code.get(exit_code)
    if known is not None and _supports(version, known[0]):
        return _explain(known[1], said, detail, repo)
    if exit_code == EXIT_FAILED:
        return _explain(_outcome_from_text(said), said, detail, repo)
    # restic: "If an unknown exit code is returned, then it MUST be treated as a failure."
    how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit {exit_code}"
    unknown = f", which restic {version} does not use" if known is not None else ""
    return _Explained(
        ResticOutcome.FAILED,
        f"restic failed ({how}{unknown})" + (f": {detail}" if detail else ""),
        None,
    )


def _outcome_from_text(said: str) -> ResticOutcome:
    # 0.14 (and 0.17.0 for a wrong password) exit 1 for all of these; only the words differ.
    lowered = said.lower()
    if "wrong password or no key found" in lowered:
        return ResticOutcome.WRONG_PASSWORD
    if any(text in lowered for text in _UNREACHABLE_TEXTS):
        # Before "is there a repository ...?", which 0.14 also asks when the host is down.
        return ResticOutcome.UNREACHABLE
    if "repository is already locked" in lowered or "unable to create lock" in lowered:
        return ResticOutcome.LOCKED
    if "repository does not exist" in lowered or (
        "is there a repository at the following location?" in lowered
        and any(marker in lowered for marker in _NOT_EXIST)
    ):
        return ResticOutcome.REPO_MISSING
    if "config file already exists" in lowered:
        return ResticOutcome.REPO_EXISTS
    if "unable to open repository at" in lowered:
        return ResticOutcome.UNREACHABLE
    return ResticOutcome.FAILED


# Known exit-1 failures that are none of the outcomes above: (marker, message, fix).
_KNOWN_FAILURES: Final = (
    (
        "all target directories/files do not exist",  # 0.14
        "none of the backup paths exist",
        "fix backup.paths/volumes of the service in services.json",
    ),
    (
        "all source directories/files do not exist",  # 0.17+
        "none of the backup paths exist",
        "fix backup.paths/volumes of the service in services.json",
    ),
    (
        "resolving password failed",
        "the repository's password file cannot be read",
        "check the password file configured for this repository",
    ),
    (
        "an empty password is not a password",
        "restic got an empty password",
        "check the password file configured for this repository",
    ),
    (
        "please specify repository location",
        "no repository location was given to restic",
        "configure the repository in services.json",
    ),
    (
        "parsing repository location failed",
        "the repository location is malformed",
        "fix the repository location (sftp:user@host:/path, /local/path, ...)",
    ),
    (
        "snapshot is empty",
        "nothing could be read, so no snapshot was saved",
        "check the backup paths and their permissions",
    ),
    (
        "no snapshot found",
        "no snapshot matches",
        "list the snapshots with `svc list-backups`",
    ),
    (
        "no matching id found",
        "no snapshot has that id",
        "list the snapshots with `svc list-backups`",
    ),
    (
        "repository contains errors",
        "restic check found errors in the repository",
        "read restic's check output; `restic repair` (0.16+) or `rebuild-index` may help",
    ),
    (
        "unknown flag",
        "restic does not know an option homeops passed",
        "check `restic version`: homeops supports restic 0.14 and later",
    ),
)


def _explain(outcome: ResticOutcome, said: str, detail: str | None, repo: str | None) -> _Explained:
    match outcome:
        case ResticOutcome.WRONG_PASSWORD:
            which = f" of repository {repo}" if repo else ""
            return _Explained(
                outcome,
                "wrong password for the repository (no key matches the password file)",
                f"check the password file{which} in services.json",
            )
        case ResticOutcome.LOCKED:
            holder = _LOCK_HOLDER.search(said)
            since = _LOCK_SINCE.search(said)
            who = holder.group("holder").strip() if holder else "another restic process"
            how = "exclusively locked" if holder and holder.group("excl") else "locked"
            when = f" since {since.group('at').strip()}" if since else ""
            return _Explained(
                outcome,
                f"the repository is {how} by {who}{when}",
                "wait for that restic run to finish or pass --retry-lock; a lock left by a "
                "killed run is removed by `restic unlock`",
                lock_holder=holder.group("holder").strip() if holder else None,
            )
        case ResticOutcome.REPO_MISSING:
            found = _LOCATION.search(said) or _LOCATION_17.search(said)
            location = found.group("loc").strip() if found else None
            where = f" at {location}" if location else ""
            return _Explained(
                outcome,
                f"there is no restic repository{where}",
                f"run `{_init_hint(repo)}`",
                location=location,
            )
        case ResticOutcome.REPO_EXISTS:
            return _Explained(
                outcome,
                "a restic repository already exists there",
                "nothing to do: it is already initialised",
            )
        case ResticOutcome.UNREACHABLE:
            return _Explained(
                outcome,
                f"cannot open the repository: {detail or 'no detail'}",
                "check that the repository host is reachable (ssh/sftp, rest server) and "
                "the repository location",
            )
        case ResticOutcome.OK | ResticOutcome.PARTIAL | ResticOutcome.INTERRUPTED:
            # Decided by the exit code alone, before any text is read.
            raise AssertionError(f"{outcome} is not explained from text")
        case ResticOutcome.FAILED:
            lowered = said.lower()
            for marker, message, fix in _KNOWN_FAILURES:
                if marker in lowered:
                    return _Explained(outcome, f"{message}: {detail}", fix)
            if "is there a repository at the following location?" in lowered:
                return _Explained(
                    outcome,
                    f"cannot read the repository's config: {detail}",
                    "check the repository's location and permissions",
                )
            return _Explained(
                outcome, "restic failed" + (f": {detail}" if detail else " (no message)"), None
            )
        case _:
            assert_never(outcome)
