"""services/retention.py: when a forget provably removes nothing (pure, a fixed time zone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from homeops.core.artifacts import parse_rfc3339
from homeops.services.restic import KeepPolicy
from homeops.services.retention import (
    KnownSnapshot,
    known_from_results,
    local_repository,
    nothing_to_forget,
    utc_offsets,
)

# A zone east of UTC, so that a UTC-day and a local day differ (as restic's buckets do).
ZONE = timezone(timedelta(hours=2))


def at(text: str) -> float:
    """Epoch seconds of a local wall time in ZONE (``2025-03-10 14:00``)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp()


OFFSETS = (7200, 7200)


def snap(
    short: str,
    begin: str,
    end: str | None = None,
    tags: tuple[str, ...] = ("app",),
    offsets: tuple[int, int] | None = OFFSETS,
) -> KnownSnapshot:
    return KnownSnapshot(short, tags, at(begin), at(end or begin), offsets)


def full(short: str) -> str:
    return short + "0" * (64 - len(short))


DAILY7 = KeepPolicy(daily=7, weekly=4, monthly=6)


@pytest.mark.parametrize(
    ("policy", "known", "files", "skip"),
    [
        pytest.param(
            DAILY7, [snap("aaaaaaaa", "2025-03-10 14:00")], ["aaaaaaaa"], True, id="one-snapshot"
        ),
        pytest.param(
            DAILY7,
            [snap("aaaaaaaa", "2025-03-10 14:00"), snap("bbbbbbbb", "2025-03-11 14:00")],
            ["aaaaaaaa", "bbbbbbbb"],
            True,
            id="two-days-two-snapshots",
        ),
        pytest.param(
            DAILY7,
            [snap("aaaaaaaa", "2025-03-10 09:00"), snap("bbbbbbbb", "2025-03-10 21:00")],
            ["aaaaaaaa", "bbbbbbbb"],
            False,
            id="two-on-one-day-one-goes",
        ),
        pytest.param(
            DAILY7,
            [snap(f"{n:08x}", f"2025-03-{n:02d} 12:00") for n in range(1, 9)],
            [f"{n:08x}" for n in range(1, 9)],
            # 8 days > keep-daily 7, but 8 snapshots in 2 ISO weeks: weekly cannot keep all
            False,
            id="more-days-than-daily",
        ),
        pytest.param(
            KeepPolicy(daily=0, weekly=4),
            [snap("aaaaaaaa", "2025-03-03 12:00"), snap("bbbbbbbb", "2025-03-10 12:00")],
            ["aaaaaaaa", "bbbbbbbb"],
            True,
            id="weekly-rule-alone",
        ),
        pytest.param(
            KeepPolicy(daily=0, weekly=4),
            [snap("aaaaaaaa", "2025-03-10 12:00"), snap("bbbbbbbb", "2025-03-12 12:00")],
            ["aaaaaaaa", "bbbbbbbb"],
            False,
            id="same-iso-week",
        ),
        pytest.param(
            DAILY7,
            [
                snap("aaaaaaaa", "2025-03-10 23:59", "2025-03-11 00:01"),
                snap("bbbbbbbb", "2025-03-12 12:00"),
            ],
            ["aaaaaaaa", "bbbbbbbb"],
            # the first may be dated either day; a weekly bucket still holds it unambiguously,
            # but both are in one ISO week: nothing proves both are kept
            False,
            id="across-midnight",
        ),
        pytest.param(
            DAILY7,
            [snap("aaaaaaaa", "2025-03-10 14:00")],
            ["aaaaaaaa", "cccccccc"],
            False,
            id="unknown-snapshot-file",
        ),
        pytest.param(
            DAILY7,
            [
                snap("aaaaaaaa", "2025-03-10 09:00"),
                snap("bbbbbbbb", "2025-03-10 21:00", tags=("db",)),
            ],
            ["aaaaaaaa", "bbbbbbbb"],
            True,
            id="other-service-same-day",
        ),
        pytest.param(
            DAILY7,
            [
                snap("aaaaaaaa", "2025-03-10 09:00"),
                snap("bbbbbbbb", "2025-03-10 21:00", tags=("db", "app")),
            ],
            ["aaaaaaaa", "bbbbbbbb"],
            False,
            id="other-service-carrying-the-tag",
        ),
        pytest.param(
            DAILY7,
            [snap("aaaaaaaa", "2025-03-10 14:00")],
            ["aaaaaaaa", "aaaaaaaa"],
            False,
            id="one-record-two-files",
        ),
        pytest.param(
            DAILY7,
            [snap("bbbbbbbb", "2025-03-10 14:00", tags=("db",))],
            ["bbbbbbbb"],
            True,
            id="no-snapshot-of-the-service",
        ),
        pytest.param(
            KeepPolicy(daily=1),
            [snap("aaaaaaaa", "2025-03-10 14:00"), snap("bbbbbbbb", "2025-03-11 14:00")],
            ["aaaaaaaa", "bbbbbbbb"],
            False,
            id="count-too-small",
        ),
    ],
)
def test_nothing_to_forget(
    policy: KeepPolicy, known: list[KnownSnapshot], files: list[str], skip: bool
) -> None:
    reason = nothing_to_forget(policy, "app", [full(f) for f in files], known)
    assert (reason is not None) is skip, reason
    if skip:
        assert reason is not None and reason.startswith("nothing to remove")


def test_days_are_each_snapshots_own_zone() -> None:
    """restic buckets a snapshot by the offset stored with it. 21:30 and 23:30 UTC are one
    UTC day but two days at UTC+2; and a zone that changed between two backups (00:10 UTC
    stored at UTC, 01:14 UTC stored at -01:13, i.e. 00:01 local) puts both on one day."""
    first = datetime(2025, 3, 10, 21, 30, tzinfo=UTC).timestamp()
    second = datetime(2025, 3, 10, 23, 30, tzinfo=UTC).timestamp()
    files = [full("aaaaaaaa"), full("bbbbbbbb")]

    def two(
        offsets_a: tuple[int, int], offsets_b: tuple[int, int], a: float, b: float
    ) -> str | None:
        known = [
            KnownSnapshot("aaaaaaaa", ("app",), a, a, offsets_a),
            KnownSnapshot("bbbbbbbb", ("app",), b, b, offsets_b),
        ]
        return nothing_to_forget(KeepPolicy(daily=7), "app", files, known)

    assert two(OFFSETS, OFFSETS, first, second) is not None
    assert two((0, 0), (0, 0), first, second) is None
    early = datetime(2026, 12, 7, 0, 10, tzinfo=UTC).timestamp()
    late = datetime(2026, 12, 7, 1, 14, tzinfo=UTC).timestamp()
    assert two((0, 0), (0, 0), early, late) is None
    assert two((0, 0), (-4380, -4380), early, late) is None  # both Dec 7 in their zones
    assert two((-4380, -4380), (0, 0), early, late) is not None  # Dec 6 22:57, Dec 7 01:14


def test_an_unknown_zone_means_forget_runs() -> None:
    """A snapshot of the service recorded without offsets (TZ was set: Go may read it
    otherwise, or an older record) cannot be bucketed: forget runs. Another service's
    snapshot without offsets does not matter."""
    files = [full("aaaaaaaa"), full("bbbbbbbb")]
    mine = snap("aaaaaaaa", "2025-03-10 12:00", offsets=None)
    other = snap("bbbbbbbb", "2025-03-10 13:00", tags=("db",), offsets=None)
    assert nothing_to_forget(DAILY7, "app", files, [mine, other]) is None
    mine = snap("aaaaaaaa", "2025-03-10 12:00")
    assert nothing_to_forget(DAILY7, "app", files, [mine, other]) is not None


def test_utc_offsets_only_without_tz() -> None:
    moment = datetime(2025, 7, 1, 12, tzinfo=UTC).timestamp()
    assert utc_offsets({"TZ": "Europe/Berlin"}, moment) is None
    assert utc_offsets({"TZ": ""}, moment) is None
    offsets = utc_offsets({}, moment, moment + 60)
    expected = datetime.fromtimestamp(moment, UTC).astimezone().utcoffset()
    assert expected is not None
    assert offsets == [int(expected.total_seconds())] * 2


def test_known_from_results_keeps_only_complete_records() -> None:
    good = {
        "repo": "local",
        "snapshot_id": "1a2b3c4d",
        "tags": ["app"],
        "started_at": "2025-03-10T12:00:00.000Z",
        "finished_at": "2025-03-10T12:01:00.000Z",
        "utc_offsets_s": [3600, 7200],
    }
    results = [
        good,
        {**good, "repo": "remote"},
        {**good, "dry_run": True},
        {**good, "snapshot_id": None},
        {**good, "snapshot_id": "not-hex!"},
        {**good, "tags": []},
        {**good, "tags": "app"},
        {**good, "started_at": "yesterday"},
        {**good, "finished_at": "2025-03-10T12:00:00"},  # no zone
        {**good, "started_at": "2025-03-10T13:00:00.000Z"},  # ends before it starts
    ]
    [only] = known_from_results(results, "local")
    assert only == KnownSnapshot(
        "1a2b3c4d",
        ("app",),
        parse_rfc3339(str(good["started_at"])),
        parse_rfc3339(str(good["finished_at"])),
        (3600, 7200),
    )
    for odd in (None, [3600], [3600, "x"], [True, 0], [0, 100 * 3600], "3600"):
        [entry] = known_from_results([{**good, "utc_offsets_s": odd}], "local")
        assert entry.offsets is None, odd


@pytest.mark.parametrize(
    ("location", "path"),
    [
        ("/srv/restic", "/srv/restic"),
        ("local:/srv/restic", "/srv/restic"),
        (" /srv/restic", None),  # restic takes it as it is: a relative path
        ("/srv/restic\n", "/srv/restic\n"),
        ("relative/repo", None),
        ("sftp:backup@nas:/srv/restic", None),
        ("rest:http://127.0.0.1:8000/", None),
        ("s3:s3.example/bucket", None),
        (None, None),
    ],
)
def test_local_repository(location: str | None, path: str | None) -> None:
    assert local_repository(location) == path


def test_a_large_repository_is_decided_quickly_and_strictly() -> None:
    """20,000 recorded snapshots of other services, one file each: indexed, not scanned
    per file; one file more than the records is decided at once."""
    base = at("2025-03-10 12:00")
    known = [
        KnownSnapshot(f"{n:08x}", (f"svc{n}",), base - n * 3600.0, base - n * 3600.0, OFFSETS)
        for n in range(1, 20_001)
    ]
    known.append(KnownSnapshot("ffffffff", ("app",), base, base, OFFSETS))
    files = [full(k.snapshot_id) for k in known]
    reason = nothing_to_forget(DAILY7, "app", files, known)
    assert reason == "nothing to remove: app has one snapshot in the repository"
    assert nothing_to_forget(DAILY7, "app", [*files, full("eeeeeeee")], known) is None
