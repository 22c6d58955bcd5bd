"""Docker and Compose (CONTRACTS.md §7): the pure builders and parsers against recorded output
(tests/services/cases/docker_*.json). The docker CLI outputs were recorded from the real
docker CLI on this machine talking to a stand-in Engine API on a unix socket (no dockerd can
run here without network to install it); compose v2 shapes come from docker/compose sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homeops.core.errors import OperationalError, UsageError
from homeops.services import docker as d

CASES = Path(__file__).parent / "cases"
APP = d.ComposeProject("app", "/var/lib/docker-services/app/docker-compose.yml")


def _cases(name):
    return [pytest.param(c, id=c["id"]) for c in json.loads((CASES / name).read_text())]


# -- compose argv ---------------------------------------------------------------------------


def test_compose_lifecycle_argv_standalone():
    base = ["docker-compose", "-p", "app", "-f", "/var/lib/docker-services/app/docker-compose.yml"]
    assert d.compose_up_argv(APP) == [*base, "up", "-d"]
    assert d.compose_start_argv(APP) == [*base, "start"]
    assert d.compose_stop_argv(APP) == [*base, "stop"]
    assert d.compose_restart_argv(APP) == [*base, "restart"]
    assert d.compose_down_argv(APP) == [*base, "down"]


def test_compose_plugin_and_a_store_path():
    plugin = d.ComposeProject("app", "/srv/app/compose.yml", d.COMPOSE_PLUGIN)
    assert d.compose_up_argv(plugin) == [
        "docker",
        "compose",
        "-p",
        "app",
        "-f",
        "/srv/app/compose.yml",
        "up",
        "-d",
    ]
    store = d.ComposeProject(
        "app", "/srv/c.yml", ("/nix/store/abc-docker-compose/bin/docker-compose",)
    )
    assert d.compose_stop_argv(store)[0] == "/nix/store/abc-docker-compose/bin/docker-compose"
    assert d.compose_ps_json_argv(plugin)[-4:] == ["ps", "--all", "--format", "json"]


def test_down_never_removes_volumes():
    assert not {"-v", "--volumes", "--rmi"} & set(d.compose_down_argv(APP))


@pytest.mark.parametrize(
    ("kwargs", "tail"),
    [
        pytest.param({}, ["logs", "--follow"], id="default-follows"),
        pytest.param({"follow": False}, ["logs"], id="no-follow"),
        pytest.param({"follow": False, "tail": 100}, ["logs", "--tail=100"], id="tail"),
        pytest.param({"tail": 0}, ["logs", "--follow", "--tail=0"], id="tail-0"),
        pytest.param(
            {"follow": False, "timestamps": True, "no_color": True, "services": ["web", "db"]},
            ["logs", "--timestamps", "--no-color", "web", "db"],
            id="everything",
        ),
    ],
)
def test_compose_logs_argv(kwargs, tail):
    assert d.compose_logs_argv(APP, **kwargs) == APP.argv(*tail)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        pytest.param(lambda: d.ComposeProject("App", "/x.yml"), "lowercase", id="uppercase"),
        pytest.param(lambda: d.ComposeProject("-p", "/x.yml"), "lowercase", id="flag-like"),
        pytest.param(lambda: d.ComposeProject("a b", "/x.yml"), "lowercase", id="space"),
        pytest.param(lambda: d.ComposeProject("app", "x.yml"), "must be absolute", id="relative"),
        pytest.param(lambda: d.ComposeProject("app", "/x.yml", ()), "command is empty", id="cmd"),
        pytest.param(lambda: d.compose_logs_argv(APP, tail=-1), "--tail", id="tail-negative"),
        pytest.param(lambda: d.compose_logs_argv(APP, services=["--x"]), "service", id="svc"),
        pytest.param(lambda: d.containers_argv("Bad Name"), "project name", id="ps-name"),
        pytest.param(lambda: d.volume_inspect_argv([]), "no volume names", id="no-volumes"),
        pytest.param(lambda: d.volume_inspect_argv(["-f"]), "volume name", id="flag-volume"),
    ],
)
def test_builders_refuse(build, error):
    with pytest.raises(UsageError, match=error):
        build()


def test_containers_argv_lists_through_the_engine_labels():
    assert d.containers_argv("app") == [
        "docker",
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        "label=com.docker.compose.project=app",
        "--format",
        "{{json .}}",
    ]


def test_volume_inspect_argv_uses_the_default_output():
    # Docker 20.10 prints the literal word "json" for --format json: never pass it.
    argv = d.volume_inspect_argv(["app_data", "shared.v1"], docker="/usr/bin/docker")
    assert argv == ["/usr/bin/docker", "volume", "inspect", "app_data", "shared.v1"]
    assert "--format" not in argv


# -- containers -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("docker_containers.json"))
def test_parse_containers(case):
    containers = d.parse_containers(case["stdout"])
    got = [
        {
            "name": c.name,
            "service": c.service,
            "project": c.project,
            "state": c.state.value,
            "health": c.health.value if c.health else None,
            "exit_code": c.exit_code,
            "oneoff": c.oneoff,
            "running": c.running,
        }
        for c in containers
    ]
    assert got == case["expect"]
    assert d.project_state(containers) == d.ProjectState(case["project_state"])
    assert all(c.id for c in containers)


def test_parse_containers_refuses_a_broken_array():
    with pytest.raises(OperationalError, match="container list: not JSON"):
        d.parse_containers('[{"ID": "a"')


@pytest.mark.parametrize(
    ("status", "state", "health", "code"),
    [
        pytest.param("Up 5 seconds", "running", None, None, id="up"),
        pytest.param("Up Less than a second", "running", None, None, id="up-instant"),
        pytest.param("Up 5 minutes (healthy)", "running", "healthy", None, id="healthy"),
        pytest.param("Up 3 days (unhealthy)", "running", "unhealthy", None, id="unhealthy"),
        pytest.param("Up 1 second (health: starting)", "running", "starting", None, id="start"),
        pytest.param("Up 4 hours (Paused)", "paused", None, None, id="paused"),
        pytest.param("Exited (0) 3 days ago", "exited", None, 0, id="exited-0"),
        pytest.param("Exited (137) About a minute ago", "exited", None, 137, id="exited-137"),
        pytest.param("Restarting (1) 5 seconds ago", "restarting", None, 1, id="restarting"),
        pytest.param("Created", "created", None, None, id="created"),
        pytest.param("Removal In Progress", "removing", None, None, id="removing"),
        pytest.param("Dead", "dead", None, None, id="dead"),
        pytest.param("", "unknown", None, None, id="empty"),
        pytest.param("Weird status", "unknown", None, None, id="weird"),
    ],
)
def test_parse_status(status, state, health, code):
    assert d.parse_status(status) == (
        d.ContainerState(state),
        d.Health(health) if health else None,
        code,
    )


def _container(state, *, health=None, oneoff=False):
    return d.Container("id", "n", "app", "web", d.ContainerState(state), "", health, None, oneoff)


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        pytest.param([], "absent", id="none"),
        pytest.param([_container("running", oneoff=True)], "absent", id="only-a-oneoff"),
        pytest.param([_container("running"), _container("running")], "running", id="all"),
        pytest.param(
            [_container("running"), _container("exited", oneoff=True)], "running", id="oneoff-down"
        ),
        pytest.param([_container("running"), _container("exited")], "partial", id="one-down"),
        pytest.param(
            [_container("running", health=d.Health.UNHEALTHY), _container("running")],
            "partial",
            id="unhealthy-counts-as-down",
        ),
        pytest.param([_container("exited"), _container("created")], "stopped", id="stopped"),
        pytest.param([_container("restarting")], "stopped", id="crash-loop"),
    ],
)
def test_project_state(containers, expected):
    assert d.project_state(containers) == d.ProjectState(expected)


# -- volumes --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("docker_volume_inspect.json"))
def test_parse_volume_inspect(case):
    result = d.parse_volume_inspect(case["stdout"], case["stderr"], case["names"])
    expect = case["expect"]
    assert result.mountpoints() == expect["mountpoints"]
    assert list(result.missing) == expect["missing"]
    if expect["error"] is None:
        assert result.error is None
    else:
        assert result.error is not None
        assert expect["error"] in result.error
        assert "\n" not in result.error


def test_require_returns_mountpoints_in_order_or_names_the_missing():
    recorded = {c["id"]: c for c in json.loads((CASES / "docker_volume_inspect.json").read_text())}
    both = recorded["two-volumes"]
    found = d.parse_volume_inspect(both["stdout"], both["stderr"], both["names"])
    assert list(found.require(["shared", "app_data"]).items()) == [
        ("shared", "/srv/docker/volumes/shared/_data"),
        ("app_data", "/var/lib/docker/volumes/app_data/_data"),
    ]
    some = recorded["some-missing-still-prints-the-found"]
    partial = d.parse_volume_inspect(some["stdout"], some["stderr"], some["names"])
    with pytest.raises(OperationalError, match="docker volume\\(s\\) not found: nope, other"):
        partial.require(some["names"])
    down = recorded["daemon-down"]
    unreachable = d.parse_volume_inspect(down["stdout"], down["stderr"], down["names"])
    with pytest.raises(OperationalError, match="Cannot connect to the Docker daemon"):
        unreachable.require(down["names"])


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "compose_file", "failure"),
    [
        pytest.param(
            "Cannot connect to the Docker daemon at unix:///tmp/rx/nope.sock. "
            "Is the docker daemon running?\n",
            None,
            "daemon_unavailable",
            id="cli-28-no-daemon-observed",
        ),
        pytest.param(
            "Couldn't connect to Docker daemon at http+docker://localhost - is it running?\n\n"
            "If it's at a non-standard location, specify the URL with the DOCKER_HOST "
            "environment variable.\n",
            None,
            "daemon_unavailable",
            id="compose-1.29-no-daemon",
        ),
        pytest.param(
            "WARNING: Error loading config file: open /root/.docker/config.json: permission "
            "denied\npermission denied while trying to connect to the Docker daemon socket at "
            'unix:///tmp/rx/notsock: Get "http://%2Ftmp%2Frx%2Fnotsock/v1.50/containers/json": '
            "dial unix /tmp/rx/notsock: connect: permission denied\n",
            None,
            "permission_denied",
            id="cli-28-socket-permission-observed",
        ),
        pytest.param(
            "Error response from daemon: get nope: no such volume\n",
            None,
            "no_such_volume",
            id="no-such-volume-observed",
        ),
        pytest.param(
            "ERROR: .FileNotFoundError: [Errno 2] No such file or directory: "
            "'/srv/app/docker-compose.yml'\n",
            "/srv/app/docker-compose.yml",
            "compose_file_missing",
            id="compose-1.29-file-missing",
        ),
        pytest.param(
            "open /srv/app/docker-compose.yml: no such file or directory\n",
            "/srv/app/docker-compose.yml",
            "compose_file_missing",
            id="compose-v2-file-missing",
        ),
        pytest.param(
            "open /srv/app/.env: no such file or directory\n",
            "/srv/app/docker-compose.yml",
            "other",
            id="another-missing-file-is-not-the-compose-file",
        ),
        pytest.param("boom\n", None, "other", id="other"),
    ],
)
def test_classify_docker_error(stderr, compose_file, failure):
    kind = d.classify_docker_error(stderr, compose_file=compose_file)
    assert kind == d.DockerFailure(failure)
    message = d.failure_message(kind, stderr)
    assert "\n" not in message
    assert message


def test_failure_messages_suggest_a_fix():
    text = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
    assert "docker.service" in d.failure_message(d.DockerFailure.DAEMON_UNAVAILABLE, text)
    assert "group docker" in d.failure_message(d.DockerFailure.PERMISSION_DENIED, "x")
    assert "backup.volumes" in d.failure_message(d.DockerFailure.NO_SUCH_VOLUME, "x")
    assert "compose.path" in d.failure_message(d.DockerFailure.COMPOSE_FILE_MISSING, "x")
    assert d.failure_message(d.DockerFailure.OTHER, "") == "no message"


# -- docker-compose 1.29 crashing: a Python traceback on stderr ----------------------------

# What Debian's docker-compose 1.29.2 prints when it cannot reach the engine, cut to the
# head and tail of its three chained tracebacks (recorded here; the tail is verbatim).
_TB_HEAD = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/dist-packages/urllib3/connectionpool.py", line 705, in urlopen\n'
    "    httplib_response = self._make_request(\n"
    "                       ^^^^^^^^^^^^^^^^^^^\n"
    '  File "/usr/lib/python3/dist-packages/docker/transport/unixconn.py", line 30, in connect\n'
    "    sock.connect(self.unix_socket)\n"
    "FileNotFoundError: [Errno 2] No such file or directory\n\n"
    "During handling of the above exception, another exception occurred:\n\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/dist-packages/docker/api/client.py", line 221, in '
    "_retrieve_server_version\n"
    "    raise DockerException(\n"
)
_VERSION = "docker.errors.DockerException: Error while fetching server API version: "


@pytest.mark.parametrize(
    ("last", "failure", "detail"),
    [
        pytest.param(
            _VERSION + "('Connection aborted.', FileNotFoundError(2, 'No such file or directory'))",
            "daemon_unavailable",
            "No such file or directory",
            id="no-socket-file",
        ),
        pytest.param(
            _VERSION + "('Connection aborted.', ConnectionRefusedError(111, 'Connection refused'))",
            "daemon_unavailable",
            "Connection refused",
            id="socket-nobody-listens-on",
        ),
        pytest.param(
            _VERSION + "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with "
            "url: /version (Caused by NewConnectionError('<urllib3.connection.HTTPConnection "
            "object at 0x7f4838e9d990>: Failed to establish a new connection: [Errno 111] "
            "Connection refused'))",
            "daemon_unavailable",
            "Connection refused",
            id="tcp-refused",
        ),
        pytest.param(
            _VERSION + "('Connection aborted.', PermissionError(13, 'Permission denied'))",
            "permission_denied",
            "Permission denied",
            id="socket-not-ours",
        ),
        pytest.param(
            "KeyError: 'ContainerConfig'",
            "other",
            "docker-compose failed: 'ContainerConfig'",
            id="another-crash",
        ),
    ],
)
def test_a_compose_traceback_becomes_one_line(last, failure, detail):
    stderr = _TB_HEAD + last + "\n"
    kind = d.classify_docker_error(stderr, compose_file="/srv/app/docker-compose.yml")
    assert kind == d.DockerFailure(failure)
    message = d.failure_message(kind, stderr)
    assert "\n" not in message and detail in message
    assert "Traceback" not in message and "File " not in message
    assert "Error(" not in message  # no Python exception reprs either
    if kind is d.DockerFailure.DAEMON_UNAVAILABLE:
        assert message.startswith("the Docker daemon is not reachable (docker-compose: ")
        assert message.endswith("); is docker.service running?")


def _compose_stderr(tmp_path: Path, host: str) -> str:
    import subprocess

    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text("services:\n  app:\n    image: busybox\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_HOST": host}
    done = subprocess.run(
        ["docker-compose", "-p", "app", "-f", str(compose_file), "up", "-d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    return done.stderr


@pytest.mark.integration
@pytest.mark.skipif(
    not Path("/usr/bin/docker-compose").exists(), reason="Debian's docker-compose 1.29"
)
def test_the_real_compose_129_without_an_engine(tmp_path):
    import socket

    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead))  # a socket file nobody listens on: connection refused
    for host, said in [
        (f"unix://{tmp_path}/no.sock", "No such file or directory"),
        (f"unix://{dead}", "Connection refused"),
    ]:
        stderr = _compose_stderr(tmp_path, host)
        assert "Traceback (most recent call last):" in stderr  # what 1.29 does
        kind = d.classify_docker_error(stderr)
        assert kind is d.DockerFailure.DAEMON_UNAVAILABLE
        assert d.failure_message(kind, stderr) == (
            "the Docker daemon is not reachable (docker-compose: Error while fetching server "
            f"API version: {said}); is docker.service running?"
        )
