"""The systemd fake (tests/fakes/systemd.py): ``systemctl``/``journalctl`` on PATH drive the real
compose projects of ``docker-compose-<svc>`` units on the test dockerd, answer with systemd's
exit codes and messages, and record every call."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fakes.systemd import (
    BIN_DIR,
    STATE_ENV,
    Context,
    FakeSystemd,
    parse_log_line,
    read_state,
)
from tests.fixtures.dockerd import ComposeProject, DockerdHandle
from tests.nix.harness import make_mock_dir, needs_nix
from tests.nix.test_svc_module import evaluate

pytestmark = pytest.mark.integration

TICKS = (
    "trap 'exit 0' TERM; i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2 & wait $!; done"
)


def _read_lines(proc: subprocess.Popen[bytes], marker: str, count: int) -> list[str]:
    """The first ``count`` stdout lines holding ``marker``, waiting at most 15 s in all."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer, found = b"", []
    deadline = time.monotonic() + 15
    while len(found) < count and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 65536) if ready else b""
        if ready and not chunk:
            break  # journalctl ended
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        found += [line.decode() for line in lines if marker.encode() in line]
    return found[:count]


def _unit(fake: FakeSystemd, project: ComposeProject, service: str | None = None) -> str:
    return fake.add_unit(service or project.name, project.file, project=project.name)


def _started_at(dockerd: DockerdHandle, project: ComposeProject) -> str:
    (row,) = project.containers()
    return str(dockerd.inspect(row["Names"])["State"]["StartedAt"])


def test_wrappers_come_first_on_path(fake_systemd: FakeSystemd):
    for prog in ("systemctl", "journalctl"):
        assert shutil.which(prog) == str(BIN_DIR / prog)
        assert os.access(BIN_DIR / prog, os.X_OK)
    assert os.environ[STATE_ENV] == str(fake_systemd.state_path)


def test_start_stop_restart_drive_the_real_containers(
    dockerd: DockerdHandle, fake_systemd: FakeSystemd, compose_project: ComposeProject
):
    unit = _unit(fake_systemd, compose_project, "web")
    assert unit == "docker-compose-web.service"

    inactive = fake_systemd.run("systemctl", "is-active", "docker-compose-web")
    assert (inactive.returncode, inactive.stdout) == (3, "inactive\n")

    started = fake_systemd.run("systemctl", "start", "docker-compose-web")
    assert (started.returncode, started.stdout, started.stderr) == (0, "", "")
    assert compose_project.states() == ["running"]
    active = fake_systemd.run("systemctl", "is-active", "docker-compose-web.service")
    assert (active.returncode, active.stdout) == (0, "active\n")
    show = fake_systemd.run(
        "systemctl", "show", "-p", "ActiveState,SubState", "--value", "docker-compose-web"
    )
    assert (show.returncode, show.stdout) == (0, "active\nrunning\n")
    status = fake_systemd.run("systemctl", "status", "--no-pager", "docker-compose-web")
    assert status.returncode == 0
    assert status.stdout.startswith("● docker-compose-web.service - ")
    assert "Active: active (running) since " in status.stdout

    first_start = _started_at(dockerd, compose_project)
    restarted = fake_systemd.run("systemctl", "restart", "docker-compose-web")
    assert restarted.returncode == 0
    assert compose_project.states() == ["running"]
    assert _started_at(dockerd, compose_project) != first_start

    (before_stop,) = compose_project.containers()
    fake_systemd.clear_calls()
    stopped = fake_systemd.run("systemctl", "stop", "docker-compose-web")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "", "")
    # ExecStop is the module's `<compose> -p P -f F stop` (nix/modules/svc.nix): the container
    # is kept, exited, with its volume; nothing is removed.
    (stop_call,) = fake_systemd.calls()
    compose = ["docker-compose", "-p", compose_project.name, "-f", str(compose_project.file)]
    assert [*compose, "stop"] in [list(argv) for argv in stop_call.ran]
    assert not [argv for argv in stop_call.ran if "down" in argv or "rm" in argv]
    (after_stop,) = compose_project.containers()
    assert (after_stop["ID"], after_stop["State"]) == (before_stop["ID"], "exited")
    assert dockerd.volume_mountpoint(compose_project.volume("data")).is_dir()
    after = fake_systemd.run("systemctl", "is-active", "docker-compose-web")
    assert (after.returncode, after.stdout) == (3, "inactive\n")
    quiet = fake_systemd.run("systemctl", "is-active", "--quiet", "docker-compose-web")
    assert (quiet.returncode, quiet.stdout) == (3, "")
    show = fake_systemd.run("systemctl", "show", "docker-compose-web", "--property=ActiveState")
    assert show.stdout == "ActiveState=inactive\n"
    status = fake_systemd.run("systemctl", "status", "docker-compose-web")
    assert status.returncode == 3
    assert status.stdout.startswith("○ docker-compose-web.service")
    assert "Active: inactive (dead)" in status.stdout
    assert f"Containers: {after_stop['Names']} (exited)" in status.stdout

    # Started again: `up` starts the same (stopped) container, not a new one.
    again = fake_systemd.run("systemctl", "start", "docker-compose-web")
    assert (again.returncode, again.stderr) == (0, "")
    (running,) = compose_project.containers()
    assert (running["ID"], running["State"]) == (before_stop["ID"], "running")
    active = fake_systemd.run("systemctl", "is-active", "docker-compose-web")
    assert (active.returncode, active.stdout) == (0, "active\n")


def test_exec_stop_down_removes_the_containers(
    dockerd: DockerdHandle, fake_systemd: FakeSystemd, compose_project: ComposeProject
):
    # The switch for a test that wants `down` (the module's unit never runs it).
    unit = fake_systemd.add_unit(
        compose_project.name, compose_project.file, exec_stop=["down", "--remove-orphans"]
    )
    assert fake_systemd.run("systemctl", "start", unit).returncode == 0
    assert compose_project.states() == ["running"]
    assert fake_systemd.run("systemctl", "stop", unit).returncode == 0
    assert compose_project.containers() == []
    assert dockerd.volume_mountpoint(compose_project.volume("data")).is_dir()  # volumes stay
    done = fake_systemd.run("systemctl", "is-active", unit)
    assert (done.returncode, done.stdout) == (3, "inactive\n")
    (_, stop, _) = fake_systemd.calls()
    assert stop.ran[-1][-2:] == ("down", "--remove-orphans")


@needs_nix
def test_the_default_unit_runs_the_modules_exec_start_and_exec_stop(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
):
    """The fake's default commands are nix/modules/svc.nix's (as the module evaluates), the
    only difference being ``up -d``: the project runs detached here."""
    root = tmp_path / "root"
    config = (
        f'{{ enable = true; servicesRoot = "{root}"; '
        'services.web.files."docker-compose.yml".source = "/unused"; }'
    )
    unit = evaluate(make_mock_dir(tmp_path_factory), config).unit("docker-compose-web")
    exec_start = unit["serviceConfig"]["ExecStart"].split()
    exec_stop = unit["serviceConfig"]["ExecStop"].split()

    fake = FakeSystemd.create(tmp_path / "systemd", compose=exec_stop[:1])
    fake.add_unit("web", root / "web" / "docker-compose.yml")
    state = read_state(fake.state_path)
    ctx = Context(fake.state_path, state, io.StringIO(), io.StringIO())
    config_unit = ctx.units()["docker-compose-web.service"]
    base = ctx.compose_argv(config_unit)
    assert [*base, *config_unit.exec_stop] == exec_stop
    assert [*base, *(a for a in config_unit.exec_start if a != "-d")] == exec_start
    assert "-d" in config_unit.exec_start


def test_start_of_an_active_unit_runs_nothing(
    fake_systemd: FakeSystemd, compose_project: ComposeProject
):
    unit = _unit(fake_systemd, compose_project)
    assert fake_systemd.run("systemctl", "start", unit).returncode == 0
    fake_systemd.clear_calls()
    assert fake_systemd.run("systemctl", "start", unit).returncode == 0
    (call,) = fake_systemd.calls()
    assert not [argv for argv in call.ran if "up" in argv]


def test_unknown_units_answer_as_systemctl_does(fake_systemd: FakeSystemd):
    start = fake_systemd.run("systemctl", "start", "docker-compose-nope")
    assert start.returncode == 5
    assert start.stderr == (
        "Failed to start docker-compose-nope.service: Unit docker-compose-nope.service not found.\n"
    )
    stop = fake_systemd.run("systemctl", "stop", "docker-compose-nope")
    assert stop.returncode == 5
    assert stop.stderr == (
        "Failed to stop docker-compose-nope.service: Unit docker-compose-nope.service not loaded.\n"
    )
    restart = fake_systemd.run("systemctl", "restart", "docker-compose-nope")
    assert restart.returncode == 5
    assert "Failed to restart docker-compose-nope.service: Unit " in restart.stderr
    is_active = fake_systemd.run("systemctl", "is-active", "docker-compose-nope")
    assert (is_active.returncode, is_active.stdout) == (3, "inactive\n")
    status = fake_systemd.run("systemctl", "status", "docker-compose-nope")
    assert status.returncode == 4
    assert status.stderr == "Unit docker-compose-nope.service could not be found.\n"
    show = fake_systemd.run("systemctl", "show", "-p", "LoadState", "docker-compose-nope")
    assert (show.returncode, show.stdout) == (0, "LoadState=not-found\n")
    journal = fake_systemd.run("journalctl", "-u", "docker-compose-nope", "--no-pager")
    assert (journal.returncode, journal.stdout) == (0, "-- No entries --\n")


def test_newer_systemd_answers_4_for_unknown_units(tmp_path: Path, dockerd: DockerdHandle):
    fake = FakeSystemd.create(tmp_path / "systemd", systemd_version=256)
    done = fake.run("systemctl", "is-active", "docker-compose-nope", env=dockerd.env())
    assert (done.returncode, done.stdout) == (4, "inactive\n")


def test_a_failing_start_and_a_dying_service_are_failed(
    dockerd: DockerdHandle, fake_systemd: FakeSystemd, tmp_path: Path
):
    broken, dying = tmp_path / "broken", tmp_path / "dying"
    dockerd.write_compose_project(broken)
    text = (broken / "docker-compose.yml").read_text()
    (broken / "docker-compose.yml").write_text(
        text.replace(dockerd.image, "homeops-test/not-imported:1")
    )
    unit = fake_systemd.add_unit("broken", broken / "docker-compose.yml")
    try:
        start = fake_systemd.run("systemctl", "start", unit)
        assert start.returncode == 1
        assert start.stderr == (
            f"Job for {unit} failed because the control process exited with error code.\n"
            f'See "systemctl status {unit}" and "journalctl -xeu {unit}" for details.\n'
        )
        failed = fake_systemd.run("systemctl", "is-active", unit)
        assert (failed.returncode, failed.stdout) == (3, "failed\n")
        assert fake_systemd.run("systemctl", "is-failed", unit).returncode == 0

        dockerd.write_compose_project(dying, "echo bye; exit 7")
        unit = fake_systemd.add_unit("dying", dying / "docker-compose.yml")
        assert fake_systemd.run("systemctl", "start", unit).returncode == 0
        deadline = time.monotonic() + 10
        while (state := fake_systemd.run("systemctl", "is-active", unit)).stdout == "active\n":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert (state.returncode, state.stdout) == (3, "failed\n")
        show = fake_systemd.run("systemctl", "show", "-p", "Result,SubState", unit)
        assert show.stdout == "SubState=failed\nResult=exit-code\n"
    finally:
        for project in (broken, dying):
            if project.exists():
                dockerd.compose(project, "down", "--volumes", check=False)


def test_the_call_log_records_every_call(
    dockerd: DockerdHandle, fake_systemd: FakeSystemd, compose_project: ComposeProject
):
    unit = _unit(fake_systemd, compose_project)
    fake_systemd.run("systemctl", "start", unit)
    fake_systemd.run("systemctl", "is-active", unit)
    fake_systemd.run("systemctl", "start", "docker-compose-nope")
    fake_systemd.run("journalctl", "-u", unit, "-n", "1", "-o", "cat")

    calls = fake_systemd.calls()
    assert [c.argv for c in calls] == [
        ("systemctl", "start", unit),
        ("systemctl", "is-active", unit),
        ("systemctl", "start", "docker-compose-nope"),
        ("journalctl", "-u", unit, "-n", "1", "-o", "cat"),
    ]
    assert [c.exit for c in calls] == [0, 0, 5, 0]
    assert all(c.env["DOCKER_HOST"] == dockerd.host for c in calls)
    assert all(c.env["PATH"].startswith(str(BIN_DIR)) for c in calls)
    compose = ["docker-compose", "-p", compose_project.name, "-f", str(compose_project.file)]
    assert [*compose, "up", "-d", "--remove-orphans"] in [list(argv) for argv in calls[0].ran]
    assert calls[2].ran == ()
    assert [c.prog for c in fake_systemd.calls("journalctl")] == ["journalctl"]
    # One JSON object per line, as documented.
    raw = [json.loads(line) for line in fake_systemd.calls_path.read_text().splitlines()]
    assert {"prog", "argv", "env", "cwd", "start", "seconds", "exit", "ran"} <= set(raw[0])


def test_journalctl_prints_the_container_output(
    dockerd: DockerdHandle, fake_systemd: FakeSystemd, tmp_path: Path
):
    directory = tmp_path / "ticker"
    dockerd.write_compose_project(directory, TICKS)
    unit = fake_systemd.add_unit("ticker", directory / "docker-compose.yml")
    try:
        assert fake_systemd.run("systemctl", "start", unit).returncode == 0
        (row,) = dockerd.containers("ticker")
        deadline = time.monotonic() + 10
        while "tick-3" not in (logs := dockerd.docker("logs", row["Names"]).stdout):
            assert time.monotonic() < deadline, logs
            time.sleep(0.1)
        done = fake_systemd.run("journalctl", "-u", unit, "--no-pager", "-o", "cat")
        lines = done.stdout.splitlines()
        assert lines[:4] == [f"app_1  | tick-{i}" for i in range(4)]

        tail = fake_systemd.run("journalctl", "-u", unit, "-n", "2", "-o", "cat").stdout
        assert len(tail.splitlines()) == 2
        numbers = [int(line.rsplit("-", 1)[1]) for line in tail.splitlines()]
        assert numbers[1] == numbers[0] + 1 and numbers[0] >= 3

        short = fake_systemd.run("journalctl", "-u", unit, "-n", "1", "--no-hostname")
        (line,) = short.stdout.splitlines()
        prefix, message = line.split(" docker-compose[", 1)
        assert len(prefix.split()) == 3  # "Dec 06 22:44:50"
        assert message.split("]: ", 1)[1].startswith("app_1  | tick-")
    finally:
        fake_systemd.run("systemctl", "stop", unit)
        dockerd.compose(directory, "down", "--volumes", check=False)


def test_journalctl_follows_until_signalled(
    dockerd: DockerdHandle, fake_systemd: FakeSystemd, tmp_path: Path
):
    directory = tmp_path / "follow"
    dockerd.write_compose_project(directory, TICKS)
    unit = fake_systemd.add_unit("follow", directory / "docker-compose.yml")
    assert fake_systemd.run("systemctl", "start", unit).returncode == 0
    try:
        with subprocess.Popen(
            ["journalctl", "-u", unit, "-f", "-o", "cat"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as proc:
            seen = [int(line.rsplit("-", 1)[1]) for line in _read_lines(proc, "tick-", 8)]
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        fake_systemd.run("systemctl", "stop", unit)
        dockerd.compose(directory, "down", "--volumes", check=False)
    assert len(seen) == 8, seen
    # New lines keep coming, each once, in order.
    assert seen == list(range(seen[0], seen[0] + 8))
    assert code == 0
    (call,) = fake_systemd.calls("journalctl")
    assert call.exit == 0
    assert call.args == ("-u", unit, "-f", "-o", "cat")


def test_unsupported_calls_fail_loudly(fake_systemd: FakeSystemd):
    done = fake_systemd.run("systemctl", "enable", "docker-compose-x")
    assert done.returncode == 1
    assert done.stderr.startswith("fake systemctl: ")
    done = fake_systemd.run("journalctl", "--since", "today", "-u", "docker-compose-x")
    assert done.returncode == 1
    assert done.stderr.startswith("fake journalctl: ")


def test_log_lines_parse_like_compose_prints_them():
    entry = parse_log_line("app_1  | 2026-12-06T22:46:35.0407Z hello | world\n", "u")
    assert entry is not None
    assert entry.container == "app_1"
    assert entry.message == "app_1  | hello | world"
    assert entry.ns % 1_000_000_000 == 40_700_000
    assert parse_log_line("Attaching to web_app_1") is None
