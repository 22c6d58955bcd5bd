"""Docker and Compose (CONTRACTS.md §7) as pure argv builders and parsers.

Compose comes as the ``docker compose`` plugin or as a standalone ``docker-compose``, which is
Python 1.29 on Debian (no ``ps --format json``) and Go v2 in nixpkgs. Both label every
container they create, so a project's containers are listed through the engine instead:
``docker ps --all --filter label=com.docker.compose.project=P --format '{{json .}}'``, which
every version answers the same way. Docker 20.10 (Debian 12) takes ``--format json`` as a
literal template and prints ``json``, so ``volume inspect`` uses the default output, an
indented JSON array in every version.

No I/O here: the flows run what these build through the process seam.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, assert_never

from homeops.core.errors import OperationalError, UsageError

DOCKER: Final = "docker"
COMPOSE_PLUGIN: Final = ("docker", "compose")
COMPOSE_STANDALONE: Final = ("docker-compose",)

PROJECT_LABEL: Final = "com.docker.compose.project"
SERVICE_LABEL: Final = "com.docker.compose.service"
ONEOFF_LABEL: Final = "com.docker.compose.oneoff"
NUMBER_LABEL: Final = "com.docker.compose.container-number"

# Compose v2's rule for project names (1.29 keeps the same characters): lowercase letters,
# digits, "-" and "_", starting with a letter or digit. The name is also a label value.
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# The engine's rule for volume names; it also keeps a name from being read as a flag.
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DETAIL_CHARS: Final = 200


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 3] + "..."


# -- compose --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeProject:
    """A compose project: its name (``-p``), its file (``-f``) and the compose command
    (:data:`COMPOSE_STANDALONE`, :data:`COMPOSE_PLUGIN` or a full path to a binary)."""

    name: str
    file: str
    command: tuple[str, ...] = COMPOSE_STANDALONE

    def __post_init__(self) -> None:
        if not _PROJECT.match(self.name):
            raise UsageError(
                f"compose project name {self.name!r}: use lowercase letters, digits, '-' and '_'"
            )
        if not self.file.startswith("/"):
            # The project directory (and its .env) is the file's directory: keep it fixed.
            raise UsageError(f"{self.name}: compose.path must be absolute, got {self.file!r}")
        if not self.command or not all(self.command):
            raise UsageError(f"{self.name}: the compose command is empty")

    def argv(self, *args: str) -> list[str]:
        """``<compose> -p NAME -f FILE ARGS...``."""
        return [*self.command, "-p", self.name, "-f", self.file, *args]


def _services(services: Iterable[str]) -> list[str]:
    out = []
    for service in services:
        if not _SERVICE.match(service):
            raise UsageError(f"not a compose service name: {service!r}")
        out.append(service)
    return out


def compose_up_argv(project: ComposeProject) -> list[str]:
    """``up -d``: create and start the project's containers in the background."""
    return project.argv("up", "-d")


def compose_start_argv(project: ComposeProject) -> list[str]:
    """``start``: start the existing, stopped containers."""
    return project.argv("start")


def compose_stop_argv(project: ComposeProject) -> list[str]:
    """``stop``: stop the containers, keeping them (what a backup's stop-during does)."""
    return project.argv("stop")


def compose_restart_argv(project: ComposeProject) -> list[str]:
    """``restart``."""
    return project.argv("restart")


def compose_down_argv(project: ComposeProject) -> list[str]:
    """``down``: remove the containers and the project's networks.

    Never ``--volumes``: the volumes hold the service's data (and what its backups read).
    """
    return project.argv("down")


def compose_logs_argv(
    project: ComposeProject,
    *,
    follow: bool = True,
    tail: int | None = None,
    timestamps: bool = False,
    no_color: bool = False,
    services: Iterable[str] = (),
) -> list[str]:
    """``logs [--follow] [--tail=N]``: flags 1.29 and v2 share (neither follows by default;
    the seed's ``svc logs`` does unless ``--no-follow``)."""
    args = ["logs"]
    if follow:
        args.append("--follow")
    if tail is not None:
        if isinstance(tail, bool) or tail < 0:
            raise UsageError(f"--tail: must be ≥ 0, got {tail!r}")
        args.append(f"--tail={tail}")
    if timestamps:
        args.append("--timestamps")
    if no_color:
        args.append("--no-color")
    return project.argv(*args, *_services(services))


def compose_ps_json_argv(project: ComposeProject) -> list[str]:
    """``ps --all --format json``: compose v2 only (Debian's 1.29 has no JSON output and
    fails on it); :func:`containers_argv` works with both."""
    return project.argv("ps", "--all", "--format", "json")


def containers_argv(project: str, *, docker: str = DOCKER) -> list[str]:
    """``docker ps --all`` of the containers compose labelled as ``project``'s, one JSON
    object per line."""
    if not _PROJECT.match(project):
        raise UsageError(f"compose project name {project!r}: not a valid project name")
    return [
        docker,
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        f"label={PROJECT_LABEL}={project}",
        "--format",
        "{{json .}}",
    ]


def all_containers_argv(*, docker: str = DOCKER) -> list[str]:
    """``docker ps --all`` of every container compose labelled (any project): what ``svc
    list`` groups by project with one call instead of one per service."""
    return [
        docker,
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        f"label={PROJECT_LABEL}",
        "--format",
        "{{json .}}",
    ]


# -- containers -----------------------------------------------------------------------------


class ContainerState(StrEnum):
    """The engine's container states (``State`` of ``docker ps``)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"
    UNKNOWN = "unknown"


class Health(StrEnum):
    """A container's healthcheck verdict, when it has a healthcheck."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Container:
    """One container of a compose project."""

    id: str
    name: str
    project: str
    service: str
    state: ContainerState
    status: str
    health: Health | None = None
    exit_code: int | None = None
    oneoff: bool = False  # made by `compose run`, not part of the service's steady state
    image: str = ""

    @property
    def running(self) -> bool:
        """Running and not reported unhealthy."""
        return self.state is ContainerState.RUNNING and self.health is not Health.UNHEALTHY


_EXITED = re.compile(r"^(?:Exited|Restarting) \((?P<code>-?\d+)\)")
_HEALTH = re.compile(r"\((?:health: )?(?P<health>starting|healthy|unhealthy)\)")


def parse_status(status: str) -> tuple[ContainerState, Health | None, int | None]:
    """State, health and exit code from a ``Status`` text (``Up 5 minutes (healthy)``,
    ``Exited (137) 2 seconds ago``, ``Restarting (1) ...``, ``Created``, ``Dead`` ...)."""
    text = status.strip()
    health_match = _HEALTH.search(text)
    health = Health(health_match.group("health")) if health_match else None
    code_match = _EXITED.match(text)
    code = int(code_match.group("code")) if code_match else None
    lowered = text.lower()
    if lowered.startswith("up"):
        state = ContainerState.PAUSED if "(paused)" in lowered else ContainerState.RUNNING
    elif lowered.startswith("exited"):
        state = ContainerState.EXITED
    elif lowered.startswith("restarting"):
        state = ContainerState.RESTARTING
    elif lowered.startswith("created"):
        state = ContainerState.CREATED
    elif lowered.startswith("removal"):
        state = ContainerState.REMOVING
    elif lowered.startswith("dead"):
        state = ContainerState.DEAD
    elif lowered.startswith("paused"):
        state = ContainerState.PAUSED
    else:
        state = ContainerState.UNKNOWN
    return state, health, code


def _labels(value: object) -> dict[str, str]:
    # `docker ps` joins them as "k=v,k=v"; compose v2's JSON has a map.
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str) or not value:
        return {}
    labels: dict[str, str] = {}
    last: str | None = None
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if sep and key and not key.startswith(" "):
            labels[key] = val
            last = key
        elif last is not None:
            # A comma inside a value: glue it back on.
            labels[last] += "," + part
    return labels


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _container(data: Mapping[str, object]) -> Container | None:
    labels = _labels(data.get("Labels"))
    names = data.get("Names")  # "a" from docker ps, ["a"] from compose v2
    if isinstance(names, list):
        names = ",".join(n for n in names if isinstance(n, str))
    name = _text(data, "Name") or (names if isinstance(names, str) else "")
    container_id = _text(data, "ID") or _text(data, "Id")
    if not container_id:
        return None
    status = _text(data, "Status")
    guessed, health, code = parse_status(status)
    raw_state = _text(data, "State").lower()
    try:
        state = ContainerState(raw_state) if raw_state else guessed
    except ValueError:
        state = guessed
    # Compose v2 gives Health and ExitCode as fields; docker ps only inside Status.
    raw_health = _text(data, "Health").lower()
    if raw_health in {h.value for h in Health}:
        health = Health(raw_health)
    exit_code = data.get("ExitCode")
    if (
        isinstance(exit_code, int)
        and not isinstance(exit_code, bool)
        and state
        in (
            ContainerState.EXITED,
            ContainerState.DEAD,
        )
    ):
        code = exit_code
    return Container(
        id=container_id,
        name=name.removeprefix("/"),
        project=_text(data, "Project") or labels.get(PROJECT_LABEL, ""),
        service=_text(data, "Service") or labels.get(SERVICE_LABEL, ""),
        state=state,
        status=status,
        health=health,
        exit_code=code,
        oneoff=labels.get(ONEOFF_LABEL, "False").lower() == "true",
        image=_text(data, "Image"),
    )


def _json_lines(text: str) -> list[object]:
    items: list[object] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                items.append(json.loads(stripped))
            except ValueError:
                continue
    return items


def _json_items(stdout: str, what: str) -> list[object]:
    # A JSON array (indented or not), or one JSON object per line.
    text = stdout.strip()
    if not text.startswith("["):
        return _json_lines(text)
    try:
        value = json.loads(text)
    except ValueError:
        raise OperationalError(f"{what}: not JSON: {_one_line(text)!r}") from None
    return value if isinstance(value, list) else []


def parse_containers(stdout: str) -> tuple[Container, ...]:
    """``docker ps --format '{{json .}}'`` lines, or compose v2's ``ps --format json``
    (a JSON array before v2.21, JSON lines since). Lines that are not JSON are skipped."""
    found = (_container(i) for i in _json_items(stdout, "container list") if isinstance(i, dict))
    return tuple(c for c in found if c is not None)


class ProjectState(StrEnum):
    """A compose project at a glance."""

    RUNNING = "running"  # every service container runs (and none is unhealthy)
    PARTIAL = "partial"  # some do
    STOPPED = "stopped"  # containers exist, none runs
    ABSENT = "absent"  # no containers (never started, or `down`)


def project_state(containers: Iterable[Container]) -> ProjectState:
    """Summarise a project's containers; one-off ``compose run`` containers do not count."""
    steady = [c for c in containers if not c.oneoff]
    if not steady:
        return ProjectState.ABSENT
    running = sum(1 for c in steady if c.running)
    if running == len(steady):
        return ProjectState.RUNNING
    return ProjectState.PARTIAL if running else ProjectState.STOPPED


# -- volumes --------------------------------------------------------------------------------


def volume_inspect_argv(names: Sequence[str], *, docker: str = DOCKER) -> list[str]:
    """``docker volume inspect NAME...`` (default output: a JSON array in every version)."""
    if not names:
        raise UsageError("volume inspect: no volume names")
    for name in names:
        if not _VOLUME.match(name):
            raise UsageError(f"not a docker volume name: {name!r}")
    return [docker, "volume", "inspect", *names]


@dataclass(frozen=True)
class Volume:
    """One inspected volume."""

    name: str
    mountpoint: str
    driver: str = "local"


@dataclass(frozen=True)
class VolumeInspection:
    """``volume inspect`` of some names: the ones found, the ones the engine does not have,
    and any other error (the daemon unreachable ...)."""

    volumes: tuple[Volume, ...]
    missing: tuple[str, ...]
    error: str | None = None

    def mountpoints(self) -> dict[str, str]:
        """Volume name → mountpoint on the host."""
        return {v.name: v.mountpoint for v in self.volumes}

    def require(self, names: Iterable[str]) -> dict[str, str]:
        """The mountpoints of ``names``, or :class:`OperationalError` naming what is missing."""
        wanted = list(names)
        if self.error is not None:
            raise OperationalError(f"docker volume inspect: {self.error}")
        points = self.mountpoints()
        absent = [name for name in wanted if name not in points]
        if absent:
            raise OperationalError("docker volume(s) not found: " + ", ".join(absent))
        return {name: points[name] for name in wanted}


# 20.10+/28: "Error response from daemon: get NAME: no such volume"; older: "No such volume: NAME".
_NO_SUCH_VOLUME = re.compile(
    r"(?:get (?P<a>\S+): no such volume|no such volume: (?P<b>\S+))", re.IGNORECASE
)


def parse_volume_inspect(stdout: str, stderr: str, names: Sequence[str]) -> VolumeInspection:
    """``docker volume inspect`` output: found volumes from stdout (printed even when some
    name failed), missing names from stderr."""
    volumes: list[Volume] = []
    for item in _json_items(stdout, "docker volume inspect"):
        if not isinstance(item, dict):
            continue
        name, mountpoint = _text(item, "Name"), _text(item, "Mountpoint")
        if name and mountpoint:
            volumes.append(Volume(name, mountpoint, _text(item, "Driver") or "local"))
    missing: list[str] = []
    other: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        # The CLI warns about its own config file (~/.docker) without failing.
        if not line or line.startswith("WARNING:"):
            continue
        found = _NO_SUCH_VOLUME.search(line)
        if found:
            name = found.group("a") or found.group("b")
            if name not in missing:
                missing.append(name)
        elif line not in other:
            other.append(line)
    seen = {v.name for v in volumes}
    # A name neither found nor named in stderr is missing too, unless another error (the
    # daemon down) explains why nothing was found.
    error = "; ".join(other) if other else None
    if error is None:
        missing += [n for n in names if n not in seen and n not in missing]
    # In the order asked for; a name only stderr knows goes last.
    ordered = dict.fromkeys([*(n for n in names if n in missing), *missing])
    return VolumeInspection(tuple(volumes), tuple(ordered), _one_line(error) if error else None)


# -- errors ---------------------------------------------------------------------------------


class DockerFailure(StrEnum):
    """Why a docker or compose command failed, from its stderr."""

    DAEMON_UNAVAILABLE = "daemon_unavailable"
    PERMISSION_DENIED = "permission_denied"
    NO_SUCH_VOLUME = "no_such_volume"
    COMPOSE_FILE_MISSING = "compose_file_missing"
    OTHER = "other"


# docker-compose 1.29 is Python: when it cannot reach the engine it dies with a traceback
# (three chained ones) whose last line is the exception, e.g.
#   docker.errors.DockerException: Error while fetching server API version: ('Connection
#   aborted.', FileNotFoundError(2, 'No such file or directory'))
# (no socket file), ... ConnectionRefusedError(111, 'Connection refused') (a socket nobody
# listens on), ... Max retries exceeded ... [Errno 111] Connection refused (tcp://), and
# PermissionError(13, 'Permission denied') on a socket it may not open.
TRACEBACK_LINE: Final = "traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<cls>[A-Za-z_]\w*)(?::\s*(?P<text>.*))?$")
_OS_ERROR = re.compile(
    r"\w+Error\((?P<errno>\d+), '(?P<msg>[^']*)'\)"  # FileNotFoundError(2, 'No such ...')
    r"|\[Errno (?P<errno2>\d+)\] (?P<msg2>[^'\")]+)"  # [Errno 111] Connection refused
)
_API_VERSION: Final = "error while fetching server api version"
_UNREACHABLE_ERRNO: Final = frozenset({"2", "111"})  # ENOENT (no socket), ECONNREFUSED
# requests' and urllib3's exceptions for a connection that could not be made.
_CONNECTION_EXCEPTIONS: Final = frozenset(
    {"ConnectionError", "ProtocolError", "NewConnectionError", "MaxRetryError"}
)


@dataclass(frozen=True)
class _Crash:
    """The last line of a Python traceback, taken apart."""

    exception: str  # DockerException, the class without its module
    text: str  # what it said
    os_error: str | None = None  # errno of the innermost OSError it carries, if any
    os_message: str | None = None  # that OSError's strerror


def _crash(stderr: str) -> _Crash | None:
    """The traceback's exception, when ``stderr`` holds one (compose 1.29 crashing)."""
    if TRACEBACK_LINE not in stderr.lower():
        return None
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    found = _EXCEPTION_LINE.match(last)
    exception, text = (found.group("cls"), found.group("text") or "") if found else ("", last)
    errno = message = None
    for os_error in _OS_ERROR.finditer(last):
        errno = os_error.group("errno") or os_error.group("errno2")
        message = (os_error.group("msg") or os_error.group("msg2") or "").strip()
    return _Crash(exception, text, errno, message)


def _crash_detail(crash: _Crash) -> str:
    """One line for a compose crash: what it was doing and the OS error, no Python."""
    if crash.os_message is not None:
        doing = crash.text.split(":", 1)[0].strip() if ":" in crash.text else ""
        doing = doing or crash.exception or "docker-compose failed"
        return _one_line(f"docker-compose: {doing}: {crash.os_message}")
    return _one_line(f"docker-compose failed: {crash.text or crash.exception}")


def classify_docker_error(stderr: str, *, compose_file: str | None = None) -> DockerFailure:
    """The failure class of a docker/compose stderr (compose 1.29's traceback included)."""
    crash = _crash(stderr)
    if crash is not None:
        return _classify_crash(crash)
    lowered = stderr.lower()
    if "permission denied while trying to connect to the docker daemon" in lowered:
        return DockerFailure.PERMISSION_DENIED
    if (
        "cannot connect to the docker daemon" in lowered  # docker CLI, compose v2
        or "couldn't connect to docker daemon" in lowered  # compose 1.29
        or "is the docker daemon running" in lowered
    ):
        return DockerFailure.DAEMON_UNAVAILABLE
    if "no such volume" in lowered:
        return DockerFailure.NO_SUCH_VOLUME
    if (
        compose_file is not None
        and compose_file.lower() in lowered
        and ("no such file or directory" in lowered)
    ):
        return DockerFailure.COMPOSE_FILE_MISSING
    if "can't find a suitable configuration file" in lowered:
        return DockerFailure.COMPOSE_FILE_MISSING
    return DockerFailure.OTHER


def _classify_crash(crash: _Crash) -> DockerFailure:
    fetching_version = _API_VERSION in crash.text.lower()  # the first thing it asks the engine
    connecting = fetching_version or crash.exception in _CONNECTION_EXCEPTIONS
    if connecting and crash.os_error == "13":
        return DockerFailure.PERMISSION_DENIED
    if fetching_version or (connecting and crash.os_error in _UNREACHABLE_ERRNO):
        return DockerFailure.DAEMON_UNAVAILABLE
    return DockerFailure.OTHER


def failure_detail(stderr: str) -> str:
    """What a failed docker/compose call said, as one line: its stderr joined, or for a
    Python traceback (compose 1.29) only what its last line means; never the traceback."""
    crash = _crash(stderr)
    if crash is not None:
        return _crash_detail(crash)
    return _one_line(stderr) or "no message"


def failure_message(failure: DockerFailure, stderr: str) -> str:
    """A one-line explanation with a suggested fix."""
    detail = failure_detail(stderr)
    match failure:
        case DockerFailure.DAEMON_UNAVAILABLE:
            return f"the Docker daemon is not reachable ({detail}); is docker.service running?"
        case DockerFailure.PERMISSION_DENIED:
            return f"no permission on the Docker socket ({detail}); run as root or in group docker"
        case DockerFailure.NO_SUCH_VOLUME:
            return f"a docker volume does not exist ({detail}); check backup.volumes"
        case DockerFailure.COMPOSE_FILE_MISSING:
            return f"the compose file is missing ({detail}); check compose.path"
        case DockerFailure.OTHER:
            return detail
        case _:
            assert_never(failure)
