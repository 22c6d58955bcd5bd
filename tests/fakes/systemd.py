"""A fake of systemd's command line, ``systemctl`` and ``journalctl``, for ``docker-compose-<svc>``
units, driving the real Docker engine of tests/fixtures/dockerd.py.

Only systemd is faked (DESIGN.md, Tests): a unit's start and stop run the real compose project,
and its state and journal are read from the real containers. The wrappers
``tests/fakes/bin/systemctl`` and ``tests/fakes/bin/journalctl`` run this file under Debian's
``/usr/bin/python3 -I`` (stdlib only; a call costs ~50 ms plus the docker/compose commands it
runs); put ``tests/fakes/bin`` first on ``PATH`` (:meth:`FakeSystemd.env` does) and homeops
calls them as it would call systemd's.

State: a JSON file named by ``$FAKE_SYSTEMD_STATE`` (:class:`FakeSystemd` writes it)::

    {"systemd_version": 252,                 # the systemctl whose exit codes are imitated
     "docker": ["docker"], "compose": ["docker-compose"],
     "exec_start": ["up", "-d", "--remove-orphans"], "exec_stop": ["stop"],
     "units": {"docker-compose-web.service":  # compose, exec_start, exec_stop: per unit too
               {"compose_file": "/abs/docker-compose.yml", "project": "web"}},
     "runtime": {...}}                       # kept by the fake: stopped, failed, since, pid

Beside it: ``<stem>.calls.jsonl``, one JSON line per call (``prog``, ``argv``, the ``env``
entries named DOCKER_*, COMPOSE_*, SYSTEMD_*, HOMEOPS_*, PATH, PAGER, TERM, NO_COLOR, ``cwd``,
``start`` time, ``seconds``, ``exit`` and the commands it ``ran`` with their exit codes), and
``<stem>.lock`` (flock: state updates and one job per unit at a time, as systemd queues jobs).

The contract imitated is nix/modules/svc.nix's ``docker-compose-<svc>`` unit (its
``composeUnit``): ``Type=simple``, ExecStart ``<compose> -p <svc> -f <file> up
--remove-orphans`` in the foreground, ExecStop ``<compose> -p <svc> -f <file> stop``. ``stop``
keeps the containers (exited, with their anonymous volumes) and the next start's ``up`` starts
the same containers again; nothing is removed. The unit is active while a container of the
project runs, and ``failed`` when its start job failed or its containers exited non-zero
without a stop. Here ExecStop is exactly the module's (``<compose> -p P -f F stop``; the
``exec_stop`` switch, e.g. ``["down", "--remove-orphans"]``, is for a test that wants the
containers removed, which the real unit never does), ExecStart is ``up -d --remove-orphans``
(the project runs detached; ``exec_start`` changes it), and the state is read from the engine
(``docker ps --all`` with the project's compose labels, one-off containers left out).
``Restart=on-failure`` is not imitated.

What it imitates (systemd 252 as on Debian 12 unless said; ``systemd_version`` >= 253 gives the
newer exit codes where noted). A unit name without a suffix gets ``.service``, as systemctl
appends it; messages name ``<unit>.service``.

systemctl (options anywhere: ``-q``/``--quiet``, ``--no-pager``, ``--no-block``, ``--no-legend``,
``--no-ask-password``, ``--system``, ``-l``/``--full``, ``-p``/``--property`` (repeatable,
comma lists), ``--value``, ``-n``/``--lines``):

* ``start U…``: ``<compose> -p P -f F <exec_start>`` unless the unit is active (then nothing, as
  systemd starts nothing for an active unit); exit 0, silent. Compose failing: the unit becomes
  ``failed`` and systemctl prints ``Job for U failed because the control process exited with
  error code.`` and ``See "systemctl status U" and "journalctl -xeu U" for details.``, exit 1.
* ``stop U…``: ``<compose> … <exec_stop>`` when the unit is active; the unit is then ``inactive``
  (whatever exit codes the containers had; a failed unit stays failed); exit 0, silent.
* ``restart U…``: stop (when active) then start; clears a failed state, as restart does.
* Unknown unit: ``Failed to start U: Unit U not found.`` (``restart`` likewise), ``Failed to
  stop U: Unit U not loaded.``, exit 5 (the other units of the call are still handled).
* ``is-active U…``: one state per unit on stdout (``active``, ``inactive``, ``failed``; nothing
  with ``-q``); exit 0 if any is active, else 3. An unknown unit is ``inactive``: exit 3 on 252;
  on >= 253 exit 4 when every unit given is unknown (systemd PR #25689).
* ``is-failed U…``: the same lines; exit 0 if any is failed, else 1 (>= 253: 4 when all unknown).
* ``show U [-p A,B] [--value]``: ``Name=value`` lines (only the values with ``--value``), in
  this order: Id, Description, LoadState, ActiveState, SubState, FragmentPath, Result;
  an unknown unit shows ``LoadState=not-found``, ``ActiveState=inactive``, ``SubState=dead``,
  exit 0 (show does not fail on unknown units). SubState is ``running``, ``dead`` or ``failed``;
  Result ``success`` or ``exit-code``.
* ``status U``: the header line (``●`` active, ``○`` inactive, ``\u00d7`` failed), the
  ``Loaded:`` and ``Active:`` lines (``active (running) since …; 5s ago``, ``inactive (dead)``,
  ``failed (Result: exit-code)``), then the unit's last journal lines (``-n``, default 10);
  exit 0 active, 3 not active; an unknown unit prints ``Unit U could not be found.`` on stderr,
  exit 4. Not imitated: the CGroup tree, Docs and Main PID lines; the fake prints a
  ``Containers:`` line of its own instead.
* ``daemon-reload``: nothing, exit 0.

journalctl (``-u``/``--unit`` repeatable, ``-f``/``--follow``, ``-n``/``--lines`` [N] (``-n``
alone is 10; ``-f`` without ``-n`` shows the last 10), ``-e`` (``-n 1000``), ``--no-pager``,
``-q``, ``-x``, ``--no-hostname``, ``-o``/``--output`` ``short`` (default), ``short-iso`` or
``cat``):

* A unit's journal is what the foreground compose process would have written to it: the
  project's container output as ``docker-compose logs`` prints it (``app_1  | message``), lines
  of all units merged by time. ``short`` prefixes ``Mon DD HH:MM:SS HOST docker-compose[PID]:``
  (local time), ``short-iso`` ``YYYY-MM-DDTHH:MM:SS+ZZZZ HOST docker-compose[PID]:``, ``cat``
  prints the message only.
* No entries (unknown unit, no containers): ``-- No entries --`` (not with ``-q`` or ``-f``),
  exit 0.
* ``-f``: prints new lines as they come and keeps following, also across stop/start (and
  down/up with an ``exec_stop`` of ``down``): it polls the engine and skips lines it already
  printed, by timestamp (compose replays a restarted container's whole log), until it is
  signalled. Exit on SIGTERM/SIGINT is 0 (the fake's choice; the call is still recorded).

Not imitated: systemd's own journal lines (``Started …``), the journal outliving containers
(a stopped container keeps its output, but one that ``up`` recreates for a changed compose
file, or that an ``exec_stop`` of ``down`` removes, takes its past output with it here),
``--since``/``--until``, other output modes, units of other kinds, ``list-units``,
enable/disable, masking. Anything not imitated fails with a message starting ``fake
systemctl:``/``fake journalctl:`` and exit 1, so a test that strays outside the fake's
contract fails loudly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

STATE_ENV: Final = "FAKE_SYSTEMD_STATE"
BIN_DIR: Final = Path(__file__).resolve().parent / "bin"
DEFAULT_SYSTEMD_VERSION: Final = 252
UNIT_PREFIX: Final = "docker-compose-"
# What nix/modules/svc.nix's docker-compose-<svc> unit runs after ``<compose> -p P -f F``:
# ExecStart ``up --remove-orphans`` in the foreground there, detached here; ExecStop ``stop``,
# the module's exactly (containers kept, not removed).
EXEC_START: Final = ("up", "-d", "--remove-orphans")
EXEC_STOP: Final = ("stop",)
PROJECT_LABEL: Final = "com.docker.compose.project"
ONEOFF_LABEL: Final = "com.docker.compose.oneoff"
_ENV_PREFIXES: Final = ("DOCKER_", "COMPOSE_", "SYSTEMD_", "HOMEOPS_")
_ENV_NAMES: Final = frozenset({"PATH", "PAGER", "TERM", "NO_COLOR"})
_RUN_TIMEOUT_S: Final = 300.0
_OUTPUT_TAIL: Final = 2000
_FOLLOW_POLL_S: Final = 0.3

# systemctl's exit codes (LSB, systemctl(1) "EXIT STATUS").
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_NOT_RUNNING: Final = 3
EXIT_UNKNOWN: Final = 4
EXIT_NOT_INSTALLED: Final = 5

SHOW_PROPERTIES: Final = (
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "FragmentPath",
    "Result",
)


class Unsupported(Exception):
    """A call outside what the fake imitates (printed as ``fake <prog>: …``, exit 1)."""


_UNIT_TYPES: Final = (
    ".service", ".socket", ".target", ".timer", ".mount", ".automount", ".path", ".slice",
    ".scope", ".device", ".swap",
)  # fmt: skip


def unit_name(name: str) -> str:
    """``docker-compose-web`` → ``docker-compose-web.service``: systemctl appends ``.service``
    to a name without a unit type suffix."""
    return name if name.endswith(_UNIT_TYPES) else f"{name}.service"


def unit_for(service: str) -> str:
    """The unit of a compose service: ``docker-compose-<svc>.service`` (the seed's naming)."""
    return unit_name(f"{UNIT_PREFIX}{service}")


def calls_path(state_path: Path) -> Path:
    """The call log beside a state file."""
    return state_path.with_name(f"{state_path.stem}.calls.jsonl")


def lock_path(state_path: Path) -> Path:
    """The lock file beside a state file."""
    return state_path.with_name(f"{state_path.stem}.lock")


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


# -- state -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def read_state(state_path: Path) -> dict[str, Any]:
    """The state file's content (an empty fake when it does not exist yet)."""
    try:
        data = json.loads(state_path.read_text())
    except FileNotFoundError:
        data = {}
    if not isinstance(data, dict):
        raise Unsupported(f"{state_path}: the state is not a JSON object")
    data.setdefault("units", {})
    data.setdefault("runtime", {})
    return data


def write_state(state_path: Path, state: Mapping[str, Any]) -> None:
    """Replace the state file atomically (readers never see half a file)."""
    tmp = state_path.with_name(f".{state_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(state_path)


@contextlib.contextmanager
def update_state(state_path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the state under the lock."""
    with _locked(lock_path(state_path)):
        state = read_state(state_path)
        yield state
        write_state(state_path, state)


@dataclass(frozen=True)
class UnitConfig:
    """One unit of the state file."""

    name: str
    compose_file: str
    project: str
    compose: tuple[str, ...]
    exec_start: tuple[str, ...]  # compose arguments
    exec_stop: tuple[str, ...]
    description: str
    fragment_path: str


def _units(state: Mapping[str, Any]) -> dict[str, UnitConfig]:
    compose_default = tuple(state.get("compose") or ("docker-compose",))
    start_default = tuple(state.get("exec_start") or EXEC_START)
    stop_default = tuple(state.get("exec_stop") or EXEC_STOP)
    out: dict[str, UnitConfig] = {}
    for raw_name, spec in dict(state["units"]).items():
        name = unit_name(str(raw_name))
        service = name.removesuffix(".service").removeprefix(UNIT_PREFIX)
        out[name] = UnitConfig(
            name=name,
            compose_file=str(spec["compose_file"]),
            project=str(spec.get("project") or service),
            compose=tuple(spec.get("compose") or compose_default),
            exec_start=tuple(spec.get("exec_start") or start_default),
            exec_stop=tuple(spec.get("exec_stop") or stop_default),
            description=str(spec.get("description") or f"docker-compose {service}"),
            fragment_path=str(spec.get("fragment_path") or f"/etc/systemd/system/{name}"),
        )
    return out


# -- the engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """A container of a compose project as ``docker ps --all`` shows it."""

    name: str
    state: str  # running, exited, created, restarting, paused, dead
    exit_code: int | None  # from "Exited (N) …"

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")


_EXITED = re.compile(r"^Exited \((-?\d+)\)")


@dataclass
class Ran:
    """A command the fake ran for a call (kept in the call record)."""

    argv: list[str]
    exit: int
    output: str = ""


@dataclass
class Context:
    """One invocation: its state file, its streams and what it ran."""

    state_path: Path
    state: dict[str, Any]
    out: TextIO
    err: TextIO
    ran: list[Ran] = field(default_factory=list)

    @property
    def docker(self) -> tuple[str, ...]:
        return tuple(self.state.get("docker") or ("docker",))

    @property
    def version(self) -> int:
        return int(self.state.get("systemd_version") or DEFAULT_SYSTEMD_VERSION)

    def units(self) -> dict[str, UnitConfig]:
        return _units(self.state)

    def run(
        self, argv: Sequence[str], *, cwd: str | None = None, record: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_RUN_TIMEOUT_S,
            check=False,
        )
        if record:
            output = (done.stdout + done.stderr)[-_OUTPUT_TAIL:]
            self.ran.append(Ran(list(argv), done.returncode, output))
        return done

    def compose_argv(self, unit: UnitConfig) -> list[str]:
        """``<compose> -p PROJECT -f FILE`` of a unit."""
        return [*unit.compose, "-p", unit.project, "-f", unit.compose_file]

    def compose(self, unit: UnitConfig, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([*self.compose_argv(unit), *args], cwd=str(Path(unit.compose_file).parent))

    def containers(self, unit: UnitConfig, *, record: bool = True) -> list[Container]:
        """The project's containers (``record=False``: not kept in the call's ``ran``)."""
        done = self.run(
            [
                *self.docker,
                "ps",
                "--all",
                "--no-trunc",
                "--filter",
                f"label={PROJECT_LABEL}={unit.project}",
                "--filter",
                f"label={ONEOFF_LABEL}=False",
                "--format",
                "{{.Names}}\t{{.State}}\t{{.Status}}",
            ],
            record=record,
        )
        if done.returncode != 0:
            raise Unsupported(f"docker ps failed ({done.returncode}): {done.stderr.strip()}")
        found = []
        for line in done.stdout.splitlines():
            name, state, status = [*line.split("\t"), "", ""][:3]
            match = _EXITED.match(status)
            found.append(Container(name, state, int(match.group(1)) if match else None))
        return found

    def runtime(self, unit: UnitConfig) -> dict[str, Any]:
        entry = self.state["runtime"].get(unit.name)
        return dict(entry) if isinstance(entry, dict) else {}

    def set_runtime(self, unit: UnitConfig, **changes: Any) -> None:
        with update_state(self.state_path) as state:
            entry = dict(state["runtime"].get(unit.name) or {})
            entry.update(changes)
            state["runtime"][unit.name] = entry
            self.state = state


@dataclass(frozen=True)
class UnitState:
    """What systemd would report for a unit."""

    load: str  # loaded, not-found
    active: str  # active, inactive, failed
    sub: str  # running, dead, failed
    result: str  # success, exit-code
    since: float | None
    pid: int  # the journal's pid for the unit's lines
    containers: tuple[Container, ...] = ()


NOT_FOUND: Final = UnitState("not-found", "inactive", "dead", "success", None, 0)


def unit_state(ctx: Context, name: str) -> UnitState:
    """A unit's state, from the fake's runtime record and the real containers."""
    unit = ctx.units().get(unit_name(name))
    if unit is None:
        return NOT_FOUND
    containers = tuple(ctx.containers(unit))
    runtime = ctx.runtime(unit)
    since = runtime.get("since")
    since_f = float(since) if isinstance(since, int | float) else None
    pid = int(runtime.get("pid") or 0)
    if any(c.running for c in containers):
        return UnitState("loaded", "active", "running", "success", since_f, pid, containers)
    if runtime.get("failed"):
        return UnitState("loaded", "failed", "failed", "exit-code", since_f, 0, containers)
    if runtime.get("stopped") or not containers:
        return UnitState("loaded", "inactive", "dead", "success", since_f, 0, containers)
    if any(c.exit_code not in (None, 0) for c in containers):
        return UnitState("loaded", "failed", "failed", "exit-code", since_f, 0, containers)
    return UnitState("loaded", "inactive", "dead", "success", since_f, 0, containers)


# -- systemctl -------------------------------------------------------------------------------


@dataclass
class SystemctlArgs:
    verb: str = ""
    units: list[str] = field(default_factory=list)
    quiet: bool = False
    value: bool = False
    properties: list[str] = field(default_factory=list)
    lines: int = 10


_SYSTEMCTL_FLAGS: Final = frozenset(
    {
        "--no-pager",
        "--no-block",
        "--no-legend",
        "--no-ask-password",
        "--system",
        "--full",
        "-l",
    }
)


def parse_systemctl(argv: Sequence[str]) -> SystemctlArgs:
    """systemctl's command line (getopt style: options anywhere, ``--`` ends them)."""
    args = SystemctlArgs()
    positional: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if item == "--":
            positional.extend(items[i:])
            break
        if item in ("-q", "--quiet"):
            args.quiet = True
        elif item == "--value":
            args.value = True
        elif item in _SYSTEMCTL_FLAGS:
            pass
        elif item in ("-p", "--property", "-n", "--lines"):
            if i >= len(items):
                raise Unsupported(f"option requires an argument -- '{item.lstrip('-')}'")
            _systemctl_value(args, item, items[i])
            i += 1
        elif item.startswith(("--property=", "--lines=")):
            key, _, value = item.partition("=")
            _systemctl_value(args, key, value)
        elif item.startswith(("-p", "-n")) and len(item) > 2:
            _systemctl_value(args, item[:2], item[2:])
        elif item.startswith("-") and item != "-":
            raise Unsupported(f"unrecognized option '{item}'")
        else:
            positional.append(item)
    if not positional:
        raise Unsupported("no verb: list-units is not imitated")
    args.verb, args.units = positional[0], positional[1:]
    return args


def _systemctl_value(args: SystemctlArgs, key: str, value: str) -> None:
    if key in ("-p", "--property"):
        args.properties.extend(p for p in value.split(",") if p)
    else:
        try:
            args.lines = int(value)
        except ValueError:
            raise Unsupported(f"failed to parse lines '{value}'") from None


def systemctl(ctx: Context, argv: Sequence[str]) -> int:
    """Run one systemctl call; the exit code."""
    args = parse_systemctl(argv)
    verb = args.verb
    if verb == "daemon-reload":
        return EXIT_OK
    if not args.units:
        raise Unsupported(f"'{verb}' without a unit is not imitated")
    if verb in ("start", "stop", "restart"):
        return _jobs(ctx, verb, args.units)
    if verb in ("is-active", "is-failed"):
        return _is_state(ctx, verb, args)
    if verb == "show":
        return _show(ctx, args)
    if verb == "status":
        return _status(ctx, args)
    raise Unsupported(f"verb '{verb}' is not imitated")


def _jobs(ctx: Context, verb: str, names: Sequence[str]) -> int:
    code = EXIT_OK
    for raw in names:
        name = unit_name(raw)
        unit = ctx.units().get(name)
        if unit is None:
            why = "not loaded" if verb == "stop" else "not found"
            ctx.err.write(f"Failed to {verb} {name}: Unit {name} {why}.\n")
            code = EXIT_NOT_INSTALLED
            continue
        with _locked(ctx.state_path.with_name(f"{ctx.state_path.stem}.{name}.lock")):
            ctx.state = read_state(ctx.state_path)
            result = _job(ctx, verb, unit)
        if result != EXIT_OK:
            code = result if code == EXIT_OK else code
    return code


def _job(ctx: Context, verb: str, unit: UnitConfig) -> int:
    state = unit_state(ctx, unit.name)
    if verb in ("stop", "restart") and state.active == "active":
        done = ctx.compose(unit, *unit.exec_stop)
        if done.returncode != 0:
            ctx.set_runtime(unit, failed=True, stopped=False, since=time.time())
            return _job_failed(ctx, unit)
        ctx.set_runtime(unit, stopped=True, since=time.time())
    if verb == "stop" or (verb == "start" and state.active == "active"):
        return EXIT_OK
    done = ctx.compose(unit, *unit.exec_start)
    if done.returncode != 0:
        ctx.set_runtime(unit, failed=True, stopped=False, since=time.time())
        return _job_failed(ctx, unit)
    ctx.set_runtime(unit, failed=False, stopped=False, since=time.time(), pid=_journal_pid())
    return EXIT_OK


def _journal_pid() -> int:
    # The pid journal lines carry (a real unit's foreground compose): this systemctl's, which
    # is gone by then, so it is only ever printed, never reported as MainPID.
    return os.getpid()


def _job_failed(ctx: Context, unit: UnitConfig) -> int:
    ctx.err.write(
        f"Job for {unit.name} failed because the control process exited with error code.\n"
        f'See "systemctl status {unit.name}" and "journalctl -xeu {unit.name}" for details.\n'
    )
    return EXIT_FAILURE


def _is_state(ctx: Context, verb: str, args: SystemctlArgs) -> int:
    good = "active" if verb == "is-active" else "failed"
    any_good = False
    all_unknown = True
    for raw in args.units:
        state = unit_state(ctx, raw)
        if not args.quiet:
            ctx.out.write(state.active + "\n")
        any_good = any_good or state.active == good
        all_unknown = all_unknown and state.load == "not-found"
    if any_good:
        return EXIT_OK
    if all_unknown and ctx.version >= 253:
        return EXIT_UNKNOWN
    return EXIT_NOT_RUNNING if verb == "is-active" else EXIT_FAILURE


def _show(ctx: Context, args: SystemctlArgs) -> int:
    wanted = args.properties or list(SHOW_PROPERTIES)
    for index, raw in enumerate(args.units):
        name = unit_name(raw)
        state = unit_state(ctx, name)
        unit = ctx.units().get(name)
        values = {
            "Id": name,
            "Description": unit.description if unit else name,
            "LoadState": state.load,
            "ActiveState": state.active,
            "SubState": state.sub,
            "FragmentPath": unit.fragment_path if unit else "",
            "Result": state.result,
        }
        unknown = [p for p in wanted if p not in values]
        if unknown:
            raise Unsupported(f"property {unknown[0]} is not imitated")
        if index:
            ctx.out.write("\n")
        for prop in SHOW_PROPERTIES:
            if prop in wanted:
                ctx.out.write(values[prop] + "\n" if args.value else f"{prop}={values[prop]}\n")
    return EXIT_OK


def _timespan(seconds: float) -> str:
    total = max(int(seconds), 0)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    if total or not parts:
        parts.append(f"{total}s")
    return " ".join(parts[:2])


def _status(ctx: Context, args: SystemctlArgs) -> int:
    code = EXIT_OK
    for index, raw in enumerate(args.units):
        name = unit_name(raw)
        unit = ctx.units().get(name)
        if unit is None:
            ctx.err.write(f"Unit {name} could not be found.\n")
            code = EXIT_UNKNOWN
            continue
        state = unit_state(ctx, name)
        dot = {"active": "●", "failed": "\u00d7"}.get(state.active, "○")
        active = {
            "active": "active (running)",
            "failed": "failed (Result: exit-code)",
        }.get(state.active, "inactive (dead)")
        if state.since is not None:
            when = dt.datetime.fromtimestamp(state.since).astimezone()
            ago = _timespan(time.time() - state.since)
            active += f" since {when:%a %Y-%m-%d %H:%M:%S %Z}; {ago} ago"
        if index:
            ctx.out.write("\n")
        ctx.out.write(f"{dot} {name} - {unit.description}\n")
        ctx.out.write(f"     Loaded: loaded ({unit.fragment_path}; enabled; preset: enabled)\n")
        ctx.out.write(f"     Active: {active}\n")
        listed = ", ".join(f"{c.name} ({c.state})" for c in state.containers) or "none"
        ctx.out.write(f" Containers: {listed}\n")
        entries = _journal_entries(ctx, [unit], args.lines) if args.lines > 0 else []
        if entries:
            ctx.out.write("\n")
            for entry in entries:
                ctx.out.write(_format_entry(entry, "short", state.pid, hostname=True) + "\n")
        if state.active != "active" and code == EXIT_OK:
            code = EXIT_NOT_RUNNING
    return code


# -- journalctl ------------------------------------------------------------------------------


@dataclass
class JournalArgs:
    units: list[str] = field(default_factory=list)
    follow: bool = False
    lines: int | None = None  # None: all (or 10 with -f)
    output: str = "short"
    quiet: bool = False
    hostname: bool = True


_JOURNAL_FLAGS: Final = frozenset({"--no-pager", "-x", "--catalog"})
_OUTPUTS: Final = frozenset({"short", "short-iso", "cat"})


def parse_journalctl(argv: Sequence[str]) -> JournalArgs:
    """journalctl's command line, the options the fake knows."""
    args = JournalArgs()
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if item in ("-u", "--unit", "-o", "--output"):
            if i >= len(items):
                raise Unsupported(f"option requires an argument -- '{item.lstrip('-')}'")
            _journal_value(args, item, items[i])
            i += 1
        elif item.startswith(("--unit=", "--output=")):
            key, _, value = item.partition("=")
            _journal_value(args, key, value)
        elif item.startswith(("-u", "-o")) and len(item) > 2:
            _journal_value(args, item[:2], item[2:])
        elif item in ("-f", "--follow"):
            args.follow = True
        elif item in ("-q", "--quiet"):
            args.quiet = True
        elif item == "--no-hostname":
            args.hostname = False
        elif item in ("-e", "--pager-end"):
            args.lines = 1000 if args.lines is None else args.lines
        elif item in ("-n", "--lines"):
            # journalctl takes the count from the next word too ("-n 20"), unlike plain getopt.
            if i < len(items) and re.fullmatch(r"\+?\d+", items[i]):
                args.lines = int(items[i].lstrip("+"))
                i += 1
            else:
                args.lines = 10
        elif item.startswith("--lines=") or (item.startswith("-n") and len(item) > 2):
            value = item.split("=", 1)[1] if item.startswith("--") else item[2:]
            if not re.fullmatch(r"\+?\d+", value):
                raise Unsupported(f"failed to parse lines '{value}'")
            args.lines = int(value.lstrip("+"))
        elif item in _JOURNAL_FLAGS:
            pass
        else:
            raise Unsupported(f"option or argument '{item}' is not imitated")
    if not args.units:
        raise Unsupported("only -u UNIT is imitated")
    return args


def _journal_value(args: JournalArgs, key: str, value: str) -> None:
    if key in ("-u", "--unit"):
        args.units.append(unit_name(value))
    elif value in _OUTPUTS:
        args.output = value
    else:
        raise Unsupported(f"output mode '{value}' is not imitated")


@dataclass(frozen=True)
class Entry:
    """One journal line: when, which container, the message as the unit logged it."""

    ns: int  # nanoseconds since the epoch
    container: str
    message: str  # "app_1  | text", as docker-compose prints it
    unit: str = ""


# docker-compose 1.29 --timestamps:  "app_1  | 2026-12-06T22:46:35.040799076Z started"
_LOG_LINE = re.compile(
    r"^(?P<prefix>(?P<name>\S+)\s*\| )"
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))(?: (?P<msg>.*))?$"
)


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _ns(stamp: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to 9 fraction digits."""
    match = _STAMP.match(stamp)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {stamp!r}")
    base, frac, zone = match.groups()
    when = dt.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return int(when.timestamp()) * 1_000_000_000 + int(((frac or "") + "000000000")[:9])


def parse_log_line(line: str, unit: str = "") -> Entry | None:
    """An entry from a ``docker-compose logs --timestamps --no-color`` line (else None)."""
    match = _LOG_LINE.match(line.rstrip("\n"))
    if match is None:
        return None
    message = match.group("prefix") + (match.group("msg") or "")
    return Entry(_ns(match.group("ts")), match.group("name"), message, unit)


def _journal_entries(ctx: Context, units: Sequence[UnitConfig], lines: int | None) -> list[Entry]:
    entries: list[Entry] = []
    for unit in units:
        tail = ["--tail", str(lines)] if lines is not None else []
        done = ctx.compose(unit, "logs", "--no-color", "--timestamps", *tail)
        if done.returncode != 0:
            raise Unsupported(f"docker-compose logs failed ({done.returncode}): {done.stderr}")
        for line in done.stdout.splitlines():
            entry = parse_log_line(line, unit.name)
            if entry is not None:
                entries.append(entry)
    entries.sort(key=lambda e: e.ns)
    if lines is not None:
        entries = entries[-lines:] if lines else []
    return entries


def _format_entry(entry: Entry, output: str, pid: int, *, hostname: bool) -> str:
    if output == "cat":
        return entry.message
    when = dt.datetime.fromtimestamp(entry.ns / 1e9).astimezone()
    stamp = f"{when:%Y-%m-%dT%H:%M:%S%z}" if output == "short-iso" else f"{when:%b %d %H:%M:%S}"
    host = f" {socket.gethostname()}" if hostname else ""
    return f"{stamp}{host} docker-compose[{pid}]: {entry.message}"


class _Stop(Exception):
    """SIGTERM/SIGINT while following."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def journalctl(ctx: Context, argv: Sequence[str]) -> int:
    """Run one journalctl call; the exit code."""
    args = parse_journalctl(argv)
    if args.follow:
        # Followers end by a signal: end the compose children and still record the call.
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGINT, _raise_stop)
    try:
        return _journal(ctx, args)
    except _Stop:
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _journal(ctx: Context, args: JournalArgs) -> int:
    known = ctx.units()
    units = [known[name] for name in dict.fromkeys(args.units) if name in known]
    pids = {u.name: int(ctx.runtime(u).get("pid") or 0) for u in units}
    lines = args.lines if args.lines is not None or not args.follow else 10
    snapshot = time.time_ns()
    entries = _journal_entries(ctx, units, lines) if units else []
    for entry in entries:
        ctx.out.write(_format_entry(entry, args.output, pids[entry.unit], hostname=args.hostname))
        ctx.out.write("\n")
    if not entries and not args.quiet and not args.follow:
        ctx.out.write("-- No entries --\n")
    ctx.out.flush()
    if args.follow:
        _Follower(ctx, args, pids, entries, snapshot).run(units)
    return EXIT_OK


class _Follower:
    """``journalctl -f``: one ``docker-compose logs --follow`` per unit whose project runs,
    started again when it ends and the project runs again; lines already printed (compose
    replays a container's whole log) are skipped by timestamp."""

    def __init__(
        self,
        ctx: Context,
        args: JournalArgs,
        pids: Mapping[str, int],
        printed: Sequence[Entry],
        snapshot_ns: int,
    ) -> None:
        self.ctx = ctx
        self.args = args
        self.pids = pids
        # A container's last printed line; one not printed yet shows lines after the snapshot
        # (older ones were either printed or cut by -n).
        self.last = {(e.unit, e.container): e.ns for e in printed}
        self.snapshot_ns = snapshot_ns
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.children: dict[str, subprocess.Popen[str]] = {}

    def run(self, units: Sequence[UnitConfig]) -> None:
        try:
            while not self.closed.is_set():
                for unit in units:
                    with self.lock:
                        proc = self.children.get(unit.name)
                    if proc is not None and proc.poll() is None:
                        continue
                    if any(c.running for c in self.ctx.containers(unit, record=False)):
                        self._spawn(unit)
                self.closed.wait(_FOLLOW_POLL_S)
        finally:
            with self.lock:
                running = list(self.children.values())
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            for proc in running:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)

    def _spawn(self, unit: UnitConfig) -> None:
        argv = [*self.ctx.compose_argv(unit), "logs", "--no-color", "--timestamps", "--follow"]
        proc = subprocess.Popen(
            argv,
            cwd=str(Path(unit.compose_file).parent),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        with self.lock:
            self.children[unit.name] = proc
            self.ctx.ran.append(Ran(argv, -1))
        threading.Thread(target=self._pump, args=(unit, proc), daemon=True).start()

    def _pump(self, unit: UnitConfig, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            entry = parse_log_line(line, unit.name)
            if entry is None:
                continue
            key = (unit.name, entry.container)
            with self.lock:
                if entry.ns <= self.last.get(key, self.snapshot_ns):
                    continue
                self.last[key] = entry.ns
                text = _format_entry(
                    entry, self.args.output, self.pids[unit.name], hostname=self.args.hostname
                )
                try:
                    self.ctx.out.write(text + "\n")
                    self.ctx.out.flush()
                except (BrokenPipeError, ValueError):
                    self.closed.set()  # the reader went away: journalctl ends as well
                    return


# -- the call log and main -------------------------------------------------------------------


def _env_subset(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(env.items()) if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}


def record_call(state_path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the call log (one write, under a lock on the log itself)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(calls_path(state_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """``systemd.py systemctl|journalctl ARGS…`` (what the wrappers in bin/ run)."""
    words = list(sys.argv[1:] if argv is None else argv)
    prog = words[0] if words else ""
    if prog not in ("systemctl", "journalctl"):
        sys.stderr.write("usage: systemd.py systemctl|journalctl ARGS...\n")
        return 2
    state_file = os.environ.get(STATE_ENV)
    if not state_file:
        sys.stderr.write(f"fake {prog}: ${STATE_ENV} is not set (see tests/fakes/systemd.py)\n")
        return EXIT_FAILURE
    state_path = Path(state_file)
    start_iso, start = _now_iso(), time.monotonic()
    ctx = Context(state_path, {"units": {}, "runtime": {}}, sys.stdout, sys.stderr)
    try:
        ctx.state = read_state(state_path)
        code = systemctl(ctx, words[1:]) if prog == "systemctl" else journalctl(ctx, words[1:])
    except Unsupported as exc:
        sys.stderr.write(f"fake {prog}: {exc}\n")
        code = EXIT_FAILURE
    except BrokenPipeError:
        code = EXIT_OK
    finally:
        with contextlib.suppress(BrokenPipeError, ValueError):
            sys.stdout.flush()
    record_call(
        state_path,
        {
            "prog": prog,
            "argv": words,
            "env": _env_subset(os.environ),
            "cwd": os.getcwd(),
            "start": start_iso,
            "seconds": round(time.monotonic() - start, 3),
            "exit": code,
            "ran": [{"argv": r.argv, "exit": r.exit, "output": r.output} for r in ctx.ran],
        },
    )
    return code


# -- the test side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One recorded call (``argv[0]`` is ``systemctl`` or ``journalctl``)."""

    prog: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    start: str
    seconds: float
    exit: int
    ran: tuple[tuple[str, ...], ...]

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments after the program name."""
        return self.argv[1:]


class FakeSystemd:
    """The test side of the fake: writes the state file, reads the call log."""

    def __init__(self, state_path: Path) -> None:
        self.state_path = state_path
        self.calls_path = calls_path(state_path)

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        docker: Sequence[str] = ("docker",),
        compose: Sequence[str] = ("docker-compose",),
        exec_start: Sequence[str] = EXEC_START,
        exec_stop: Sequence[str] = EXEC_STOP,
        systemd_version: int = DEFAULT_SYSTEMD_VERSION,
    ) -> FakeSystemd:
        """A fresh fake with no units, its files in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        fake = cls(directory / "systemd.json")
        with update_state(fake.state_path) as state:
            state.clear()
            state.update(
                {
                    "systemd_version": systemd_version,
                    "docker": list(docker),
                    "compose": list(compose),
                    "exec_start": list(exec_start),
                    "exec_stop": list(exec_stop),
                    "units": {},
                    "runtime": {},
                }
            )
        fake.calls_path.unlink(missing_ok=True)
        return fake

    def add_unit(
        self,
        service: str,
        compose_file: Path,
        *,
        project: str | None = None,
        compose: Sequence[str] | None = None,
        exec_start: Sequence[str] | None = None,
        exec_stop: Sequence[str] | None = None,
    ) -> str:
        """Declare ``docker-compose-<service>.service`` for a compose file; its full name."""
        name = unit_for(service)
        spec: dict[str, Any] = {"compose_file": str(compose_file), "project": project or service}
        for key, value in (
            ("compose", compose),
            ("exec_start", exec_start),
            ("exec_stop", exec_stop),
        ):
            if value is not None:
                spec[key] = list(value)
        with update_state(self.state_path) as state:
            state["units"][name] = spec
            state["runtime"].pop(name, None)
        return name

    def remove_unit(self, service: str) -> None:
        """Forget a unit (it becomes unknown to systemctl)."""
        with update_state(self.state_path) as state:
            state["units"].pop(unit_for(service), None)
            state["runtime"].pop(unit_for(service), None)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with bin/ first on PATH and the state variable set."""
        env = dict(os.environ if base is None else base)
        rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p != str(BIN_DIR)]
        env["PATH"] = os.pathsep.join([str(BIN_DIR), *rest])
        env[STATE_ENV] = str(self.state_path)
        return env

    def run(
        self,
        prog: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``systemctl``/``journalctl`` wrapper as homeops would (through PATH)."""
        return subprocess.run(
            [prog, *args],
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def calls(self, prog: str | None = None) -> list[Call]:
        """The recorded calls, oldest first (only ``prog``'s when given)."""
        try:
            text = self.calls_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            raw = json.loads(line)
            call = Call(
                prog=str(raw["prog"]),
                argv=tuple(str(a) for a in raw["argv"]),
                env={str(k): str(v) for k, v in raw["env"].items()},
                cwd=str(raw["cwd"]),
                start=str(raw["start"]),
                seconds=float(raw["seconds"]),
                exit=int(raw["exit"]),
                ran=tuple(tuple(str(a) for a in r["argv"]) for r in raw["ran"]),
            )
            if prog is None or call.prog == prog:
                out.append(call)
        return out

    def clear_calls(self) -> None:
        """Forget the calls recorded so far."""
        self.calls_path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
