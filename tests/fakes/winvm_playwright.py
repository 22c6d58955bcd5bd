"""The Windows VM emulator's answers to homeops' Playwright scripts (CONTRACTS.md §1, §3).

Imitates what Windows does with the scripts of ``homeops.windows.playwright``: the node and
npm checks (answers set in the state: node missing, playwright missing, another version),
``New-Item`` of the directory, running the uploaded ``install.ps1`` (its
``Register-ScheduledTask`` recorded in the state, ``-Force`` replacing an earlier one), the
task query, and ``Start-ScheduledTask``, whose action starts a REAL ``node launch-server.js``
— the file homeops uploaded over SFTP into the emulated ``C:\\ProgramData`` — on 127.0.0.1
(the VM's ``0.0.0.0``) with Debian chromium, detached so it outlives the SSH command.

Interface for the emulator (tests/fakes/winvm.py): :func:`handle(script, state, root)` returns
a :class:`Reply`, or None when the script is not one of these. ``state`` is the emulator's
JSON-able dict (persisted between calls; this module keeps its keys under ``"playwright"``);
``root`` is the directory holding the emulated drives (``C:\\x`` is ``root/C/x``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homeops.windows import playwright as pw
from homeops.windows.powershell import PLAYWRIGHT_TASK
from tests.fixtures.playwright_server import spawn_server, wait_listening

DEFAULTS: dict[str, Any] = {
    "node": "v20.20.2",  # None: node.exe not on PATH
    "package": "playwright",
    "version": "1.65.1",  # None: the npm package is not installed
    "task": None,  # {"arguments": ..., "registered": n}
    "pid": None,  # the running server's pid
}


# Servers started from this process, by pid: kept so stop_server can reap them (an emulator
# that runs once per SSH command simply exits and leaves the server to run on).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Reply:
    """What the emulated PowerShell prints and exits with."""

    stdout: str
    stderr: str = ""
    exit_code: int = 0


def local_path(root: Path, windows_path: str) -> Path:
    """Where the emulator keeps ``C:\\a\\b``: ``root/C/a/b``."""
    drive, _, rest = windows_path.partition(":\\")
    return root.joinpath(drive.upper(), *[p for p in rest.split("\\") if p])


def pw_state(state: dict[str, Any]) -> dict[str, Any]:
    """This module's part of the emulator state (defaults filled in)."""
    part: dict[str, Any] = state.setdefault("playwright", {})
    for key, value in DEFAULTS.items():
        part.setdefault(key, value)
    return part


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop_server(state: dict[str, Any]) -> None:
    """Stop the server the task started, and its browser (fixture teardown too)."""
    part = pw_state(state)
    pid = part.get("pid")
    if pid and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    proc = _STARTED.pop(pid, None) if pid else None
    if proc is not None:
        proc.wait(10)
    part["pid"] = None


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


def _install(part: dict[str, Any], root: Path) -> Reply:
    script_file = local_path(root, pw.INSTALL_SCRIPT_PATH)
    if not script_file.exists():
        return Reply("", f"The term '{pw.INSTALL_SCRIPT_PATH}' is not recognized\r\n", 1)
    text = script_file.read_text()
    found = _ARGUMENT.search(text)
    if "Register-ScheduledTask" not in text or not found:
        return Reply("", "install.ps1: no Register-ScheduledTask action\r\n", 1)
    previous = part["task"]
    if previous is not None and "-Force" not in text:
        return Reply(
            "",
            "Register-ScheduledTask : Cannot create a file when that file already exists.\r\n",
            1,
        )
    count = (previous or {}).get("registered", 0) + 1
    part["task"] = {"arguments": found.group(1).replace("''", "'"), "registered": count}
    return Reply(_crlf("install=done"))


def _start(part: dict[str, Any], root: Path, script: str) -> Reply:
    task = part["task"]
    if task is None:
        return Reply("", "Start-ScheduledTask : The system cannot find the file specified.\r\n", 1)
    stop_server({"playwright": part})
    words = task["arguments"].split()
    js = local_path(root, words[0])
    port = int(next(w for w in words if w.startswith("--port=")).split("=", 1)[1])
    log = js.parent / "server.log"
    # The VM's 0.0.0.0 is loopback here: tests never listen beyond 127.0.0.0/8.
    proc = spawn_server(js, port, host="127.0.0.1", log=log)
    try:
        wait_listening(proc, "127.0.0.1", port, log)
    except RuntimeError as exc:
        # Start-ScheduledTask succeeds even when its program dies at once, as on Windows;
        # the reason goes to stderr for the test to see.
        proc.wait(10)
        return Reply("", f"server did not start: {exc}\r\n", 0)
    part["pid"] = proc.pid
    _STARTED[proc.pid] = proc
    return Reply(_crlf("start=done") if "'start=done'" in script else "")


def _query(part: dict[str, Any]) -> Reply:
    task = part["task"]
    if task is None:
        return Reply(_crlf("task=missing", "taskquery=done"))
    state = "Running" if _alive(part["pid"]) else "Ready"
    return Reply(_crlf(f"task={state}", f"action=node.exe {task['arguments']}", "taskquery=done"))


def handle(script: str, state: dict[str, Any], root: Path) -> Reply | None:
    """The reply to one of homeops' Playwright scripts, or None if ``script`` is another."""
    part = pw_state(state)
    if script == pw.prerequisites_script():
        return _prereq(part)
    if script == pw.make_dir_script():
        local_path(root, pw.LAUNCH_SERVER_PATH).parent.mkdir(parents=True, exist_ok=True)
        return Reply(_crlf("dir=done"))
    if script == pw.run_install_script():
        return _install(part, root)
    if f"Start-ScheduledTask -TaskName '{PLAYWRIGHT_TASK}'" in script:
        return _start(part, root, script)
    if script == pw.task_state_script():
        return _query(part)
    return None
