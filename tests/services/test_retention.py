"""services/retention.py: when a forget provably removes nothing (pure, a fixed time zone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from homeops.services.restic import KeepPolicy
from homeops.services.retention import (
    KnownSnapshot,
    known_from_results,
    local_repository,
    nothing_to_forget,
    parse_ts,
)

# A zone east of UTC, so that a UTC-day and a local day differ (as restic's buckets do).
ZONE = timezone(timedelta(hours=2))


def at(text: str) -> float:
    """Epoch seconds of a local wall time in ZONE (``2025-03-10 14:00``)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp()


def local(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).astimezone(ZONE)


def snap(
    short: str, begin: str, end: str | None = None, tags: tuple[str, ...] = ("app",)
) -> KnownSnapshot:
    return KnownSnapshot(short, tags, at(begin), at(end or begin))


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
    reason = nothing_to_forget(policy, "app", [full(f) for f in files], known, local=local)
    assert (reason is not None) is skip, reason
    if skip:
        assert reason is not None and reason.startswith("nothing to remove")


def test_days_are_local_days() -> None:
    """21:30 and 23:30 UTC are one UTC day but two days at UTC+2: restic buckets by the local
    day, so both are kept by keep-daily and forget is not needed."""
    first = datetime(2025, 3, 10, 21, 30, tzinfo=UTC).timestamp()
    second = datetime(2025, 3, 10, 23, 30, tzinfo=UTC).timestamp()
    known = [
        KnownSnapshot("aaaaaaaa", ("app",), first, first),
        KnownSnapshot("bbbbbbbb", ("app",), second, second),
    ]
    files = [full("aaaaaaaa"), full("bbbbbbbb")]
    assert nothing_to_forget(KeepPolicy(daily=7), "app", files, known, local=local) is not None
    in_utc = lambda t: datetime.fromtimestamp(t, UTC)  # noqa: E731
    assert nothing_to_forget(KeepPolicy(daily=7), "app", files, known, local=in_utc) is None


def test_known_from_results_keeps_only_complete_records() -> None:
    good = {
        "repo": "local",
        "snapshot_id": "1a2b3c4d",
        "tags": ["app"],
        "started_at": "2025-03-10T12:00:00.000Z",
        "finished_at": "2025-03-10T12:01:00.000Z",
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
        "1a2b3c4d", ("app",), parse_ts(good["started_at"]), parse_ts(good["finished_at"])
    )


@pytest.mark.parametrize(
    ("location", "path"),
    [
        ("/srv/restic", "/srv/restic"),
        ("local:/srv/restic", "/srv/restic"),
        (" /srv/restic ", "/srv/restic"),
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
        KnownSnapshot(f"{n:08x}", (f"svc{n}",), base - n * 3600.0, base - n * 3600.0)
        for n in range(1, 20_001)
    ]
    known.append(KnownSnapshot("ffffffff", ("app",), base, base))
    files = [full(k.snapshot_id) for k in known]
    reason = nothing_to_forget(DAILY7, "app", files, known, local=local)
    assert reason == "nothing to remove: app has one snapshot in the repository"
    assert nothing_to_forget(DAILY7, "app", [*files, full("eeeeeeee")], known, local=local) is None
