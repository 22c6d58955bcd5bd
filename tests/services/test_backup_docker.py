"""``svc backup`` of docker volumes, with the service stopped for the snapshot: the real restic
and the real Docker engine (tests/fixtures/dockerd.py), compose directly or through the
systemd fake's ``docker-compose-<svc>`` unit.

restic runs through a wrapper (``tools.restic``) that notes the project's container states
at the moment ``restic backup`` starts, so a test sees that they were stopped for the
snapshot, and were never stopped when the pre hook failed.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from homeops.core.jobs.model import JobState
from tests.fakes.systemd import FakeSystemd
from tests.fixtures.dockerd import ComposeProject, DockerdHandle
from tests.services import test_backup as tb
from tests.services.test_backup import RESTIC, SVC, LineReader, SvcWorld, sparse_tree

pytestmark = [pytest.mark.integration, tb.needs_restic]


@pytest.fixture(scope="session")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tb.make_template(tmp_path_factory)


@pytest.fixture
def world(restic_template: Path, tmp_path: Path, state_dir: Path) -> SvcWorld:
    return tb.make_world(tmp_path / "world", restic_template, state_dir)


@pytest.fixture
def engine_env(dockerd: DockerdHandle, monkeypatch: pytest.MonkeyPatch) -> DockerdHandle:
    """The test engine's DOCKER_HOST (and private DOCKER_CONFIG) in os.environ."""
    for key, value in dockerd.env().items():
        monkeypatch.setenv(key, value)
    return dockerd


def watch_restic(world: SvcWorld, project: ComposeProject) -> Path:
    """Put a restic wrapper in tools.restic that appends the project's container states to
    the returned file each time ``restic backup`` starts."""
    states = world.root / "states-at-backup.log"
    wrapper = world.root / "restic-watched"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" backup "*)\n'
        f"  docker ps --all --filter label=com.docker.compose.project={project.name} "
        f"--format '{{{{.State}}}}' >> {states} ;;\n"
        "esac\n"
        f'exec {RESTIC} "$@"\n'
    )
    wrapper.chmod(0o755)
    world.settings["tools"] = {"restic": str(wrapper)}
    return states


def volume_service(world: SvcWorld, project: ComposeProject, **backup: object) -> str:
    name = project.name
    record = world.service(
        name, volumes=[project.volume()], stop=True, policy=tb.NO_FORGET, **world.logging_hooks()
    )
    record["backup"].update(backup)
    record["compose"] = {"path": str(project.file)}
    return name


def started_at(project: ComposeProject, dockerd: DockerdHandle) -> list[str]:
    return [dockerd.inspect(c["ID"])["State"]["StartedAt"] for c in project.containers()]


def test_volume_saved_with_the_service_stopped_for_the_snapshot(
    world: SvcWorld, compose_project: ComposeProject, engine_env: DockerdHandle, capsys
):
    compose_project.compose("up", "-d")
    mountpoint = engine_env.volume_mountpoint(compose_project.volume())
    (mountpoint / "db.txt").write_text("rows\n")
    states = watch_restic(world, compose_project)
    name = volume_service(world, compose_project)
    code, out, err = world.svc(capsys, "backup", "local", name, "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    assert row["state"] == "ok" and row["stopped"] is True
    assert row["volumes"] == {compose_project.volume(): str(mountpoint)}
    assert states.read_text().split() == ["exited"]  # stopped while restic read the volume
    assert compose_project.states() == ["running"]  # and running again after
    listed = world.restic("ls", "--json", "latest").stdout.splitlines()
    assert f'"path":"{mountpoint}/db.txt"' in "".join(listed)
    [snapshot] = world.snapshots()
    assert snapshot["tags"] == [name] and snapshot["paths"] == [str(mountpoint)]
    assert world.hooks_ran() == [f"pre {name} local pre", f"post {name} ok {row['snapshot_id']}"]


def test_hook_order_when_pre_fails_and_when_restic_fails(
    world: SvcWorld, compose_project: ComposeProject, engine_env: DockerdHandle, capsys
):
    compose_project.compose("up", "-d")
    before = started_at(compose_project, engine_env)
    states = watch_restic(world, compose_project)
    name = volume_service(world, compose_project)
    hooks = world.logging_hooks()
    backup = world.settings["services"][name]["backup"]

    # The pre hook fails: no backup, and nothing was stopped.
    backup["pre"] = f"{hooks['pre']}; exit 1"
    code, _out, err = world.svc(capsys, "backup", "local", name)
    assert code == 1
    assert f"error: {name}: pre hook failed (exit 1)" in err
    assert not states.exists()  # restic never started
    assert started_at(compose_project, engine_env) == before  # never stopped
    assert world.hooks_ran() == [f"pre {name} local pre", f"post {name} failed "]

    # restic fails (wrong password): the containers run again and post ran all the same.
    backup["pre"] = hooks["pre"]
    world.hook_log.unlink()
    wrong = world.root / "wrong-password"
    wrong.write_text("not it\n")
    world.settings["repositories"]["local"]["password_file"] = str(wrong)
    code, _out, err = world.svc(capsys, "backup", "local", name)
    assert code == 1
    assert f"error: {name}: restic backup: wrong password" in err
    assert states.read_text().split() == ["exited"]  # stopped while restic ran
    assert compose_project.states() == ["running"]
    assert world.hooks_ran() == [f"pre {name} local pre", f"post {name} failed "]
    assert world.snapshots() == []


def test_sigint_mid_backup_starts_the_containers_again(
    world: SvcWorld, compose_project: ComposeProject, engine_env: DockerdHandle
):
    compose_project.compose("up", "-d")
    name = volume_service(world, compose_project)
    world.settings["services"][name]["backup"]["paths"] = [str(sparse_tree(world.root / "big"))]
    world.write()
    with subprocess.Popen(
        [SVC, "--config", str(world.config), "backup", "local", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            stderr = LineReader(proc.stderr)
            stderr.wait_for(rf"^{name}: \d+% ", timeout=60)
            assert compose_project.states() == ["exited"]  # stopped for the snapshot
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        lines = stderr.rest(10)
    assert proc.returncode == 130, "\n".join(lines)
    assert compose_project.states() == ["running"]
    assert world.hooks_ran() == [f"pre {name} local pre", f"post {name} interrupted "]
    [job] = world.jobs()
    assert job.state is JobState.FAILED
    assert world.locks() == []


def test_through_systemd_the_unit_is_stopped_and_started(
    world: SvcWorld,
    compose_project: ComposeProject,
    fake_systemd: FakeSystemd,
    capsys,
):
    unit = fake_systemd.add_unit(compose_project.name, compose_project.file)
    fake_systemd.run("systemctl", "start", unit).check_returncode()
    [before] = compose_project.containers()
    fake_systemd.clear_calls()
    world.settings["systemd"] = "always"
    states = watch_restic(world, compose_project)
    name = volume_service(world, compose_project)
    code, out, err = world.svc(capsys, "backup", "local", name, "--json")
    assert code == 0, err
    assert json.loads(out)["services"][0]["stopped"] is True
    # The unit's ExecStop is `stop`: its container exited (kept) while restic ran; `start`
    # ran the same container again.
    assert states.read_text().split() == ["exited"]
    [after] = compose_project.containers()
    assert (after["ID"], after["State"]) == (before["ID"], "running")
    assert [c.args[0] for c in fake_systemd.calls("systemctl")] == ["stop", "start"]
