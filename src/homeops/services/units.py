"""Service control through the process seam: start, stop, restart and logs of a service's
compose project, its containers and the mountpoints of its docker volumes.

A service runs as systemd unit ``docker-compose-<svc>`` (seed 002's naming, written by the
NixOS module) or, without systemd, as compose project ``<svc>`` run directly
(``<compose> -p <svc> -f <compose file>``). Which one is decided by ``settings.systemd``:
``always``, ``never``, or ``auto`` (systemd is running: ``/run/systemd/system`` exists, the
test sd_booted(3) makes); ``--no-systemd`` forces compose.

Through compose, ``start`` is ``up -d`` (creates what is missing), ``stop`` is ``stop`` (the
containers are kept, so are the volumes) and ``restart`` is both, as ``systemctl restart``
is. ``logs`` is ``journalctl -u <unit>`` or ``compose logs``, streamed line by line.

A backup that stops its service (``backup.stop``) uses :func:`pause` and :func:`resume`:
through systemd it stops and starts the unit (stopping its containers behind systemd's back
would end a ``Type=simple`` unit and let ``Restart=`` race the backup); through compose it
stops exactly the containers that were running and starts exactly those again.

The argv builders here are pure; the flows take the settings and raise a
:class:`~homeops.core.errors.HomeopsError` saying what failed and what to do.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, assert_never

from homeops.core.errors import (
    ConfigError,
    DependencyUnavailable,
    HomeopsError,
    OperationalError,
    UsageError,
)
from homeops.core.logging import get_logger
from homeops.services import docker as d

if TYPE_CHECKING:
    from homeops.core.process import ProcessResult
    from homeops.services.settings import SvcSettings

UNIT_PREFIX: Final = "docker-compose-"
# sd_booted(3): systemd is the init system when this directory exists.
SYSTEMD_MARKER: Final = Path("/run/systemd/system")
# A start, stop or restart: compose may have to create containers, a unit's ExecStop waits
# for them to end (docker's own stop timeout is 10 s per container).
ACTION_TIMEOUT_S: Final = 600.0
# docker ps / volume inspect: the engine answers at once or is in trouble.
QUERY_TIMEOUT_S: Final = 60.0
# `logs --follow` runs until it is stopped; the process seam still wants a bound.
FOLLOW_TIMEOUT_S: Final = 10 * 365 * 86400.0
_STDERR_LINES: Final = 3
_STOPPABLE: Final = (d.ContainerState.RUNNING, d.ContainerState.RESTARTING)

_log = get_logger("services.units")


class Action(StrEnum):
    """What `svc start|stop|restart` does to a service."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"


class Via(StrEnum):
    """How a service is driven."""

    SYSTEMD = "systemd"
    COMPOSE = "compose"


# -- pure -----------------------------------------------------------------------------------


def unit_name(service: str) -> str:
    """``docker-compose-<service>.service``."""
    return f"{UNIT_PREFIX}{service}.service"


def systemd_wanted(
    settings: SvcSettings, *, no_systemd: bool = False, marker: Path = SYSTEMD_MARKER
) -> bool:
    """Whether to go through systemd: never with ``--no-systemd``; else ``settings.systemd``
    (``auto``: systemd is the running init system)."""
    if no_systemd:
        return False
    match settings.systemd:
        case "always":
            return True
        case "never":
            return False
        case "auto":
            return marker.is_dir()
        case _:
            assert_never(settings.systemd)


def compose_command(settings: SvcSettings) -> tuple[str, ...]:
    """``tools.compose`` as argv words (``docker-compose`` or ``docker compose``)."""
    words = tuple(shlex.split(settings.tools.compose))
    if not words:
        raise UsageError("tools.compose is empty")
    return words


def compose_project(settings: SvcSettings, service: str) -> d.ComposeProject:
    """The compose project of ``service``: named after it, with its compose file."""
    return d.ComposeProject(service, str(settings.compose_file(service)), compose_command(settings))


def check_compose_file(settings: SvcSettings, service: str) -> None:
    """:class:`ConfigError` (exit 2) unless ``service``'s compose file is a file: said
    before compose runs, naming the file and the setting it comes from, instead of
    whatever compose says (1.29: a Python exception name)."""
    path = settings.compose_file(service)
    field = f"services.{service}.compose.path"
    if settings.services[service].compose.path is not None:
        where = str(path)
    else:
        where = f"not set, and the default {path} (under services_root)"
    try:
        is_file = path.is_file()
        exists = is_file or path.exists()
    except OSError as exc:  # a path too long, a loop of symlinks ...
        raise ConfigError("", field, f"{where} cannot be read: {exc.strerror}") from None
    if not exists:
        raise ConfigError("", field, f"{where} does not exist")
    if not is_file:
        raise ConfigError("", field, f"{where} is not a file")


def systemctl_argv(systemctl: str, verb: str, unit: str) -> list[str]:
    """``systemctl VERB UNIT``, never waiting on a password prompt."""
    return [systemctl, verb, "--no-ask-password", unit]


def journalctl_argv(journalctl: str, unit: str, *, follow: bool, tail: int | None) -> list[str]:
    """``journalctl -u UNIT --no-pager [-n N] [-f]``."""
    argv = [journalctl, "-u", unit, "--no-pager"]
    if tail is not None:
        if isinstance(tail, bool) or tail < 0:
            raise UsageError(f"--tail: must be ≥ 0, got {tail!r}")
        argv += ["-n", str(tail)]
    if follow:
        argv.append("-f")
    return argv


def compose_action_argvs(project: d.ComposeProject, action: Action) -> list[list[str]]:
    """What compose runs for ``action``, in order."""
    match action:
        case Action.START:
            return [d.compose_up_argv(project)]
        case Action.STOP:
            return [d.compose_stop_argv(project)]
        case Action.RESTART:
            return [d.compose_stop_argv(project), d.compose_up_argv(project)]
        case _:
            assert_never(action)


def _container_ids(ids: Iterable[str]) -> list[str]:
    out = list(ids)
    if not out:
        raise UsageError("no container ids")
    for cid in out:
        if not cid or not all(c in "0123456789abcdef" for c in cid):
            raise UsageError(f"not a container id: {cid!r}")
    return out


def docker_stop_argv(docker: str, ids: Iterable[str]) -> list[str]:
    """``docker stop ID...``."""
    return [docker, "stop", *_container_ids(ids)]


def docker_start_argv(docker: str, ids: Iterable[str]) -> list[str]:
    """``docker start ID...``."""
    return [docker, "start", *_container_ids(ids)]


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-_STDERR_LINES:]) or "no message"


def systemctl_error(verb: str, unit: str, done: ProcessResult) -> HomeopsError:
    """The error for a failed ``systemctl VERB UNIT``."""
    said = done.stderr.lower()
    if "not been booted with systemd" in said or "failed to connect to bus" in said:
        return DependencyUnavailable(
            f"systemctl {verb} {unit}: systemd is not running here ({_tail(done.stderr)}); "
            "use --no-systemd or set systemd to never"
        )
    if "not found" in said or "not loaded" in said:
        return OperationalError(
            f"systemctl {verb} {unit}: no such unit; is compose.enable set for the service "
            "in the NixOS configuration (or use --no-systemd)?"
        )
    return OperationalError(
        f"systemctl {verb} {unit} failed (exit {done.returncode}): {_tail(done.stderr)}; "
        f"see `journalctl -xeu {unit}`"
    )


def docker_error(
    what: str, done: ProcessResult, *, compose_file: str | None = None
) -> HomeopsError:
    """The error for a failed docker or compose call (exit 3 when the engine is away)."""
    failure = d.classify_docker_error(done.stderr, compose_file=compose_file)
    message = f"{what}: {d.failure_message(failure, done.stderr)}"
    match failure:
        case d.DockerFailure.DAEMON_UNAVAILABLE | d.DockerFailure.PERMISSION_DENIED:
            return DependencyUnavailable(message)
        case (
            d.DockerFailure.NO_SUCH_VOLUME
            | d.DockerFailure.COMPOSE_FILE_MISSING
            | d.DockerFailure.OTHER
        ):
            return OperationalError(f"{message} (exit {done.returncode})")
        case _:
            assert_never(failure)


# -- flows ----------------------------------------------------------------------------------


async def _run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None = None,
    on_stdout_line: Callable[[str], None] | None = None,
    on_stderr_line: Callable[[str], None] | None = None,
) -> ProcessResult:
    from homeops.core import process

    return await process.run(
        argv,
        timeout=timeout,
        cwd=cwd,
        on_stdout_line=on_stdout_line,
        on_stderr_line=on_stderr_line,
    )


def _project_dir(project: d.ComposeProject) -> str | None:
    # Compose reads the project's .env from its directory: run it there when it exists.
    parent = Path(project.file).parent
    return str(parent) if parent.is_dir() else None


async def _compose(project: d.ComposeProject, argv: list[str], what: str) -> None:
    done = await _run(argv, timeout=ACTION_TIMEOUT_S, cwd=_project_dir(project))
    if not done.ok:
        raise docker_error(f"{project.name}: compose {what}", done, compose_file=project.file)


async def _systemctl(settings: SvcSettings, verb: str, service: str) -> None:
    unit = unit_name(service)
    done = await _run(
        systemctl_argv(settings.tools.systemctl, verb, unit), timeout=ACTION_TIMEOUT_S
    )
    if not done.ok:
        raise systemctl_error(verb, unit, done)


async def act(settings: SvcSettings, service: str, action: Action, *, systemd: bool) -> Via:
    """Start, stop or restart ``service``; how it was done."""
    _log.info("action", f"{action} service", service=service, systemd=systemd)
    if systemd:
        await _systemctl(settings, str(action), service)
        return Via.SYSTEMD
    project = compose_project(settings, service)
    check_compose_file(settings, service)
    for argv in compose_action_argvs(project, action):
        await _compose(project, argv, str(action))
    return Via.COMPOSE


async def start(settings: SvcSettings, service: str, *, systemd: bool) -> Via:
    """Start ``service`` (see :func:`act`)."""
    return await act(settings, service, Action.START, systemd=systemd)


async def stop(settings: SvcSettings, service: str, *, systemd: bool) -> Via:
    """Stop ``service`` (see :func:`act`)."""
    return await act(settings, service, Action.STOP, systemd=systemd)


async def restart(settings: SvcSettings, service: str, *, systemd: bool) -> Via:
    """Restart ``service`` (see :func:`act`)."""
    return await act(settings, service, Action.RESTART, systemd=systemd)


async def containers(settings: SvcSettings, service: str) -> tuple[d.Container, ...]:
    """The containers compose made for ``service``'s project (by its label), any state."""
    done = await _run(
        d.containers_argv(service, docker=settings.tools.docker), timeout=QUERY_TIMEOUT_S
    )
    if not done.ok:
        raise docker_error(f"{service}: docker ps", done)
    return d.parse_containers(done.stdout)


async def volume_mountpoints(settings: SvcSettings, names: Sequence[str]) -> dict[str, str]:
    """Volume name → its mountpoint on this host (``docker volume inspect``), in the order
    given; :class:`OperationalError` naming the volumes that do not exist."""
    if not names:
        return {}
    done = await _run(
        d.volume_inspect_argv(list(names), docker=settings.tools.docker), timeout=QUERY_TIMEOUT_S
    )
    failure = d.classify_docker_error(done.stderr)
    if failure in (d.DockerFailure.DAEMON_UNAVAILABLE, d.DockerFailure.PERMISSION_DENIED):
        raise docker_error("docker volume inspect", done)
    inspected = d.parse_volume_inspect(done.stdout, done.stderr, list(names))
    if inspected.missing and inspected.error is None:
        raise OperationalError(
            "docker volume(s) not found: "
            + ", ".join(inspected.missing)
            + " (check backup.volumes: the engine's name, e.g. <project>_<volume>)"
        )
    return inspected.require(names)


@dataclass(frozen=True)
class Paused:
    """A service stopped for a backup: how, and what to start again."""

    service: str
    via: Via
    container_ids: tuple[str, ...] = ()


async def pause_plan(settings: SvcSettings, service: str, *, systemd: bool) -> Paused | None:
    """What :func:`pause` would stop of ``service`` (its running containers, or its unit);
    None when nothing runs, so nothing is stopped and nothing started afterwards."""
    running = tuple(
        c.id
        for c in await containers(settings, service)
        if c.state in _STOPPABLE and not c.oneoff  # `compose run` ones are not the service
    )
    if not running:
        _log.info("pause", "no container running; nothing to stop", service=service)
        return None
    if systemd:
        return Paused(service, Via.SYSTEMD)
    return Paused(service, Via.COMPOSE, running)


async def pause(settings: SvcSettings, paused: Paused) -> None:
    """Stop what ``paused`` names for a snapshot. Whatever happens here (a failure, an
    interruption half-way), the caller starts it again with :func:`resume`."""
    match paused.via:
        case Via.SYSTEMD:
            await _systemctl(settings, "stop", paused.service)
        case Via.COMPOSE:
            argv = docker_stop_argv(settings.tools.docker, paused.container_ids)
            done = await _run(argv, timeout=ACTION_TIMEOUT_S)
            if not done.ok:
                raise docker_error(f"{paused.service}: docker stop", done)
        case _:
            assert_never(paused.via)
    _log.info("pause", "service stopped", service=paused.service, via=str(paused.via))


async def resume(settings: SvcSettings, paused: Paused) -> None:
    """Start again what :func:`pause` stopped."""
    match paused.via:
        case Via.SYSTEMD:
            await _systemctl(settings, "start", paused.service)
        case Via.COMPOSE:
            argv = docker_start_argv(settings.tools.docker, paused.container_ids)
            done = await _run(argv, timeout=ACTION_TIMEOUT_S)
            if not done.ok:
                raise docker_error(f"{paused.service}: docker start", done)
        case _:
            assert_never(paused.via)
    _log.info("resume", "service started again", service=paused.service, via=str(paused.via))


def _without_tracebacks(on_line: Callable[[str], None]) -> Callable[[str], None]:
    """``on_line`` for what compose says on stderr, except a Python traceback (1.29
    crashing): from its first line on nothing is passed; the error raised at the end says
    in one line what it meant."""
    crashed = False

    def on_stderr_line(line: str) -> None:
        nonlocal crashed
        crashed = crashed or line.strip().lower() == d.TRACEBACK_LINE
        if not crashed:
            on_line(line)

    return on_stderr_line


async def logs(
    settings: SvcSettings,
    service: str,
    *,
    systemd: bool,
    follow: bool,
    tail: int | None,
    on_line: Callable[[str], None],
    on_error_line: Callable[[str], None] | None = None,
) -> None:
    """Stream ``service``'s logs to ``on_line`` (the unit's journal, or compose's logs);
    with ``follow`` until cancelled."""
    timeout = FOLLOW_TIMEOUT_S if follow else QUERY_TIMEOUT_S
    if systemd:
        unit = unit_name(service)
        argv = journalctl_argv(settings.tools.journalctl, unit, follow=follow, tail=tail)
        done = await _run(
            argv, timeout=timeout, on_stdout_line=on_line, on_stderr_line=on_error_line
        )
        if not done.ok:
            raise OperationalError(
                f"journalctl -u {unit} failed (exit {done.returncode}): {_tail(done.stderr)}"
            )
        return
    project = compose_project(settings, service)
    check_compose_file(settings, service)
    argv = d.compose_logs_argv(project, follow=follow, tail=tail, no_color=True)
    done = await _run(
        argv,
        timeout=timeout,
        cwd=_project_dir(project),
        on_stdout_line=on_line,
        on_stderr_line=_without_tracebacks(on_error_line) if on_error_line else None,
    )
    if not done.ok:
        raise docker_error(f"{service}: compose logs", done, compose_file=project.file)
