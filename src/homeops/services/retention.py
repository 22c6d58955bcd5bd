"""Whether a ``restic forget`` could remove anything, decided without restic.

Every restic process spends its first ~0.6 s here (more on a slow CPU) deriving the
repository key (scrypt, calibrated at ``init``), so a ``forget --prune`` after each backup costs
about as much as a small backup, and takes the repository's exclusive lock while it runs.
When the snapshots in a local repository are all ones this tool made and recorded in the job
ledger, their tags and times are known, and restic's policy can be checked here: if one rule
alone (keep-daily N, keep-weekly N, keep-monthly N) keeps every snapshot of the service, forget
would remove nothing and is skipped. Anything not known for sure (a snapshot file no job
recorded, a snapshot taken across a midnight, a remote repository whose files cannot be
listed cheaply) means: run forget. A skip never removes a snapshot: what it could get wrong
is only keeping one longer.

restic's rules (internal/restic/snapshot_policy.go): snapshots newest first; a rule with a
count left keeps a snapshot whose bucket (daily: year-month-day; weekly: ISO year and week;
monthly: year-month) differs from the last one it kept; a snapshot is kept when any rule
keeps it. So n snapshots in n different buckets of a rule whose count is at least n are all
kept. The buckets are in each snapshot's own zone: the UTC offset restic stored with it, that
of Go's local time when it ran, whatever the zone at forget time. So each backup records the
offset of its start and end (:func:`utc_offsets`), and only where restic's zone is known to
be this process's: with ``TZ`` unset both read /etc/localtime; a ``TZ`` value (a POSIX rule
Go cannot load falls back to UTC) leaves it unknown, and forget runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from homeops.core.artifacts import parse_rfc3339
from homeops.services.restic import KeepPolicy, is_local_location

_HEX: Final = re.compile(r"^[0-9a-f]{8,64}$")

Bucket = Callable[[datetime], tuple[int, ...]]

_RULES: Final[tuple[tuple[str, Bucket], ...]] = (
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
)


_UNITS: Final = {"daily": "days", "weekly": "weeks", "monthly": "months"}


@dataclass(frozen=True)
class KnownSnapshot:
    """A snapshot this tool saved: its id as restic printed it (0.14: the first 8 hex
    digits), its tags, bounds of its time (the backup job's start and end: restic takes the
    snapshot's time in between), and the UTC offsets of restic's zone at those two times
    (None: not known)."""

    snapshot_id: str
    tags: tuple[str, ...]
    earliest: float
    latest: float
    offsets: tuple[int, int] | None = None


def utc_offsets(environ: Mapping[str, str], *times: float) -> list[int] | None:
    """The UTC offsets (seconds) restic's local time has at ``times``, or None when that
    cannot be known from here: restic (Go) and this process agree on the zone only when
    ``TZ`` is unset (both read /etc/localtime)."""
    if "TZ" in environ:
        return None
    out: list[int] = []
    for moment in times:
        offset = datetime.fromtimestamp(moment, UTC).astimezone().utcoffset()
        if offset is None:
            return None
        out.append(int(offset.total_seconds()))
    return out


def local_repository(location: str | None) -> str | None:
    """The directory of a local repository location (``/srv/restic``, ``local:/srv/restic``),
    or None for a remote backend or anything not an absolute path."""
    if location is None or not is_local_location(location):
        return None
    # Exactly what restic is given: it does not trim the location either.
    path = location.removeprefix("local:")
    return path if path.startswith("/") else None


def known_from_results(results: Iterable[Mapping[str, Any]], repo: str) -> list[KnownSnapshot]:
    """The snapshots in ``repo`` that succeeded ``services.backup`` jobs recorded (their
    results, schema in services/jobs.py); entries without an id, tags or times are left out
    (their snapshot files then count as unknown)."""
    out: list[KnownSnapshot] = []
    for result in results:
        if result.get("repo") != repo or result.get("dry_run") is True:
            continue
        snapshot, tags = result.get("snapshot_id"), result.get("tags")
        started, finished = result.get("started_at"), result.get("finished_at")
        if not (isinstance(snapshot, str) and _HEX.match(snapshot)):
            continue
        if not (isinstance(tags, list) and tags and all(isinstance(t, str) for t in tags)):
            continue
        if not (isinstance(started, str) and isinstance(finished, str)):
            continue
        try:
            earliest, latest = parse_rfc3339(started), parse_rfc3339(finished)
        except ValueError:
            continue
        if earliest <= latest:
            offsets = _offsets(result.get("utc_offsets_s"))
            out.append(KnownSnapshot(snapshot, tuple(tags), earliest, latest, offsets))
    return out


def _offsets(value: object) -> tuple[int, int] | None:
    """A recorded ``utc_offsets_s`` pair; None for anything else (not recorded, or odd)."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    first, last = value
    for item in (first, last):
        if isinstance(item, bool) or not isinstance(item, int) or abs(item) > 26 * 3600:
            return None
    return first, last


def nothing_to_forget(
    policy: KeepPolicy,
    service: str,
    files: Iterable[str],
    known: Sequence[KnownSnapshot],
) -> str | None:
    """Why ``forget --tag=SERVICE`` under ``policy`` would remove nothing, given the names of
    the repository's snapshot files; None when it might remove something (run it)."""
    names = list(files)
    if len(names) > len(known):
        return None  # more snapshots than records: at least one no job recorded
    # Ids are at least 8 hex digits (0.14 prints 8): index by those, not a scan per file.
    by_prefix: dict[str, list[KnownSnapshot]] = {}
    for snap in known:
        by_prefix.setdefault(snap.snapshot_id[:8], []).append(snap)
    members: list[KnownSnapshot] = []
    claimed: set[str] = set()
    for name in names:
        match = [k for k in by_prefix.get(name[:8], ()) if name.startswith(k.snapshot_id)]
        if len(match) != 1 or match[0].snapshot_id in claimed:
            return None  # a snapshot no job recorded (or ids that do not tell them apart)
        claimed.add(match[0].snapshot_id)
        if service in match[0].tags:
            members.append(match[0])
    if not members:
        return f"nothing to remove: no snapshot of {service} is in the repository"
    if any(snap.offsets is None for snap in members):
        return None  # a snapshot's zone is not known: its buckets are not either
    counts = {"daily": policy.daily, "weekly": policy.weekly, "monthly": policy.monthly}
    for rule, bucket in _RULES:
        count = counts[rule]
        if count < len(members):
            continue
        buckets: set[tuple[int, ...]] = set()
        for snap in members:
            assert snap.offsets is not None
            start, end = snap.offsets
            first, last = bucket(_wall(snap.earliest, start)), bucket(_wall(snap.latest, end))
            if first != last or first in buckets:
                break  # across a boundary, or two in one bucket: the rule may drop one
            buckets.add(first)
        else:
            if len(members) == 1:
                return f"nothing to remove: {service} has one snapshot in the repository"
            return (
                f"nothing to remove: the {len(members)} snapshots of {service}, all recorded "
                f"by this tool, are on different {_UNITS[rule]} and keep-{rule} is {count}"
            )
    return None


def _wall(epoch: float, offset: int) -> datetime:
    """The wall-clock time at ``epoch`` in a zone ``offset`` seconds east of UTC."""
    return datetime.fromtimestamp(epoch + offset, UTC)
