"""``svc restore`` of a docker volume: the real restic and the real Docker engine
(tests/fixtures/dockerd.py), the service stopped and started through the systemd fake's
``docker-compose-<svc>`` unit, or through docker directly (``--no-systemd``).

The volume's data is backed up by the real restic from its mountpoint, tagged with the
service, then damaged and restored in place. The moment the data is swapped, the test notes
the project's container states (so it sees that the service was down then), and afterwards
reads the restored file from inside the running container.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from homeops.services import restore_flow as rf
from tests.fakes.systemd import FakeSystemd, unit_for
from tests.fixtures.dockerd import ComposeProject, DockerdHandle
from tests.services import test_backup as tb
from tests.services.test_backup import SvcWorld
from tests.services.test_restore import backup, contents, restore_world

pytestmark = [pytest.mark.integration, tb.needs_restic]


@pytest.fixture(scope="session")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tb.make_template(tmp_path_factory)


@pytest.fixture
def world(restic_template: Path, tmp_path: Path, state_dir: Path) -> SvcWorld:
    return restore_world(tb.make_world(tmp_path / "world", restic_template, state_dir))


@pytest.fixture
def engine_env(dockerd: DockerdHandle, monkeypatch: pytest.MonkeyPatch) -> DockerdHandle:
    """The test engine's DOCKER_HOST (and private DOCKER_CONFIG) in os.environ."""
    for key, value in dockerd.env().items():
        monkeypatch.setenv(key, value)
    return dockerd


def volume_service(world: SvcWorld, project: ComposeProject) -> str:
    """The project as a service whose backup is its volume ``data``."""
    record = world.service(project.name, volumes=[project.volume()], policy=tb.NO_FORGET)
    record["compose"] = {"path": str(project.file)}
    return project.name


def fill(mountpoint: Path) -> dict[str, Any]:
    (mountpoint / "db.txt").write_text("rows 1-100\n")
    (mountpoint / "wal").mkdir()
    (mountpoint / "wal" / "0001.log").write_bytes(bytes(range(256)) * 40)
    return contents(mountpoint)


def note_states_at_swap(
    monkeypatch: pytest.MonkeyPatch, project: ComposeProject
) -> list[list[str]]:
    """The project's container states each time the data is swapped."""
    seen: list[list[str]] = []
    real = rf._swap_files

    def swap_files(*args: Any) -> None:
        seen.append(project.states())
        real(*args)

    monkeypatch.setattr(rf, "_swap_files", swap_files)
    return seen


def in_container(dockerd: DockerdHandle, project: ComposeProject, path: str) -> str:
    [container] = project.containers()
    return dockerd.docker("exec", container["ID"], "cat", path).stdout


def test_in_place_through_systemd_restores_the_volume_with_the_service_stopped(
    world: SvcWorld,
    compose_project: ComposeProject,
    fake_systemd: FakeSystemd,
    dockerd: DockerdHandle,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = volume_service(world, compose_project)
    world.settings["systemd"] = "always"
    unit = fake_systemd.add_unit(name, compose_project.file)
    assert fake_systemd.run("systemctl", "start", unit).returncode == 0
    [before] = compose_project.containers()
    mountpoint = dockerd.volume_mountpoint(compose_project.volume())
    original = fill(mountpoint)
    backup(world, mountpoint, name)
    damage_volume(mountpoint)
    damaged = contents(mountpoint)
    fake_systemd.clear_calls()
    seen = note_states_at_swap(monkeypatch, compose_project)

    code, out, err = world.svc(capsys, "restore", "local", name, "--in-place", "--yes", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert contents(mountpoint) == original
    assert contents(rf.under(Path(result["aside"]), str(mountpoint))) == damaged
    assert result["paths"] == [
        {"path": str(mountpoint), "kind": "volume", "volume": compose_project.volume()}
    ]
    assert (result["stopped"], result["via"], result["started_again"]) == (True, "systemd", True)
    # dockerd bind-mounts its data root onto itself: a volume is copied aside, never renamed.
    assert [m["how"] for m in result["moved"]] == ["copy"]
    assert [p.name for p in mountpoint.parent.iterdir()] == ["_data"]  # nothing left beside
    # Stopped through the unit (its ExecStop is `stop`: the container kept, not running while
    # the data moved), then started again.
    assert seen == [["exited"]]
    assert [c.args for c in fake_systemd.calls("systemctl")] == [
        ("stop", "--no-ask-password", unit_for(name)),
        ("start", "--no-ask-password", unit_for(name)),
    ]
    [after] = compose_project.containers()
    assert (after["ID"], after["State"]) == (before["ID"], "running")
    assert in_container(dockerd, compose_project, "/data/db.txt") == "rows 1-100\n"


def test_no_systemd_restores_through_docker_and_staging_labels_the_volume(
    world: SvcWorld,
    compose_project: ComposeProject,
    engine_env: DockerdHandle,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = volume_service(world, compose_project)
    compose_project.compose("up", "-d")
    mountpoint = engine_env.volume_mountpoint(compose_project.volume())
    original = fill(mountpoint)
    snap = backup(world, mountpoint, name)
    damage_volume(mountpoint)

    # Into staging: the service keeps running, the volume is named in the summary.
    code, out, err = world.svc(capsys, "restore", "local", name, "--json")
    assert code == 0, err
    [diff] = json.loads(out)["diff"]
    assert (diff["kind"], diff["volume"]) == ("volume", compose_project.volume())
    assert diff["changed"]["first"] == [f"{mountpoint}/db.txt"]
    assert diff["only_snapshot"]["first"] == [f"{mountpoint}/wal/0001.log"]
    assert diff["only_live"]["first"] == [f"{mountpoint}/extra.txt"]

    [before] = compose_project.containers()
    started = engine_env.inspect(before["ID"])["State"]["StartedAt"]
    seen = note_states_at_swap(monkeypatch, compose_project)
    code, out, err = world.svc(
        capsys, "restore", "local", name, snap["short_id"], "--in-place", "--yes", "--no-systemd"
    )
    assert code == 0, err
    assert "service: stopped and started again (compose)" in out
    assert contents(mountpoint) == original
    assert seen == [["exited"]]  # its container was stopped (kept) while the data moved
    [after] = compose_project.containers()
    assert after["ID"] == before["ID"] and after["State"] == "running"
    assert engine_env.inspect(after["ID"])["State"]["StartedAt"] != started
    assert in_container(engine_env, compose_project, "/data/db.txt") == "rows 1-100\n"


def damage_volume(mountpoint: Path) -> None:
    """Change db.txt, delete the WAL file, add extra.txt."""
    (mountpoint / "db.txt").write_text("rows 1-99!\n")
    (mountpoint / "wal" / "0001.log").unlink()
    (mountpoint / "extra.txt").write_text("written after the backup\n")
