r"""The Windows VM emulator's answers to homeops' Playwright scripts (CONTRACTS.md §1, §3).

An extension of tests/fakes/winvm.py, which imports every ``tests/fakes/winvm_*.py`` for the
scripts its own interpreter cannot run. This one imitates what Windows does with the scripts
of ``homeops.windows.playwright``:

* the node and npm check (knobs under ``state["playwright"]``: ``node`` None is node.exe
  missing, ``version`` None is the npm package missing, another ``version`` a mismatch);
* ``New-Item`` of ``C:\ProgramData\win-automation\playwright``;
* running the uploaded ``install.ps1``: its ``Register-ScheduledTask`` becomes the task
  ``WinAutomation-Playwright`` in ``state["tasks"]`` (what ``WinVm.tasks()`` shows; a second
  registration without ``-Force`` fails as on Windows). Its argv is a REAL ``node
  launch-server.js`` — the file homeops uploaded over SFTP — on 127.0.0.1 (the VM's
  ``0.0.0.0``: tests never listen beyond loopback) with Debian chromium;
* ``playwright install``'s stop-and-start of that task (the server is started detached, so it
  outlives the SSH command, and waited for until it listens) and the task query (``Running``
  while the task's process lives, else ``Ready``).

A bare ``Start-ScheduledTask`` of a registered task (the supervisor's repair) is answered by
the emulator's own interpreter, which starts the argv stored here without waiting, as
Windows returns at once too.

Two entry points: ``HANDLERS``, which the emulator uses (its :class:`Vm` starts the server,
so the server is in ``state["started"]`` and the fixture's teardown kills it), and
:func:`handle` for in-process use without an emulator (tests/windows/test_playwright_flow.py),
which starts the server itself. Paths are the emulator's: ``C:\a\b`` is ``root/C:/a/b``
(:func:`tests.fakes.winvm.windows_path_to_local`), where SFTP's ``C:/a/b`` lands too.

Only the standard library at the top: homeops and the Playwright fixture are imported where
they are used, since the emulator loads this module for every script it cannot answer itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes import winvm as emulator

DEFAULTS: dict[str, Any] = {
    "node": "v20.20.2",  # None: node.exe not on PATH
    "package": "playwright",
    "version": "1.65.1",  # None: the npm package is not installed
    "task": None,  # what install.ps1 registered: {"arguments": ..., "registered": n}
    "pid": None,  # the server the last start started
}
# Bounds a server that never listens (Chromium starts in ~1 s here).
START_DEADLINE_S = 60.0
KILL_DEADLINE_S = 10.0

# Servers started in-process by handle(), by pid: kept so stop_server can reap them (the
# emulator's own Vm.spawn leaves its servers to the fixture's teardown).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}

# (argv, env, cwd) -> (pid, log file) of a detached process (its own session).
Spawner = Callable[[Sequence[str], dict[str, str], Path], tuple[int, Path]]


@dataclass(frozen=True)
class Reply:
    """What the emulated PowerShell prints and exits with."""

    stdout: str
    stderr: str = ""
    exit_code: int = 0


def local_path(root: Path, windows_path: str) -> Path:
    r"""Where the emulator keeps ``C:\a\b``: ``root/C:/a/b``."""
    return emulator.windows_path_to_local(root, windows_path)


def pw_state(state: dict[str, Any]) -> dict[str, Any]:
    """This module's part of the emulator state (defaults filled in)."""
    part: dict[str, Any] = state.setdefault("playwright", {})
    for key, value in DEFAULTS.items():
        part.setdefault(key, value)
    return part


def _task_name() -> str:
    from homeops.windows.powershell import PLAYWRIGHT_TASK

    return PLAYWRIGHT_TASK


def _tasks(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = state.setdefault("tasks", {})
    return tasks


def task_entry(state: dict[str, Any]) -> dict[str, Any] | None:
    """The Playwright task in ``state["tasks"]`` (task names ignore case), or None."""
    tasks = _tasks(state)
    key = emulator.task_key(state, _task_name())
    return tasks[key] if key is not None else None


def _kill(pid: int | None) -> None:
    """SIGKILL the server's session and wait until it is gone (its port closed with it)."""
    if not pid:
        return
    if emulator.alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    proc = _STARTED.pop(pid, None)
    if proc is not None:
        proc.wait(10)
    # A server started by an earlier emulator process is not our child: poll. Until it has
    # died, its socket still accepts, and a new server's start would seem to be done.
    deadline = time.monotonic() + KILL_DEADLINE_S
    while emulator.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_server(state: dict[str, Any]) -> None:
    """Stop the server the task started, and its browser (fixture teardown too)."""
    part = pw_state(state)
    task = task_entry(state)
    for pid in {part.get("pid"), (task or {}).get("pid")}:
        _kill(pid)
    part["pid"] = None
    if task is not None:
        task["pid"] = None


def _crlf(*lines: str) -> str:
    return "".join(line + "\r\n" for line in lines)


def _prereq(part: dict[str, Any]) -> Reply:
    if part["node"] is None:
        return Reply(_crlf("node=missing", "playwright=missing", "prereq=done"))
    lines = [f"node={part['node']}", "node_path=C:\\Program Files\\nodejs\\node.exe"]
    if part["version"] is None:
        lines.append("playwright=missing")
    else:
        lines += [f"playwright_package={part['package']}", f"playwright={part['version']}"]
    return Reply(_crlf(*lines, "prereq=done"))


_ARGUMENT = re.compile(r"-Argument '((?:[^']|'')*)'")


def server_argv(root: Path, arguments: str) -> list[str]:
    """The local command behind the task's ``node.exe <arguments>``: Debian's node on the
    uploaded launch-server.js, on 127.0.0.1, with Debian chromium and its flags."""
    from homeops.windows import playwright as pw
    from tests.fixtures.playwright_server import CHROMIUM, CHROMIUM_ARGS

    words = arguments.split()
    port = int(next(w for w in words if w.startswith("--port=")).split("=", 1)[1])
    return [
        shutil.which("node") or "node",
        str(local_path(root, words[0])),
        *pw.launch_server_argv(
            port, host="127.0.0.1", executable_path=CHROMIUM, browser_args=CHROMIUM_ARGS
        ),
    ]


def _install(state: dict[str, Any], part: dict[str, Any], root: Path) -> Reply:
    from homeops.windows import playwright as pw
    from tests.fixtures.playwright_server import NODE_MODULES

    script_file = local_path(root, pw.INSTALL_SCRIPT_PATH)
    if not script_file.exists():
        return Reply("", f"The term '{pw.INSTALL_SCRIPT_PATH}' is not recognized\r\n", 1)
    text = script_file.read_text()
    found = _ARGUMENT.search(text)
    if "Register-ScheduledTask" not in text or not found:
        return Reply("", "install.ps1: no Register-ScheduledTask action\r\n", 1)
    previous = task_entry(state)
    if previous is not None and "-Force" not in text:
        return Reply(
            "",
            "Register-ScheduledTask : Cannot create a file when that file already exists.\r\n",
            1,
        )
    arguments = found.group(1).replace("''", "'")
    count = (part["task"] or {}).get("registered", 0) + 1
    part["task"] = {"arguments": arguments, "registered": count}
    old = previous or {}
    # Re-registering does not stop a running instance: it keeps running with the old action.
    running = emulator.alive(old.get("pid"))
    _tasks(state)[emulator.task_key(state, _task_name()) or _task_name()] = {
        "state": "Running" if running else "Ready",
        "program": "node.exe",
        "arguments": arguments,
        "argv": server_argv(root, arguments),
        "env": {"NODE_PATH": str(NODE_MODULES)},
        "runs": old.get("runs", 0),
        "pid": old.get("pid") if running else None,
    }
    return Reply(_crlf("install=done"))


def _port_of(argv: Sequence[str]) -> int:
    return int(next(a for a in argv if a.startswith("--port=")).split("=", 1)[1])


def _wait_listening(pid: int, port: int) -> str | None:
    """None once 127.0.0.1:port accepts; why not, if the server dies or never listens."""
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if not emulator.alive(pid):
            return "it exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return None
        except OSError:
            time.sleep(0.05)
    return f"it did not listen on {port} in {START_DEADLINE_S:g}s"


def _start(script: str, state: dict[str, Any], part: dict[str, Any], spawn: Spawner) -> Reply:
    task = task_entry(state)
    if task is None:
        return Reply("", "Start-ScheduledTask : The system cannot find the file specified.\r\n", 1)
    if "Stop-ScheduledTask" in script:
        _kill(task.get("pid"))
        task["pid"] = None
    elif emulator.alive(task.get("pid")):
        # Windows starts no second instance of a running task (MultipleInstances IgnoreNew).
        return Reply(_crlf("start=done") if "'start=done'" in script else "")
    argv = list(task["argv"])
    pid, log = spawn(argv, dict(task.get("env") or {}), Path(argv[1]).parent)
    task.update(state="Running", pid=pid, runs=task.get("runs", 0) + 1)
    part["pid"] = pid
    why = _wait_listening(pid, _port_of(argv))
    if why is not None:
        # Start-ScheduledTask succeeds even when its program dies at once, as on Windows;
        # the reason goes to stderr for the test to see.
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return Reply("", f"server did not start: {why}: {tail}\r\n", 0)
    return Reply(_crlf("start=done") if "'start=done'" in script else "")


def _query(state: dict[str, Any]) -> Reply:
    task = task_entry(state)
    if task is None:
        return Reply(_crlf("task=missing", "taskquery=done"))
    current = "Running" if emulator.alive(task.get("pid")) else "Ready"
    action = f"{task.get('program') or 'node.exe'} {task.get('arguments') or ''}".strip()
    return Reply(_crlf(f"task={current}", f"action={action}", "taskquery=done"))


def _answer(script: str, state: dict[str, Any], root: Path, spawn: Spawner) -> Reply | None:
    from homeops.windows import playwright as pw

    part = pw_state(state)
    if script == pw.prerequisites_script():
        return _prereq(part)
    if script == pw.make_dir_script():
        local_path(root, pw.LAUNCH_SERVER_PATH).parent.mkdir(parents=True, exist_ok=True)
        return Reply(_crlf("dir=done"))
    if script == pw.run_install_script():
        return _install(state, part, root)
    if f"Start-ScheduledTask -TaskName '{_task_name()}'" in script:
        return _start(script, state, part, spawn)
    if script == pw.task_state_script():
        return _query(state)
    return None


def _spawn_here(argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[int, Path]:
    log = cwd / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopping it kills chromium's processes too
        )
    _STARTED[proc.pid] = proc
    return proc.pid, log


def handle(script: str, state: dict[str, Any], root: Path) -> Reply | None:
    """The reply to one of homeops' Playwright scripts, or None if ``script`` is another
    (in-process use: a server is started by this process)."""
    return _answer(script, state, root, _spawn_here)


def _on_vm(found: re.Match[str], script: str, vm: emulator.Vm) -> Reply | None:
    def spawn(argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[int, Path]:
        pid = vm.spawn(argv, name="node", path="node.exe", env=env, cwd=str(cwd))
        return pid, vm.store.dir / emulator.LOGS_DIR / "node.log"

    return _answer(script, vm.state, vm.root, spawn)


# Every script of homeops.windows.playwright ends in a `<step>=done` marker, or is the start.
HANDLERS = [
    (
        re.compile(r"'(?:prereq|dir|install|taskquery)=done'|Start-ScheduledTask -TaskName "),
        _on_vm,
    )
]
