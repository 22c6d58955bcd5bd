"""``svc restore`` against the real restic (Debian's 0.14), a local repository per test.

The pure parts (choosing the snapshot, the paths, the tree comparison, the payload) are
table tests; the rest backs a tree up with the real restic, tagged with the service,
damages the live data (a file changed with its size kept, one deleted, one added) and
restores it, into staging and in place. The service here has no compose project
(``compose.enable`` false): stopping and starting it, and docker volumes, are in
test_restore_docker.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from homeops.core.errors import OperationalError, UsageError
from homeops.core.jobs.model import Job, JobState
from homeops.core.jobs.store import open_store_at
from homeops.services import restic as r
from homeops.services import restore_flow as rf
from tests.services import test_backup as tb
from tests.services.test_backup import RESTIC, SvcWorld

SVC = "app"


# -- helpers ----------------------------------------------------------------------------------


def contents(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: file bytes, a symlink's target, ``dir`` for a directory."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("symlink", os.readlink(path))
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes()
    return out


def restore_world(world: SvcWorld) -> SvcWorld:
    """Staging and aside dirs of the world's own, one service ``app`` (no compose project)
    whose data is ``world.root/data``: a tree of three files."""
    world.settings["restore"] = {
        "staging_dir": str(world.root / "staging"),
        "aside_dir": str(world.root / "aside"),
    }
    tb.tree(world.root / "data")
    record = world.service(SVC, paths=[str(world.root / "data")], policy=tb.NO_FORGET)
    record["compose"] = {"enable": False}
    return world


def backup(world: SvcWorld, path: Path, *tags: str) -> dict[str, Any]:
    """A snapshot of ``path`` by the real restic with ``tags``; its ``snapshots`` entry."""
    done = world.restic("backup", "--quiet", *(f"--tag={t}" for t in tags), str(path))
    assert done.returncode == 0, done.stderr
    newest: dict[str, Any] = world.snapshots()[-1]
    return newest


def damage(data: Path) -> None:
    """Change a.txt (same size), delete sub/b.bin, add new.txt."""
    (data / "a.txt").write_text("HELLO\n")
    (data / "sub" / "b.bin").unlink()
    (data / "new.txt").write_text("not in the snapshot\n")


def restore_jobs(world: SvcWorld) -> list[Job]:
    store = open_store_at(world.state / "jobs.sqlite3")
    try:
        return sorted(store.list(type=rf.RESTORE), key=lambda j: j.created_at)
    finally:
        store.close()


@pytest.fixture(scope="session")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tb.make_template(tmp_path_factory)


@pytest.fixture
def world(restic_template: Path, tmp_path: Path, state_dir: Path) -> SvcWorld:
    return restore_world(tb.make_world(tmp_path / "world", restic_template, state_dir))


# -- pure: the snapshot, the paths, the payload -----------------------------------------------


def _snap(short: str, tags: tuple[str, ...], minute: int) -> r.Snapshot:
    return r.Snapshot(
        id=short + "0" * (64 - len(short)),
        short_id=short,
        time=datetime(2025, 1, 2, 3, minute, tzinfo=UTC),
        paths=("/srv/app",),
        tags=tags,
    )


SNAPSHOTS = (
    _snap("aaaa1111", ("app",), 1),
    _snap("bbbb2222", ("other",), 5),
    _snap("cccc3333", ("app", "media"), 3),
    _snap("cccc4444", ("app",), 0),
)


@pytest.mark.parametrize(
    ("wanted", "chosen"),
    [
        pytest.param("latest", "cccc3333", id="latest-is-the-newest-of-the-service"),
        pytest.param("aaaa", "aaaa1111", id="prefix"),
        pytest.param("cccc4444" + "0" * 56, "cccc4444", id="full-id"),
    ],
)
def test_choose_snapshot(wanted: str, chosen: str) -> None:
    assert rf.choose_snapshot(SNAPSHOTS, "app", wanted, "local").short_id == chosen


@pytest.mark.parametrize(
    ("snapshots", "wanted", "error", "says"),
    [
        pytest.param(
            SNAPSHOTS, "bbbb", UsageError, "snapshot bbbb2222 is not a backup of app (its tags: "
            "other); refusing to restore another service's data", id="another-service",
        ),
        pytest.param(
            SNAPSHOTS, "dddd", UsageError, "no snapshot dddd in local (list them with "
            "`svc list-backups local app`)", id="unknown",
        ),
        pytest.param(SNAPSHOTS, "cccc", UsageError, "is ambiguous (cccc3333, cccc4444)",
                     id="ambiguous"),
        pytest.param(SNAPSHOTS, "xyz!", UsageError, "expected 'latest' or a hex", id="malformed"),
        pytest.param(SNAPSHOTS[1:2], "latest", OperationalError,
                     "no backup of app in local yet (run `svc backup local app`)", id="none-yet"),
    ],
)  # fmt: skip
def test_choose_snapshot_refuses(
    snapshots: tuple[r.Snapshot, ...], wanted: str, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as caught:
        rf.choose_snapshot(snapshots, "app", wanted, "local")
    assert type(caught.value) is error
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("paths", "roots"),
    [
        pytest.param(["/srv/app", "/srv/app/db", "/var/x"], ["/srv/app", "/var/x"], id="nested"),
        pytest.param(["/srv/app/", "/srv//app", "/srv/app2"], ["/srv/app", "/srv/app2"],
                     id="normalised-and-prefix-is-not-parent"),
        pytest.param(["relative", "/a"], ["/a"], id="relative-dropped"),
    ],
)  # fmt: skip
def test_snapshot_roots(paths: list[str], roots: list[str]) -> None:
    assert rf.snapshot_roots(paths) == roots


def test_aside_stamp_is_utc() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert rf.aside_stamp(when) == "20250102T030405Z"


def test_diff_path_sees_content_type_and_presence(tmp_path: Path) -> None:
    snap, live = tmp_path / "snap", tmp_path / "live"
    for root in (snap, live):
        (root / "d").mkdir(parents=True)
        (root / "same.txt").write_text("same\n")
    (snap / "empty-dir").mkdir()  # directories are not compared, only what is in them
    (snap / "content.txt").write_text("abc\n")
    (live / "content.txt").write_text("xyz\n")  # same size, other bytes
    (snap / "size.txt").write_text("short\n")
    (live / "size.txt").write_text("longer line\n")
    (snap / "kind").write_text("a file\n")
    (live / "kind").symlink_to("same.txt")  # a symlink where the snapshot has a file
    (snap / "link").symlink_to("same.txt")
    (live / "link").symlink_to("content.txt")  # another target
    (snap / "d" / "gone.txt").write_text("x\n")
    (live / "d" / "new.txt").write_text("y\n")
    diff = rf.diff_path(str(live), snap)
    assert diff.only_snapshot == (f"{live}/d/gone.txt",)
    assert diff.only_live == (f"{live}/d/new.txt",)
    assert diff.changed == tuple(f"{live}/{n}" for n in ("content.txt", "kind", "link", "size.txt"))
    assert diff.same == 1 and diff.live_exists
    # A path that is a file, and one missing live.
    (snap / "one.txt").write_text("1\n")
    assert rf.diff_path(str(live / "one.txt"), snap / "one.txt").only_snapshot == (
        f"{live}/one.txt",
    )
    shown = diff.as_json(shown=2)
    assert shown["changed"] == {"count": 4, "first": [f"{live}/content.txt", f"{live}/kind"]}


def test_payload_is_strict() -> None:
    payload = rf.RestorePayload.model_validate_json(
        '{"repo": "local", "service": "app"}', strict=True
    )
    assert payload.model_dump() == {
        "repo": "local",
        "service": "app",
        "snapshot": "latest",
        "target": None,
        "in_place": False,
        "yes": False,
        "no_systemd": False,
        "retry_lock_s": None,
    }
    for bad in (
        {"repo": "local", "service": "app", "in_place": True},  # not confirmed
        {"repo": "local", "service": "app", "in_place": True, "yes": True, "target": "/x"},
        {"repo": "local", "service": "app", "target": "relative/dir"},
        {"repo": "local", "service": "app", "snapshot": "LATEST"},
        {"repo": "local", "service": "app", "paths": ["/etc"]},
    ):
        with pytest.raises(ValidationError):
            rf.RestorePayload.model_validate_json(json.dumps(bad), strict=True)


# -- usage errors: nothing is done ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param((SVC, "--in-place"), "add --yes to confirm; nothing was done", id="no-yes"),
        pytest.param(("nope",), "no service 'nope' in the config", id="unknown-service"),
        pytest.param((SVC, "zz"), "expected 'latest' or a hex snapshot id", id="bad-id"),
        pytest.param((SVC, "--in-place", "--yes", "--target", "/x"), "--target is for",
                     id="target-and-in-place"),
        pytest.param((SVC, "--retry-lock", "soon"), "--retry-lock", id="duration"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_and_do_nothing(
    world: SvcWorld, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str
) -> None:
    before = contents(world.root / "data")
    code, out, err = world.svc(capsys, "restore", "local", *args, "--json")
    assert code == 2, err
    assert says in json.loads(out)["error"]
    assert err.count("\n") == 1 and says in err
    assert contents(world.root / "data") == before
    assert not (world.root / "aside").exists() and not (world.root / "staging").exists()
    assert restore_jobs(world) == []


# -- the real restic --------------------------------------------------------------------------


@pytest.mark.integration
@tb.needs_restic
def test_restore_into_staging_names_exactly_the_damage(
    world: SvcWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    data = world.root / "data"
    original = contents(data)
    snap = backup(world, data, SVC)
    backup(world, data, "other")  # newer, but another service's: not "latest" of app
    damage(data)
    damaged = contents(data)

    code, out, err = world.svc(capsys, "restore", "local", SVC, "--json")
    assert code == 0, err
    result = json.loads(out)
    staging = world.root / "staging" / SVC / snap["short_id"]
    assert result["ok"] is True and result["mode"] == "staging"
    assert result["snapshot"]["id"] == snap["id"]
    assert result["target"] == str(staging)
    assert contents(rf.under(staging, str(data))) == original  # byte for byte
    assert contents(data) == damaged  # the live data was not touched
    [diff] = result["diff"]
    assert diff["path"] == str(data) and diff["kind"] == "path"
    assert diff["only_snapshot"] == {"count": 1, "first": [f"{data}/sub/b.bin"]}
    assert diff["only_live"] == {"count": 1, "first": [f"{data}/new.txt"]}
    assert diff["changed"] == {"count": 1, "first": [f"{data}/a.txt"]}
    assert diff["same"] == 1  # debug.log
    check = result["check"]
    assert check["ok"] is True and check["expected_files"] == check["found_files"] == 3
    assert check["expected_bytes"] == 6 + 20_000 + 6

    # The restore is a job, with its summary as an artifact.
    [job] = restore_jobs(world)
    assert job.state is JobState.SUCCEEDED and result["job_id"] == job.id
    assert job.payload["snapshot"] == "latest" and job.payload["in_place"] is False
    summary = json.loads(world.artifact(job, "restore/summary.json").read_text())
    assert summary["diff"][0]["changed"]["first"] == [f"{data}/a.txt"]
    assert "restoring" in world.artifact(job, "restic/restore.txt").read_text()

    # The text form says the same; the same staging dir again is refused, not mixed into.
    code, out, err = world.svc(capsys, "restore", "local", SVC, snap["short_id"])
    assert code == 2
    assert f"the restore target {staging} is not empty" in err
    assert contents(rf.under(staging, str(data))) == original
    target = world.root / "elsewhere"
    code, out, err = world.svc(capsys, "restore", "local", SVC, "--target", str(target))
    assert code == 0, err
    assert f"restored into {target}" in out
    assert "only in snapshot: " + f"{data}/sub/b.bin" in out
    assert f"changed: {data}/a.txt" in out


@pytest.mark.integration
@tb.needs_restic
def test_restore_in_place_is_byte_for_byte_and_keeps_the_damaged_data(
    world: SvcWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    data = world.root / "data"
    (data / "link").symlink_to("a.txt")
    os.chmod(data / "sub" / "b.bin", 0o600)
    original = contents(data)
    modes = {p.name: p.lstat().st_mode for p in data.rglob("*")}
    snap = backup(world, data, SVC)
    damage(data)
    damaged = contents(data)

    code, out, err = world.svc(
        capsys, "restore", "local", SVC, snap["short_id"], "--in-place", "--yes", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert contents(data) == original  # byte for byte, the symlink too
    assert {p.name: p.lstat().st_mode for p in data.rglob("*")} == modes
    aside = Path(result["aside"])
    assert aside.parent == world.root / "aside" / SVC
    assert contents(rf.under(aside, str(data))) == damaged  # the damaged data, kept
    assert result["moved"] == [
        {"path": str(data), "aside": str(rf.under(aside, str(data))), "how": "rename"}
    ]
    assert result["final_check"]["ok"] is True and result["final_check"]["found_files"] == 3
    assert result["stopped"] is False  # no compose project: nothing to stop
    # Nothing else is left behind: the incoming directory was emptied and removed.
    assert sorted(p.name for p in aside.parent.iterdir()) == [aside.name]
    [job] = restore_jobs(world)
    assert job.state is JobState.SUCCEEDED and job.payload["in_place"] is True

    # Again, in text: another aside directory, the one before is kept.
    code, out, err = world.svc(capsys, "restore", "local", SVC, "--in-place", "--yes")
    assert code == 0, err
    second = out.split("old data kept at ")[1].split("\n")[0]
    assert Path(second) != aside and contents(rf.under(Path(second), str(data))) == original
    assert contents(rf.under(aside, str(data))) == damaged


@pytest.mark.integration
@tb.needs_restic
def test_a_snapshot_of_another_service_is_refused(
    world: SvcWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    data = world.root / "data"
    other = backup(world, data, "other", "media")
    damage(data)
    before = contents(data)
    code, out, err = world.svc(
        capsys, "restore", "local", SVC, other["short_id"], "--in-place", "--yes"
    )
    assert (code, out) == (2, "")
    assert f"snapshot {other['short_id']} is not a backup of app (its tags: other, media)" in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1
    assert contents(data) == before
    assert not any((world.root / "aside").rglob("*.txt"))


@pytest.mark.integration
@tb.needs_restic
def test_a_non_empty_target_is_refused(world: SvcWorld, capsys: pytest.CaptureFixture[str]) -> None:
    backup(world, world.root / "data", SVC)
    target = world.root / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    code, out, err = world.svc(capsys, "restore", "local", SVC, "--target", str(target), "--json")
    assert code == 2
    assert f"the restore target {target} is not empty" in json.loads(out)["error"]
    assert contents(target) == {"keep.txt": b"mine\n"}
    # Inside the service's own data: refused too.
    inside = world.root / "data" / "restore-here"
    code, out, err = world.svc(capsys, "restore", "local", SVC, "--target", str(inside))
    assert code == 2
    assert "overlaps the snapshot path" in err
    assert not inside.exists()


@pytest.mark.integration
@tb.needs_restic
@pytest.mark.parametrize(
    ("prepare", "args", "code", "says"),
    [
        pytest.param("nothing", (), 1, "no backup of app in local yet (run `svc backup local app`)",
                     id="no-snapshot-yet"),
        pytest.param("backup", ("abcdef12",), 2, "no snapshot abcdef12 in local", id="unknown-id"),
        pytest.param("password", (), 1, "wrong password", id="wrong-password"),
        pytest.param("no-repo", (), 1, "(run `svc init local`)", id="missing-repository"),
    ],
)  # fmt: skip
def test_restic_pitfalls_are_one_line(
    world: SvcWorld,
    capsys: pytest.CaptureFixture[str],
    prepare: str,
    args: tuple[str, ...],
    code: int,
    says: str,
) -> None:
    match prepare:
        case "backup":
            backup(world, world.root / "data", SVC)
        case "password":
            world.password.write_text("not the password\n")
        case "no-repo":
            world.settings["repositories"]["local"]["repository"] = str(world.root / "none")
        case _:
            pass
    code_, out, err = world.svc(capsys, "restore", "local", SVC, *args, "--in-place", "--yes")
    assert (code_, out) == (code, ""), err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], err
    assert "not the password" not in err
    assert not any((world.root / "aside").rglob("*.txt"))


@pytest.mark.integration
@tb.needs_restic
def test_a_locked_repository_says_so_and_retry_lock_is_offered(
    world: SvcWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    backup(world, world.root / "data", SVC)
    # `forget` locks the repository exclusively, then blocks opening this FIFO snapshot.
    fifo = world.repo / "snapshots" / ("f" * 64)
    os.mkfifo(fifo)
    assert RESTIC is not None
    holder = subprocess.Popen(
        [RESTIC, "forget", "--keep-last", "1"],
        env=world.restic_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not world.locks():
            assert time.monotonic() < deadline, "restic forget never took its lock"
            time.sleep(0.02)
        code, out, _err = world.svc(capsys, "restore", "local", SVC, "--json")
        assert code == 1
        error = json.loads(out)["error"]
        assert f"the repository is exclusively locked by PID {holder.pid}" in error
        assert "pass --retry-lock" in error
    finally:
        holder.kill()
        holder.wait(10)
        fifo.unlink(missing_ok=True)


@pytest.mark.integration
@tb.needs_restic
def test_a_failed_move_puts_everything_back(
    world: SvcWorld, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, more = world.root / "data", world.root / "more"
    more.mkdir()
    (more / "m.txt").write_text("more\n")
    world.settings["services"][SVC]["backup"]["paths"].append(str(more))
    done = world.restic("backup", "--quiet", f"--tag={SVC}", str(data), str(more))
    assert done.returncode == 0, done.stderr
    damage(data)
    before = {"data": contents(data), "more": contents(more)}
    moves: list[tuple[Path, Path]] = []
    real_rename = rf._Journal.rename

    def failing_rename(self: rf._Journal, src: Path, dst: Path) -> None:
        moves.append((src, dst))
        if len(moves) == 4:  # both aside, the first into place, then the second fails
            raise OSError(28, "No space left on device")
        real_rename(self, src, dst)

    monkeypatch.setattr(rf._Journal, "rename", failing_rename)
    code, out, _err = world.svc(capsys, "restore", "local", SVC, "--in-place", "--yes", "--json")
    assert code == 1
    failure = json.loads(out)
    assert (
        "moving the data failed (No space left on device); every path was put back"
        in (failure["error"])
    )
    assert {"data": contents(data), "more": contents(more)} == before
    assert failure["moved"] == [] and failure["aside"] is None
    # The aside directory had nothing left in it, and was removed; the restored copy stays.
    assert [p.name.endswith(".incoming") for p in (world.root / "aside" / SVC).iterdir()] == [True]


@pytest.mark.integration
@tb.needs_restic
def test_a_failed_final_check_exits_1_and_says_where_the_old_data_is(
    world: SvcWorld, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = world.root / "data"
    backup(world, data, SVC)
    damage(data)
    real_check = rf.check_tree

    def check_tree(listing: r.LsListing, base: Path | None, roots: list[str]) -> rf.TreeCheck:
        found = real_check(listing, base, roots)
        if base is None:  # the check of the data in place: one file "went missing"
            missing = r.RestoreCheck(found.check.expected_files, 0, (f"{data}/a.txt",), ())
            return rf.TreeCheck(missing, (), found.found_files - 1)
        return found

    monkeypatch.setattr(rf, "check_tree", check_tree)
    code, out, _err = world.svc(capsys, "restore", "local", SVC, "--in-place", "--yes", "--json")
    assert code == 1
    failure = json.loads(out)
    aside = failure["aside"]
    assert aside and Path(aside).is_dir()
    assert failure["error"] == (
        f"the data in place does not match snapshot {failure['snapshot']['short_id']}: "
        f"1 missing ({data}/a.txt); the old data is kept at {aside}"
    )
    assert (rf.under(Path(aside), str(data)) / "new.txt").is_file()
    [job] = restore_jobs(world)
    assert job.state is JobState.FAILED


@pytest.mark.integration
@tb.needs_restic
def test_in_place_across_filesystems_copies_aside_and_keeps_the_copy(
    world: SvcWorld, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == world.root.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp dir")
    aside_dir = shm / f"homeops-aside-{os.getpid()}-{tmp_path.name}"
    world.settings["restore"]["aside_dir"] = str(aside_dir)
    data = world.root / "data"
    (data / "link").symlink_to("a.txt")
    original = contents(data)
    modes = {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in data.rglob("*")}
    backup(world, data, SVC)
    damage(data)
    os.chown(data / "new.txt", 65534, 65534)  # the copy aside keeps owners (run as root)
    damaged = contents(data)
    try:
        code, out, err = world.svc(capsys, "restore", "local", SVC, "--in-place", "--yes", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert contents(data) == original
        assert {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in data.rglob("*")} == (
            modes
        )
        [moved] = result["moved"]
        kept = rf.under(Path(result["aside"]), str(data))
        assert moved == {"path": str(data), "aside": str(kept), "how": "copy"}
        assert contents(kept) == damaged
        if os.geteuid() == 0:
            assert (kept / "new.txt").stat().st_uid == 65534
        # No hidden old/new copies are left beside the data, no restored copy in incoming.
        assert sorted(p.name for p in world.root.iterdir() if p.name.startswith(".")) == []
        assert [p.name for p in (aside_dir / SVC).iterdir()] == [Path(result["aside"]).name]
    finally:
        subprocess.run(["rm", "-rf", "--", str(aside_dir)], check=False)


@pytest.mark.integration
@tb.needs_restic
def test_a_failed_copy_across_filesystems_puts_the_live_data_back(
    world: SvcWorld,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == world.root.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp dir")
    aside_dir = shm / f"homeops-aside-{os.getpid()}-{tmp_path.name}"
    world.settings["restore"]["aside_dir"] = str(aside_dir)
    data = world.root / "data"
    backup(world, data, SVC)
    damage(data)
    damaged = contents(data)
    real_copy = rf._copy_tree

    def copy_tree(src: Path, dst: Path) -> None:
        # The live data is copied aside first (fine: b.bin was deleted there); the restored
        # data, copied into place next, has b.bin: that copy fails half-way.
        if src.name == "b.bin":
            raise OSError(28, "No space left on device")
        real_copy(src, dst)

    monkeypatch.setattr(rf, "_copy_tree", copy_tree)
    try:
        code, out, _err = world.svc(
            capsys, "restore", "local", SVC, "--in-place", "--yes", "--json"
        )
        assert code == 1
        failure = json.loads(out)
        aside = Path(failure["aside"])
        assert failure["error"] == (
            "moving the data failed (No space left on device); every path was put back as it "
            f"was; a copy of the live data made on the way is kept at {aside}; what was "
            f"restored is in {failure['incoming']}"
        )
        assert contents(data) == damaged  # back in place, renamed back
        assert contents(rf.under(aside, str(data))) == damaged  # the copy made aside: kept
        assert [p.name for p in world.root.iterdir() if p.name.startswith(".")] == []
    finally:
        subprocess.run(["rm", "-rf", "--", str(aside_dir)], check=False)


@pytest.mark.integration
@tb.needs_restic
def test_sigint_during_restic_restore_changes_nothing(world: SvcWorld) -> None:
    data = world.root / "data"
    backup(world, data, SVC)
    damage(data)
    damaged = contents(data)
    # restic as a wrapper that, for `restore`, says so and then hangs: a restore in progress.
    started = world.root / "restore-started"
    wrapper = world.root / "restic-slow"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" restore "*) touch {started}; exec sleep 60 ;; esac\n'
        f'exec {RESTIC} "$@"\n'
    )
    wrapper.chmod(0o755)
    world.settings["tools"] = {"restic": str(wrapper)}
    world.write()
    with subprocess.Popen(
        [tb.SVC, "--config", str(world.config), "restore", "local", SVC, "--in-place", "--yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 60
            while not started.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "no restore began"
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert out == ""
    assert "error: restore interrupted by SIGINT; the live data was not touched" in err
    assert contents(data) == damaged
    assert list((world.root / "aside" / SVC).iterdir()) == []  # nothing left behind
    [job] = restore_jobs(world)
    assert job.state is JobState.FAILED
