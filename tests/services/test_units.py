"""``svc start|stop|restart|logs`` (services/units.py): the pure builders, then the commands
against the real Docker engine (tests/fixtures/dockerd.py), through the systemd fake
(tests/fakes/systemd.py: its ``docker-compose-<svc>`` units drive the real compose project)
and, with ``--no-systemd``, through Debian's docker-compose directly."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from homeops.cli import run_console
from homeops.core.errors import DependencyUnavailable, OperationalError, UsageError
from homeops.services import docker as d
from homeops.services import units
from homeops.services.settings import SvcSettings
from tests.fakes.systemd import FakeSystemd
from tests.fixtures.dockerd import ComposeProject, DockerdHandle
from tests.services.test_backup import LineReader

SVC = str(Path(sys.executable).parent / "svc")


def _settings(**data: Any) -> SvcSettings:
    return SvcSettings.model_validate(data)


# -- pure ------------------------------------------------------------------------------------


def test_unit_name_and_systemctl_journalctl_argv():
    assert units.unit_name("web") == "docker-compose-web.service"
    assert units.systemctl_argv("/bin/systemctl", "start", "docker-compose-web.service") == [
        "/bin/systemctl",
        "start",
        "--no-ask-password",
        "docker-compose-web.service",
    ]
    assert units.journalctl_argv("journalctl", "u.service", follow=True, tail=20) == [
        "journalctl",
        "-u",
        "u.service",
        "--no-pager",
        "-n",
        "20",
        "-f",
    ]
    assert units.journalctl_argv("journalctl", "u.service", follow=False, tail=None) == [
        "journalctl",
        "-u",
        "u.service",
        "--no-pager",
    ]
    with pytest.raises(UsageError):
        units.journalctl_argv("journalctl", "u.service", follow=False, tail=-1)


def test_compose_actions_use_the_services_project_and_file():
    settings = _settings(
        tools={"compose": "docker compose"},
        services={"web": {"compose": {"path": "/srv/web/compose.yml"}}, "db": {}},
    )
    web = units.compose_project(settings, "web")
    base = ["docker", "compose", "-p", "web", "-f", "/srv/web/compose.yml"]
    assert units.compose_action_argvs(web, units.Action.START) == [[*base, "up", "-d"]]
    assert units.compose_action_argvs(web, units.Action.STOP) == [[*base, "stop"]]
    assert units.compose_action_argvs(web, units.Action.RESTART) == [
        [*base, "stop"],
        [*base, "up", "-d"],
    ]
    db = units.compose_project(settings, "db")
    assert db.file == "/var/lib/docker-services/db/docker-compose.yml"  # the seed's default


def test_docker_stop_start_take_container_ids_only():
    ids = ["a" * 64, "0123abcd"]
    assert units.docker_stop_argv("docker", ids) == ["docker", "stop", *ids]
    assert units.docker_start_argv("/bin/docker", ids) == ["/bin/docker", "start", *ids]
    for bad in ([], ["--all"], ["web"]):
        with pytest.raises(UsageError):
            units.docker_stop_argv("docker", bad)


@pytest.mark.parametrize(
    ("setting", "no_systemd", "booted", "wanted"),
    [
        pytest.param("auto", False, True, True, id="auto-booted"),
        pytest.param("auto", False, False, False, id="auto-not-booted"),
        pytest.param("always", False, False, True, id="always"),
        pytest.param("never", False, True, False, id="never"),
        pytest.param("always", True, True, False, id="flag-wins"),
    ],
)
def test_systemd_wanted(tmp_path, setting, no_systemd, booted, wanted):
    marker = tmp_path / "run-systemd-system"
    if booted:
        marker.mkdir()
    settings = _settings(systemd=setting)
    assert units.systemd_wanted(settings, no_systemd=no_systemd, marker=marker) is wanted


def test_systemctl_errors_say_what_to_do():
    from homeops.core.process import ProcessResult

    def done(code: int, stderr: str) -> ProcessResult:
        return ProcessResult(("systemctl",), code, "", stderr, 1.0)

    offline = units.systemctl_error(
        "start",
        "u.service",
        done(1, "System has not been booted with systemd as init system (PID 1). Can't operate."),
    )
    assert isinstance(offline, DependencyUnavailable)
    assert "use --no-systemd" in str(offline)
    missing = units.systemctl_error("start", "u.service", done(5, "Unit u.service not found."))
    assert isinstance(missing, OperationalError)
    assert "no such unit" in str(missing)
    failed = units.systemctl_error("start", "u.service", done(1, "Job for u.service failed."))
    assert "see `journalctl -xeu u.service`" in str(failed)


# -- the real engine -------------------------------------------------------------------------


def _config(tmp_path: Path, services: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "services.json"
    path.write_text(json.dumps({"services": services, **top}))
    return path


def _service(project: ComposeProject) -> dict[str, Any]:
    return {project.name: {"compose": {"path": str(project.file)}}}


def run_svc(capsys, config: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = run_console("svc", ["--config", str(config), *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.integration
def test_start_stop_restart_through_the_systemd_unit(
    fake_systemd: FakeSystemd, compose_project: ComposeProject, tmp_path, capsys
):
    name = compose_project.name
    unit = fake_systemd.add_unit(name, compose_project.file)
    config = _config(tmp_path, _service(compose_project), systemd="always")

    code, out, err = run_svc(capsys, config, "start", name, "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "ok": True,
        "action": "start",
        "via": "systemd",
        "services": [
            {
                "service": name,
                "ok": True,
                "via": "systemd",
                "state": "running",
                "error": None,
                "exit_code": 0,
            }
        ],
    }
    assert compose_project.states() == ["running"]
    [started] = compose_project.containers()

    code, out, err = run_svc(capsys, config, "stop", name)
    assert code == 0, err
    # The unit's ExecStop is `stop` (nix/modules/svc.nix): the container is kept, not running.
    assert out.splitlines()[1].split() == [name, "ok", "systemd", "stopped"]
    [stopped] = compose_project.containers()
    assert (stopped["ID"], stopped["State"]) == (started["ID"], "exited")

    code, _out, err = run_svc(capsys, config, "restart", name)
    assert code == 0, err
    [restarted] = compose_project.containers()
    assert (restarted["ID"], restarted["State"]) == (started["ID"], "running")
    assert [c.args for c in fake_systemd.calls("systemctl")] == [
        (verb, "--no-ask-password", unit) for verb in ("start", "stop", "restart")
    ]


@pytest.mark.integration
def test_no_systemd_drives_compose_directly(
    fake_systemd: FakeSystemd,
    dockerd: DockerdHandle,
    compose_project: ComposeProject,
    tmp_path,
    capsys,
    monkeypatch,
):
    name = compose_project.name
    config = _config(tmp_path, _service(compose_project), systemd="always")
    code, out, err = run_svc(capsys, config, "start", name, "--no-systemd", "--json")
    assert code == 0, err
    assert json.loads(out)["via"] == "compose"
    assert compose_project.states() == ["running"]
    asyncio.run(_containers_and_volumes(dockerd, compose_project, monkeypatch))
    code, _out, err = run_svc(capsys, config, "stop", name, "--no-systemd")
    assert code == 0, err
    assert compose_project.states() == ["exited"]  # stopped, kept
    assert fake_systemd.calls() == []


@pytest.mark.integration
def test_all_goes_on_past_a_failing_service(
    fake_systemd: FakeSystemd, compose_project: ComposeProject, tmp_path, capsys
):
    services = {
        **_service(compose_project),
        "aaa-broken": {"compose": {"path": str(tmp_path / "missing" / "docker-compose.yml")}},
        "zzz-off": {"compose": {"enable": False}},
    }
    config = _config(tmp_path, services, systemd="never")
    code, out, err = run_svc(capsys, config, "start", "all")
    assert code == 1
    rows = [line.split()[:2] for line in out.splitlines()[1:]]
    assert rows == [["aaa-broken", "failed"], [compose_project.name, "ok"]]
    missing = tmp_path / "missing" / "docker-compose.yml"
    assert f"config error: services.aaa-broken.compose.path: {missing} does not exist\n" in err
    assert "error: aaa-broken:" not in err
    assert compose_project.states() == ["running"]


@pytest.mark.integration
def test_a_unit_systemd_does_not_know(fake_systemd: FakeSystemd, tmp_path, capsys):
    config = _config(tmp_path, {"ghost": {}}, systemd="always")
    code, _out, err = run_svc(capsys, config, "start", "ghost")
    assert code == 1
    assert "systemctl start docker-compose-ghost.service: no such unit" in err


@pytest.mark.integration
def test_usage_errors(tmp_path, capsys):
    config = _config(tmp_path, {"off": {"compose": {"enable": False}}})
    code, _out, err = run_svc(capsys, config, "start", "nope")
    assert code == 2 and "no service 'nope' in the config (known: off)" in err
    code, _out, err = run_svc(capsys, config, "logs", "off")
    assert code == 2 and "off: compose.enable is false" in err


@pytest.mark.integration
def test_logs_from_the_journal_or_from_compose(
    fake_systemd: FakeSystemd, compose_project: ComposeProject, tmp_path, capsys
):
    name = compose_project.name
    unit = fake_systemd.add_unit(name, compose_project.file)
    config = _config(tmp_path, _service(compose_project), systemd="always")
    compose_project.compose("up", "-d")
    code, out, err = run_svc(capsys, config, "logs", name, "--no-follow", "--tail", "5")
    assert code == 0, err
    assert out.splitlines()[-1].endswith("| started")  # LOOP_COMMAND's first line
    [call] = fake_systemd.calls("journalctl")
    assert call.args == ("-u", unit, "--no-pager", "-n", "5")

    code, out, err = run_svc(capsys, config, "logs", name, "--no-follow", "--no-systemd")
    assert code == 0, err
    assert out.splitlines()[-1].endswith("| started")
    assert len(fake_systemd.calls("journalctl")) == 1

    # Following (the default) ends on SIGINT with exit 0, and stops journalctl with it.
    with subprocess.Popen(
        [SVC, "--config", str(config), "logs", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            LineReader(proc.stdout).wait_for(r"\| started$", timeout=30)
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert proc.returncode == 0, err
    follow = fake_systemd.calls("journalctl")[-1]
    assert follow.args == ("-u", unit, "--no-pager", "-n", "100", "-f")
    assert follow.exit == 0  # it ended (the fake records its call as it ends)


async def _containers_and_volumes(
    dockerd: DockerdHandle, project: ComposeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """units.containers and units.volume_mountpoints on a running project."""
    settings = _settings(services=_service(project))
    [container] = await units.containers(settings, project.name)
    assert (container.project, container.service) == (project.name, "app")
    assert container.state is d.ContainerState.RUNNING
    volume = project.volume()
    points = await units.volume_mountpoints(settings, [volume])
    assert points == {volume: str(dockerd.volume_mountpoint(volume))}
    with pytest.raises(OperationalError, match=r"docker volume\(s\) not found: nope-vol"):
        await units.volume_mountpoints(settings, [volume, "nope-vol"])
    with monkeypatch.context() as patched:
        patched.setenv("DOCKER_HOST", f"unix://{dockerd.root}/no-such.sock")
        with pytest.raises(DependencyUnavailable, match="the Docker daemon is not reachable"):
            await units.volume_mountpoints(settings, [volume])
        with pytest.raises(DependencyUnavailable):
            await units.containers(settings, project.name)


# -- the engine unreachable, the compose file missing ----------------------------------------

_DAEMON_AWAY = (
    "the Docker daemon is not reachable (docker-compose: Error while fetching server API "
    "version: No such file or directory); is docker.service running?"
)


@pytest.mark.integration
@pytest.mark.skipif(
    not Path("/usr/bin/docker-compose").exists(), reason="Debian's docker-compose 1.29"
)
def test_no_engine_is_exit_3_in_one_line(tmp_path, capsys, monkeypatch):
    # docker-compose 1.29 dies with a Python traceback: none of it reaches the user.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nodocker.sock")
    (tmp_path / "sr" / "web").mkdir(parents=True)
    (tmp_path / "sr" / "web" / "docker-compose.yml").write_text(
        "services:\n  app:\n    image: busybox\n"
    )
    config = _config(
        tmp_path,
        {"web": {}},
        systemd="never",
        services_root=str(tmp_path / "sr"),
        tools={"compose": "/usr/bin/docker-compose"},
    )
    for verb in ("start", "stop", "restart"):
        code, out, err = run_svc(capsys, config, verb, "web")
        assert code == 3, err
        assert out.splitlines()[1].split()[:2] == ["web", "failed"]
        lines = [line for line in err.splitlines() if not line.startswith("ts=")]
        assert lines == [f"error: web: compose {verb}: {_DAEMON_AWAY}"]

    code, out, err = run_svc(capsys, config, "logs", "web", "--no-follow")
    assert (code, out) == (3, ""), err
    assert "Traceback" not in err and "File " not in err
    assert err.splitlines()[-1] == f"error: web: compose logs: {_DAEMON_AWAY}"

    code, out, err = run_svc(capsys, config, "start", "all", "--json")
    assert code == 3, err  # every service failed the same way: the daemon is not there
    [row] = json.loads(out)["services"]
    assert row["error"] == f"web: compose start: {_DAEMON_AWAY}"
    assert row["exit_code"] == 3
    assert "Traceback" not in err


def test_a_missing_compose_file_is_a_config_error_before_compose_runs(tmp_path, capsys):
    # tools.compose does not exist: running it would be exit 3, not 2.
    tools = {"compose": str(tmp_path / "no-compose")}
    root = tmp_path / "sr"
    config = _config(
        tmp_path,
        {"web": {}, "db": {"compose": {"path": str(tmp_path / "db.yml")}}},
        systemd="never",
        services_root=str(root),
        tools=tools,
    )
    code, out, err = run_svc(capsys, config, "start", "web")
    assert code == 2, err
    assert out.splitlines()[1].split()[:2] == ["web", "failed"]
    default = root / "web" / "docker-compose.yml"
    assert err.splitlines()[-1] == (
        f"config error: services.web.compose.path: not set, and the default {default} "
        "(under services_root) does not exist"
    )
    code, out, err = run_svc(capsys, config, "logs", "db", "--no-follow")
    assert (code, out) == (2, ""), err
    assert err == f"config error: services.db.compose.path: {tmp_path / 'db.yml'} does not exist\n"
    (tmp_path / "db.yml").mkdir()
    code, _out, err = run_svc(capsys, config, "stop", "db")
    assert code == 2, err
    assert f"services.db.compose.path: {tmp_path / 'db.yml'} is not a file" in err
    code, out, err = run_svc(capsys, config, "restart", "all", "--json")
    assert code == 2, err  # both failed, both for their config
    assert [r["exit_code"] for r in json.loads(out)["services"]] == [2, 2]
    assert ".FileNotFoundError" not in err


def test_naming_the_service_once():
    from homeops.services.cli.units_cmd import _naming

    assert _naming("web", "web: compose start: boom") == "web: compose start: boom"
    assert _naming("web", "config error: services.web.compose.path: x") == (
        "config error: services.web.compose.path: x"
    )
    assert _naming("web", "systemctl start docker-compose-web.service: no such unit") == (
        "systemctl start docker-compose-web.service: no such unit"
    )
    assert _naming("web", "docker-compose: not found") == "web: docker-compose: not found"
