"""svc restore against what a hostile-user review tried (real restic, no docker): symlinks
into the live data, snapshots of other paths, two restores at once, lost parent modes,
file names that are lines of their own, a Ctrl-C while hashing."""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
from pathlib import Path

import pytest

from homeops.services import restore_flow as rf
from tests.services import test_backup as tb
from tests.services.test_backup import SvcWorld, needs_restic
from tests.services.test_restore import SVC, backup, restore_world

pytestmark = [pytest.mark.integration, needs_restic]


@pytest.fixture(scope="session")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tb.make_template(tmp_path_factory)


@pytest.fixture
def world(restic_template: Path, tmp_path: Path, state_dir: Path) -> SvcWorld:
    return restore_world(tb.make_world(tmp_path / "world", restic_template, state_dir))


def svc(world: SvcWorld, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return world.svc(capsys, "restore", "local", SVC, *args)


def test_a_target_reached_through_a_symlink_into_the_live_data_is_refused(world, capsys):
    data = world.root / "data"
    backup(world, data, SVC)
    (data / "emptydir").mkdir()
    link = world.root / "linkempty"
    link.symlink_to(data / "emptydir")
    before = sorted(p.name for p in data.rglob("*"))
    code, out, err = svc(world, capsys, "--target", str(link))
    assert (code, out) == (2, ""), err
    assert "overlaps the snapshot path" in err
    assert sorted(p.name for p in data.rglob("*")) == before  # nothing written live


def test_an_aside_dir_inside_the_live_data_is_refused_before_anything_is_made(world, capsys):
    data = world.root / "data"
    backup(world, data, SVC)
    before = sorted(str(p) for p in data.rglob("*"))
    # Once through a symlink, once plainly: both refused, and neither leaves a directory.
    (world.root / "asidelink").symlink_to(data)
    for aside in (world.root / "asidelink" / ".inner", data / "aside"):
        world.settings["restore"]["aside_dir"] = str(aside)
        code, out, err = svc(world, capsys, "--in-place", "--yes")
        assert (code, out) == (2, ""), err
        assert "overlaps restore.aside_dir" in err
        assert sorted(str(p) for p in data.rglob("*")) == before


def test_a_snapshot_of_other_paths_is_not_put_in_place(world, capsys):
    """A snapshot tagged with the service but made of a path it does not back up (restic
    by hand): in place it would replace data svc was never told about."""
    elsewhere = world.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not app's\n")
    backup(world, elsewhere, SVC)
    (elsewhere / "keep.txt").write_text("changed since\n")
    code, out, err = svc(world, capsys, "--in-place", "--yes")
    assert (code, out) == (2, ""), err
    assert f"holds {elsewhere}, which is not one of app's backup.paths or volumes" in err
    assert (elsewhere / "keep.txt").read_text() == "changed since\n"
    # Into staging it is fine: nothing live is touched.
    code, out, err = svc(world, capsys, "--json")
    assert code == 0, err
    assert [d["kind"] for d in json.loads(out)["diff"]] == ["other"]


def test_a_configured_path_missing_from_the_snapshot_is_a_warning(world, capsys):
    data, extra = world.root / "data", world.root / "extra"
    world.settings["services"][SVC]["backup"]["paths"] = [str(data), str(extra)]
    backup(world, data, SVC)  # extra did not exist: restic 0.14 leaves it out of the paths
    extra.mkdir()
    (extra / "x").write_text("live\n")
    code, out, err = svc(world, capsys, "--in-place", "--yes", "--json")
    assert code == 0, err
    warning = f"{extra} is in backup.paths but not in snapshot"
    assert any(
        w.startswith(warning) and w.endswith("left as it is") for w in json.loads(out)["warnings"]
    )
    assert f"warning: app: {warning}" in err
    assert (extra / "x").read_text() == "live\n"


def test_a_second_restore_of_the_service_is_refused_while_one_runs(world, capsys):
    backup(world, world.root / "data", SVC)
    world.state.mkdir(parents=True, exist_ok=True)
    lock = world.state / f"restore-{SVC}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running restore holds it
        code, _out, err = svc(world, capsys, "--target", str(world.root / "t1"))
        assert code == 1, err
        assert "another restore of app is running" in err
        assert not (world.root / "t1").exists()
    finally:
        os.close(fd)
    code, _out, err = svc(world, capsys, "--target", str(world.root / "t1"))
    assert code == 0, err


def test_parents_made_again_in_place_get_the_snapshots_modes(world, capsys):
    """A data path whose parents are gone: they come back as they were (0755), not 0700,
    which locked a non-root service out of its data."""
    deep = world.root / "deep"
    path = deep / "a" / "b"
    path.mkdir(parents=True)
    (path / "f").write_text("data\n")
    for d in (deep, deep / "a"):
        d.chmod(0o755)
    world.settings["services"][SVC]["backup"]["paths"] = [str(path)]
    backup(world, path, SVC)
    for d in (path / "f", path, deep / "a", deep):
        d.unlink() if d.is_file() else d.rmdir()
    code, _out, err = svc(world, capsys, "--in-place", "--yes")
    assert code == 0, err
    assert (path / "f").read_text() == "data\n"
    assert stat.S_IMODE((deep / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE(deep.stat().st_mode) == 0o755


def test_a_file_name_with_a_newline_does_not_make_a_line_of_its_own(world, capsys):
    data = world.root / "data"
    (data / "nl\nforged: line").write_text("1")
    backup(world, data, SVC)
    (data / "nl\nforged: line").write_text("22")
    code, out, err = svc(world, capsys, "--target", str(world.root / "t"))
    assert code == 0, err
    assert "nl\\nforged: line" in out
    assert not any(line.startswith("forged: line") for line in out.splitlines())


def test_an_empty_target_is_refused(world, capsys):
    backup(world, world.root / "data", SVC)
    code, out, err = svc(world, capsys, "--target", "")
    assert (code, out) == (2, ""), err
    assert "--target: empty" in err


def test_hashing_a_big_file_stops_at_a_stop_request(tmp_path):
    """The comparison hashes on a thread: it asks for a stop request between chunks, so a
    Ctrl-C is not held until a many-GiB image is read to its end."""
    big = tmp_path / "big.img"
    with big.open("wb") as f:
        f.truncate(64 << 20)
    asked: list[int] = []

    def stopped() -> str | None:
        asked.append(1)
        return "SIGINT" if len(asked) >= 2 else None

    with pytest.raises(rf.RestoreInterrupted, match="SIGINT"):
        rf._digest(big, stopped)
    assert len(asked) == 2  # two chunks of 8 MiB read, not all 64 MiB


@pytest.mark.parametrize(
    ("setting", "mode"), [("staging_dir", "staging"), ("aside_dir", "in-place")]
)
def test_a_restore_dir_that_cannot_be_made_is_one_line_exit_2(world, capsys, setting, mode):
    backup(world, world.root / "data", SVC)
    afile = world.root / "afile"
    afile.write_text("a file, not a directory\n")
    world.settings["restore"][setting] = str(afile)
    args = ("--in-place", "--yes") if mode == "in-place" else ()
    code, out, err = svc(world, capsys, *args)
    assert (code, out) == (2, ""), err
    last = err.strip().splitlines()[-1]  # the logs come before it
    assert last.startswith("error: cannot make ") and "Not a directory" in last, err
    assert "OSError" not in err and "Traceback" not in err
    assert setting in last


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a 1 MB tmpfs (needs root)")
def test_a_restore_that_runs_out_of_room_says_why_and_where_it_left_things(world, capsys):
    """restic's own words are only "There were N errors": the first error says why, and
    the partial copy left on the aside filesystem is named."""
    import subprocess

    data = world.root / "data"
    (data / "big").write_bytes(os.urandom(3 << 20))
    backup(world, data, SVC)
    aside = world.root / "small"
    aside.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(aside)], check=True)
    try:
        world.settings["restore"]["aside_dir"] = str(aside)
        code, out, err = svc(world, capsys, "--in-place", "--yes", "--json")
        assert code == 1, err
        error = json.loads(out)["error"]
        assert re.search(r"There were \d+ errors; the first: no space left on device \(", error)
        assert "the live data was not touched" in error
        incoming = json.loads(out)["incoming"]
        assert incoming and f"what was restored before it stopped is in {incoming}" in error
        assert (data / "big").stat().st_size == 3 << 20  # live data as it was
    finally:
        subprocess.run(["umount", str(aside)], check=True)
