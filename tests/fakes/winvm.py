r"""The "Windows VM" emulator: Windows OpenSSH + cmd.exe + PowerShell 5.1 as homeops uses them.

Imitates the contract of shared/CONTRACTS.md §1. A real OpenSSH sshd on loopback runs this
program as its ``ForceCommand`` (tests/fixtures/winvm.py sets that up), so homeops talks to it
through its real seam (asyncssh, :class:`~homeops.core.ssh.SshPool`); this program sees the
client's command in ``SSH_ORIGINAL_COMMAND`` and answers as Windows would:

* ``powershell -NoProfile -NonInteractive -EncodedCommand <base64 UTF-16LE>``: the script is
  decoded and answered (below). Output lines end in CRLF, as Windows prints them.
* anything else is a cmd.exe command line; it runs under ``/bin/sh -c`` with stdin, stdout,
  stderr and the exit status passed through (``echo hi`` prints ``hi``).
* the ``sftp`` subsystem (ForceCommand also catches it, as ``internal-sftp``) becomes
  ``sftp-server -d <drive root>``: SFTP's ``C:/A/B`` is the file PowerShell calls ``C:\A\B``.

State lives in a directory (``--state DIR``): ``state.json`` (under ``state.lock``, flock),
``calls.jsonl`` (one ``start`` and one ``end`` record per call: time, the raw command, the
decoded script, exit status, output heads), ``running/<pid>.json`` (the commands running now,
with their ``SSH_CONNECTION``: what the fallback killer looks for), ``drives/`` (``C:\A\B`` is
``drives/C:/A/B``; ``drives/C`` links to ``drives/C:`` for modules that drop the colon) and
``logs/`` (output of programs started detached). :class:`StateStore` is the API for both sides.

How a PowerShell script is answered, first match wins:

1. scripted answers (``state["answers"]``: regex searched in the script, ``times`` optional);
2. whole scripts of homeops: the idempotent firewall rule (CONTRACTS §1), the firewall and
   process drift queries (``foreach ($n in @(...))``), the Windows fallback killer of
   core/ssh/kill.py (it finds the command among ``running/`` by ``$conn`` / ``$want``, checks
   the TCP connection in /proc/net/tcp{,6} as Get-NetTCPConnection would, SIGKILLs the
   command's process group as ``taskkill /T /F`` ends the tree, prints the pids, exits 0; or 3,
   4, 6 as that script does);
3. the line interpreter, when it knows every line: quoted strings and ``Write-Output``,
   ``[Console]::Error.WriteLine``, ``Write-Error``, ``exit N``, ``Start-Sleep`` (a real
   ``sleep`` child), ``Test-Path``, ``Get-Content [-Tail N]``, ``Get-Process -Name X``,
   ``Start-Process -FilePath X`` (a program mapped in ``state["programs"]`` started detached,
   pid kept in ``state["started"]``), ``Start-ScheduledTask -TaskName X`` (``state["tasks"]``),
   ``if (<cond>) { 'a' } else { 'b' }`` with ``Get-Process``/``Get-NetTCPConnection -LocalPort
   P -State Listen`` (a real look at /proc/net/tcp{,6})/``Test-Path`` conditions (the desktop
   locked and port probes), and the ``& 'prog' 'arg'`` scripts of ``powershell_script(argv)``
   (a plain local program run with the arguments; ``$LASTEXITCODE`` is the exit status);
4. extension modules (below);
5. the interpreter again, now reporting the first unknown command as PowerShell does (``The
   term 'X' is not recognized …`` on stderr; the exit status is 1 when the last statement
   failed, as ``powershell -Command`` sets it).

Extensions: every module ``tests/fakes/winvm_*.py`` is imported (lazily: only for a script
that steps 1-3 do not answer, or a ``Start-ScheduledTask`` of a task missing from
``state["tasks"]``; keep its top-level imports light, homeops imports inside functions). It
exposes either or both of

* ``HANDLERS``: a sequence of ``(re.Pattern[str], handler)``; ``re.search(pattern, script)``
  selects; ``handler(match, script, vm) -> reply | None`` where ``vm`` is a :class:`Vm`
  (``vm.state`` the mutable state dict, saved after the call; ``vm.local_path(r"C:\x")``;
  ``vm.spawn(argv, name=…)``; ``vm.alive(pid)``; ``vm.root``) and ``reply`` is a
  :class:`Reply`, a ``(stdout, stderr, exit_code)`` tuple, or any object with those three
  attributes; ``None`` declines;
* ``handle(script, state, root) -> reply | None`` (the form tests/fakes/winvm_playwright.py
  uses: ``root`` is the drive root, ``state`` the state dict).

Extension handlers run holding the state lock (calls are serialised while they run). The
extension modules run in this process, under Debian's /usr/bin/python3: the emulator puts the
repository, ``src`` and the ``--site`` directories (the venv's site-packages) on ``sys.path``
before importing them.

Where it differs from the real VM: cmd.exe is ``/bin/sh`` (an unknown command is exit 127
with sh's message, not cmd's exit 1); PowerShell is a small subset (no variables, no
pipelines beyond the forms above; double-quoted strings are not expanded); process names are
what the state says plus mapped programs that are alive; the killer matches the SSH command
line (Windows matches ``cmd.exe /c <command>``'s end, the same text). SSH "signal" requests:
Windows OpenSSH ignores them, and sshd refuses them for ForceCommand sessions, so here too they
change nothing (homeops sends none to a PowerShell target). Closing a channel leaves its
command running, as on both. Stdlib only: python starts in ~20 ms per call.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import fcntl
import importlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
CALLS_FILE = "calls.jsonl"
RUNNING_DIR = "running"
DRIVES_DIR = "drives"
LOGS_DIR = "logs"
_OUTPUT_HEAD = 4096
CRLF = "\r\n"


def default_state() -> dict[str, Any]:
    """A fresh VM: unlocked, no rules, no tasks, nothing mapped or started."""
    return {
        "locked": False,
        "processes": [],  # names Get-Process finds (besides LogonUI and live mapped programs)
        "firewall": {},  # display name -> {"port": int, "enabled": bool}
        "tasks": {},  # task name -> {"state": "Ready"|"Running", "program": path|None, ...}
        "programs": {},  # lower-cased Windows path -> {"argv": [...], "env": {...}, "cwd": ...}
        "started": [],  # {"name", "path", "pid", "start_time", "log"} of detached programs
        "answers": [],  # {"pattern", "stdout", "stderr", "exit", "times"}
    }


@dataclass(frozen=True)
class Reply:
    """What the emulated shell prints and exits with."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0


# -- state -------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _open_shared(path: Path, flags: int) -> int:
    # Files are shared by the test (root) and the login user: readable and writable by both.
    fd = os.open(path, flags | os.O_CREAT, 0o666)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)
    return fd


class StateStore:
    """The emulator's state directory: state dict under a lock, call log, running commands."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    @property
    def root(self) -> Path:
        """The drive root: ``C:\\A`` is ``root/C:/A``."""
        return self.dir / DRIVES_DIR

    def init(self, owner: tuple[int, int] | None = None) -> None:
        """Create a fresh state directory (files owned by ``owner`` uid/gid when given)."""
        # C:\ProgramData and C:\Users exist on every Windows.
        drive = f"{DRIVES_DIR}/C:"
        for sub in (
            "",
            RUNNING_DIR,
            DRIVES_DIR,
            LOGS_DIR,
            drive,
            f"{drive}/ProgramData",
            f"{drive}/Users",
        ):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
            (self.dir / sub).chmod(0o777)
        link = self.root / "C"
        if not link.is_symlink():
            link.symlink_to("C:")
        for name in (LOCK_FILE, CALLS_FILE):
            os.close(_open_shared(self.dir / name, os.O_WRONLY))
        self.write(default_state())
        if owner is not None:
            for path in [self.dir, *self.dir.rglob("*")]:
                with contextlib.suppress(OSError):
                    os.lchown(path, *owner)

    def read(self) -> dict[str, Any]:
        """The current state (a copy)."""
        try:
            data = json.loads((self.dir / STATE_FILE).read_text())
        except FileNotFoundError:
            data = {}
        state = default_state()
        state.update(data)
        return state

    def write(self, state: dict[str, Any]) -> None:
        """Replace the state atomically (callers hold the lock, see :meth:`transaction`)."""
        tmp = self.dir / f".{STATE_FILE}.{os.getpid()}"
        fd = _open_shared(tmp, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, indent=1, sort_keys=True)
        tmp.replace(self.dir / STATE_FILE)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state lock."""
        fd = _open_shared(self.dir / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the state under the lock (saved when the block succeeds)."""
        with self.locked():
            state = self.read()
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                self.write(state)

    # -- the call log
    def record(self, entry: dict[str, Any]) -> None:
        """Append one call-log record (one line, one write: atomic under O_APPEND)."""
        fd = _open_shared(self.dir / CALLS_FILE, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)

    def calls(self) -> list[dict[str, Any]]:
        """Every call so far, in start order; a call still running (or killed) has exit None."""
        merged: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in (self.dir / CALLS_FILE).read_text().splitlines():
                if not line.strip():
                    continue
                entry = json.loads(line)
                phase = entry.pop("phase", "end")
                call = merged.setdefault(entry["id"], {"exit": None, "end_time": None})
                if phase == "end":
                    entry["end_time"] = entry.pop("time", None)
                call.update(entry)
        return list(merged.values())

    # -- running commands
    def register_running(self, command: str, conn: str) -> Path:
        """Note this process as a running command (for the fallback killer)."""
        pid = os.getpid()
        path = self.dir / RUNNING_DIR / f"{pid}.json"
        entry = {
            "pid": pid,
            "pgid": os.getpgrp(),
            "start_time": start_time(pid),
            "conn": conn,
            "command": command,
            "time": _now(),
        }
        fd = _open_shared(path, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as out:
            json.dump(entry, out)
        return path

    def running(self) -> list[dict[str, Any]]:
        """The emulator commands alive now (stale entries are skipped)."""
        found = []
        for path in sorted((self.dir / RUNNING_DIR).glob("*.json")):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if alive(entry["pid"], entry.get("start_time")):
                found.append(entry)
        return found


# -- processes and sockets ---------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a reused pid from the original)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int | None, started: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie), and is the process that started at ``started``."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def _hex_address(text: str) -> tuple[str, int]:
    ip_hex, port_hex = text.split(":")
    raw = bytes.fromhex(ip_hex)
    # /proc/net/tcp prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if len(words) == 4:
        ip = ipaddress.IPv4Address(words)
    else:
        ip = ipaddress.IPv6Address(words)
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return str(ip), int(port_hex, 16)


def tcp_sockets() -> list[tuple[tuple[str, int], tuple[str, int], str]]:
    """(local, remote, state hex) of every TCP socket in this network namespace."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 3:
                    found.append((_hex_address(parts[1]), _hex_address(parts[2]), parts[3]))
    return found


def port_listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (any address), as Get-NetTCPConnection sees."""
    return any(local[1] == port and st == "0A" for local, _, st in tcp_sockets())


def connection_visible(conn: str) -> bool:
    """Whether the TCP connection of ``SSH_CONNECTION`` ``conn`` still exists."""
    try:
        client_ip, client_port, server_ip, server_port = conn.split()
        remote, local = (client_ip, int(client_port)), (server_ip, int(server_port))
    except ValueError:
        return False
    return any(l_ == local and r == remote and st != "0A" for l_, r, st in tcp_sockets())


# -- paths -------------------------------------------------------------------------------------

_DRIVE = re.compile(r"^([A-Za-z]):[\\/]*(.*)$", re.S)


def windows_path_to_local(root: Path, windows_path: str) -> Path:
    r"""Where ``C:\A\B`` (or ``C:/A/B``) lives: ``root/C:/A/B``."""
    found = _DRIVE.match(windows_path)
    if not found:
        raise ValueError(f"not an absolute Windows path: {windows_path!r}")
    parts = [p for p in re.split(r"[\\/]+", found.group(2)) if p]
    if ".." in parts:
        raise ValueError(f"'..' in a VM path: {windows_path!r}")
    return root.joinpath(f"{found.group(1).upper()}:", *parts)


def program_name(windows_path: str) -> str:
    r"""The process name of a program path: ``C:\Aloha\server.exe`` → ``server``."""
    base = re.split(r"[\\/]", windows_path)[-1]
    return base[:-4] if base.lower().endswith(".exe") else base


# -- the VM handle handlers get ----------------------------------------------------------------


@dataclass
class Vm:
    """What a handler may use: the state (mutable, saved after it), paths, process spawning."""

    store: StateStore
    state: dict[str, Any]
    conn: str = ""

    @property
    def root(self) -> Path:
        return self.store.root

    def local_path(self, windows_path: str) -> Path:
        return windows_path_to_local(self.root, windows_path)

    def alive(self, pid: int | None, started: int | None = None) -> bool:
        return alive(pid, started)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str,
        path: str = "",
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> int:
        """Start ``argv`` detached (own session, output to logs/<name>.log); keep its pid."""
        log = self.store.dir / LOGS_DIR / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=cwd or str(self.root),
                env={**os.environ, **(env or {})},
            )
        self.state["started"].append(
            {
                "name": name,
                "path": path,
                "pid": proc.pid,
                "start_time": start_time(proc.pid),
                "log": str(log),
                "time": _now(),
            }
        )
        return proc.pid

    def process_names(self) -> set[str]:
        """What Get-Process finds, lower-cased."""
        names = {str(n).lower() for n in self.state["processes"]}
        if self.state["locked"]:
            names.add("logonui")
        for entry in self.state["started"]:
            if alive(entry["pid"], entry.get("start_time")):
                names.add(str(entry["name"]).lower())
        return names


Handler = Callable[[re.Match[str], str, Vm], Any]


class _ReplyLike(Protocol):
    stdout: str
    stderr: str
    exit_code: int


def as_reply(value: object) -> Reply | None:
    """A handler's answer as a :class:`Reply` (tuple, Reply-like object, or None)."""
    if value is None:
        return None
    if isinstance(value, Reply):
        return value
    if isinstance(value, tuple):
        out, err, code = value
        return Reply(str(out), str(err), int(code))
    like: _ReplyLike = value  # type: ignore[assignment]
    return Reply(like.stdout, like.stderr, like.exit_code)


# -- PowerShell: quoting and the error messages ------------------------------------------------

_SQ = "'\u2018\u2019\u201a\u201b"
_LITERAL = rf"[{_SQ}](?:[^{_SQ}]|[{_SQ}]{{2}})*[{_SQ}]"
_LITERAL_RE = re.compile(_LITERAL)
_ENCODED = re.compile(
    r"^\s*powershell(?:\.exe)?((?:\s+-\w+)*?)\s+-(?:EncodedCommand|enc|ec|e)\s+([A-Za-z0-9+/=]+)\s*$",
    re.I,
)


def unquote(token: str) -> str:
    """A PowerShell single- or double-quoted literal's value (no expansion), else the token."""
    if len(token) >= 2 and token[0] in _SQ and token[-1] in _SQ:
        body = token[1:-1]
        return re.sub(rf"([{_SQ}])\1", r"\1", body)
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        return token[1:-1].replace('""', '"').replace('`"', '"')
    return token


def decode_command(command: str) -> str | None:
    """The script of an ``-EncodedCommand`` line, or None when it is a cmd.exe line."""
    found = _ENCODED.match(command)
    if not found:
        return None
    try:
        return base64.b64decode(found.group(2), validate=True).decode("utf-16-le")
    except (ValueError, UnicodeDecodeError):
        return None


def not_recognized(name: str, line_no: int, line: str) -> str:
    """PowerShell's CommandNotFoundException text."""
    return (
        f"{name} : The term '{name}' is not recognized as the name of a cmdlet, function, "
        "script file, or operable program. Check the spelling of the name, or if a path was "
        f"included, verify that the path is correct and try again.{CRLF}"
        f"At line:{line_no} char:1{CRLF}+ {line}{CRLF}"
        f"    + CategoryInfo          : ObjectNotFound: ({name}:String) [], "
        f"CommandNotFoundException{CRLF}"
        f"    + FullyQualifiedErrorId : CommandNotFoundException{CRLF}{CRLF}"
    )


def _cmdlet_error(cmdlet: str, message: str, line_no: int, line: str) -> str:
    return f"{cmdlet} : {message}{CRLF}At line:{line_no} char:1{CRLF}+ {line}{CRLF}"


def _lines(*lines: str) -> str:
    return "".join(line + CRLF for line in lines)


# -- whole-script handlers (homeops' own multi-line scripts) -----------------------------------


def _literal_after(keyword: str, script: str) -> str | None:
    found = re.search(re.escape(keyword) + r"\s+(" + _LITERAL + ")", script, re.I)
    return unquote(found.group(1)) if found else None


def _firewall_rule(script: str, vm: Vm) -> Reply | None:
    if not re.search(r"if \(\$rule\)", script) or "New-NetFirewallRule" not in script:
        return None
    name = _literal_after("Get-NetFirewallRule -DisplayName", script)
    new = re.search(
        r"New-NetFirewallRule -DisplayName (" + _LITERAL + r").*?-LocalPort (\d+)", script
    )
    if name is None or new is None or unquote(new.group(1)) != name:
        return None
    rules = vm.state["firewall"]
    if name in rules:
        rules[name]["enabled"] = True
        return Reply(_lines("enabled"))
    rules[name] = {"port": int(new.group(2)), "enabled": True, "direction": "Inbound"}
    return Reply(_lines("created"))


_FOREACH = re.compile(r"^foreach \(\$n in @\(((?:\s*" + _LITERAL + r"\s*,?)*)\)\) \{", re.I)


def _foreach_names(script: str) -> list[str] | None:
    found = _FOREACH.match(script)
    return [unquote(t) for t in _LITERAL_RE.findall(found.group(1))] if found else None


def _firewall_state(script: str, vm: Vm) -> Reply | None:
    names = _foreach_names(script)
    if names is None or "Get-NetFirewallRule -DisplayName $n" not in script:
        return None
    out = []
    for name in names:
        rule = vm.state["firewall"].get(name)
        state = "missing" if rule is None else ("enabled" if rule["enabled"] else "disabled")
        out.append(f"{name}={state}")
    return Reply(_lines(*out))


def _process_state(script: str, vm: Vm) -> Reply | None:
    names = _foreach_names(script)
    if names is None or "Get-Process -Name $n" not in script:
        return None
    running = vm.process_names()
    return Reply(
        _lines(*(f"{n}={'running' if n.lower() in running else 'missing'}" for n in names))
    )


def _kill_vars(script: str) -> tuple[str, str, str] | None:
    values = {}
    for var in ("conn", "own", "want"):
        found = re.search(r"^\$" + var + r" = (" + _LITERAL + r")$", script, re.M)
        if not found:
            return None
        values[var] = unquote(found.group(1))
    return values["conn"], values["own"], values["want"]


def _ends(command: str, want: str) -> bool:
    return command.rstrip('" ').endswith(want.rstrip('" '))


def _kill_script(script: str, vm: Vm) -> Reply | None:
    if "taskkill.exe" not in script or "Get-CimInstance Win32_Process" not in script:
        return None
    found = _kill_vars(script)
    if found is None:
        return None
    conn, own, want = found
    others = [e for e in vm.store.running() if e["pid"] != os.getpid()]
    if vm.conn == own:
        if not connection_visible(conn):
            return Reply(exit_code=6)
        cmds = [e for e in others if e["conn"] == conn]
        if not cmds:
            return Reply(exit_code=3)
        hits = [e for e in cmds if _ends(e["command"], want)]
        if not hits and len(cmds) == 1:
            hits = cmds
        if not hits:
            return Reply(exit_code=4)
    else:
        hits = [e for e in others if _ends(e["command"], want)]
        if not hits:
            return Reply(exit_code=3)
        if len(hits) != 1:
            return Reply(exit_code=4)
    for entry in hits:
        # taskkill /T /F: the command and its whole tree (here: its process group).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if entry["pgid"] != os.getpgrp():
                os.killpg(entry["pgid"], signal.SIGKILL)
            else:
                os.kill(entry["pid"], signal.SIGKILL)
    return Reply(_lines(" ".join(str(e["pid"]) for e in hits)))


WHOLE_SCRIPTS: list[Callable[[str, Vm], Reply | None]] = [
    _kill_script,
    _firewall_rule,
    _firewall_state,
    _process_state,
]


# -- the line interpreter ----------------------------------------------------------------------


@dataclass
class _Run:
    """The interpreter's running state for one script."""

    vm_store: StateStore
    conn: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    ok: bool = True
    last_exit: int | None = None
    exit: int | None = None

    def out(self, text: str) -> None:
        self.stdout.append(text)
        _write(1, text)

    def err(self, text: str) -> None:
        self.stderr.append(text)
        _write(2, text)


def _write(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        data = data[os.write(fd, data) :]


Statement = Callable[[_Run], None]


def _tokens(text: str) -> list[str]:
    return re.findall(_LITERAL + r'|"(?:[^"`]|`.)*"|\S+', text)


def _params(words: list[str], positional: Sequence[str] = ()) -> dict[str, str] | None:
    """``-Name value`` pairs (names lower-cased), positional words by ``positional``."""
    found: dict[str, str] = {}
    rest = list(positional)
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and len(word) > 1 and not word[1].isdigit():
            name = word[1:].lower().rstrip(":")
            if name in ("force", "wait", "passthru", "nonewwindow"):
                found[name] = "true"
                i += 1
                continue
            if i + 1 >= len(words):
                return None
            found[name] = unquote(words[i + 1])
            i += 2
        elif rest:
            found[rest.pop(0)] = unquote(word)
            i += 1
        else:
            return None
    return found


def _silent(params: dict[str, str]) -> bool:
    return params.get("erroraction", "").lower() in ("silentlycontinue", "ignore")


def _condition(text: str) -> Callable[[_Run], bool] | None:
    words = _tokens(text)
    if not words:
        return None
    cmd, params = words[0].lower(), _params(words[1:], ("name",))
    if params is None:
        return None
    if cmd == "get-process" and "name" in params:
        name = params["name"].lower()
        return lambda run: name in _vm(run).process_names()
    if cmd == "get-nettcpconnection" and "localport" in params:
        port = int(params["localport"])
        want_listen = params.get("state", "").lower() == "listen"
        if want_listen:
            return lambda run: port_listening(port)
        return lambda run: any(lo[1] == port for lo, _, _ in tcp_sockets())
    if cmd == "test-path":
        params = _params(words[1:], ("path",))
        if params is None or "path" not in params:
            return None
        path = params["path"]
        return lambda run: _local(run, path).exists()
    return None


def _vm(run: _Run) -> Vm:
    return Vm(run.vm_store, run.vm_store.read(), run.conn)


def _local(run: _Run, path: str) -> Path:
    try:
        return windows_path_to_local(run.vm_store.root, path)
    except ValueError:
        return run.vm_store.root / "C:" / path


_IF = re.compile(r"^if \((.+)\) \{\s*(.*?)\s*\}(?: else \{\s*(.*?)\s*\})?$", re.I)


def _compile_line(line: str, line_no: int) -> Statement | str:
    """One line as a statement, or the name of the unknown command in it."""
    stripped = line.strip()
    words = _tokens(stripped)
    first = words[0] if words else ""
    low = first.lower()
    if (found := _IF.match(stripped)) is not None:
        cond = _condition(found.group(1))
        then, other = found.group(2), found.group(3) or ""
        branches = [_compile_line(b, line_no) if b else None for b in (then, other)]
        if cond is None or any(isinstance(b, str) for b in branches):
            return "if"
        picked: list[Statement | None] = [b for b in branches if not isinstance(b, str)]
        test = cond

        def run_if(run: _Run) -> None:
            branch = picked[0] if test(run) else picked[1]
            if branch is not None:
                branch(run)

        return run_if
    if len(words) == 1 and first[0] in _SQ + '"':
        value = unquote(first)
        return lambda run: run.out(value + CRLF)
    if re.fullmatch(r"-?\d+", stripped):
        return lambda run: run.out(stripped + CRLF)
    if low in ("write-output", "write-host", "echo"):
        text = " ".join(unquote(w) for w in words[1:] if w.lower() != "-nonewline")
        return lambda run: run.out(text + CRLF)
    if (err := re.fullmatch(r"\[Console\]::Error\.WriteLine\((.*)\)", stripped, re.I)) is not None:
        text = unquote(err.group(1).strip())
        return lambda run: run.err(text + CRLF)
    if low == "write-error":
        text = " ".join(unquote(w) for w in words[1:] if not w.startswith("-"))

        def write_error(run: _Run) -> None:
            run.err(_cmdlet_error("Write-Error", text, line_no, stripped))
            run.ok = False

        return write_error
    if low == "exit":
        arg = words[1] if len(words) > 1 else "0"
        if arg.lower() == "$lastexitcode":
            return lambda run: setattr(run, "exit", run.last_exit or 0)
        if not re.fullmatch(r"-?\d+", arg):
            return "exit"
        code = int(arg)
        return lambda run: setattr(run, "exit", code)
    if re.fullmatch(r"\$ErrorActionPreference = " + _LITERAL, stripped, re.I):
        return lambda run: None
    if low == "start-sleep":
        return _start_sleep(words, line_no, stripped)
    if low in ("test-path", "get-process"):
        cond = _condition(stripped)
        if cond is None:
            return first
        return _probe(low, cond, words, line_no, stripped)
    if low == "get-content":
        return _get_content(words, line_no, stripped)
    if low == "start-process":
        return _start_process(words, line_no, stripped)
    if low == "start-scheduledtask":
        return _start_task(words, line_no, stripped)
    if first == "&" and len(words) > 1:
        return _call(words[1:], line_no, stripped)
    return first or "?"


def _binding_error(cmdlet: str, line_no: int, line: str) -> Statement:
    """PowerShell's ParameterBindingException (what the emulator cannot bind, it reports so)."""

    def fail(run: _Run) -> None:
        message = "A positional parameter cannot be found that accepts the given argument."
        run.err(_cmdlet_error(cmdlet, message, line_no, line))
        run.ok = False

    return fail


def _start_sleep(words: list[str], line_no: int, line: str) -> Statement | str:
    params = _params(words[1:], ("seconds",))
    try:
        assert params is not None
        seconds = float(params.get("seconds", "0")) + float(params.get("milliseconds", "0")) / 1000
    except (AssertionError, ValueError):
        return _binding_error("Start-Sleep", line_no, line)

    def sleep(run: _Run) -> None:
        # A real child, so a test can see the remote command running and see it killed.
        subprocess.run(["sleep", f"{seconds:g}"], check=False)

    return sleep


def _probe(
    cmdlet: str, cond: Callable[[_Run], bool], words: list[str], line_no: int, line: str
) -> Statement:
    params = _params(words[1:], ("name" if cmdlet == "get-process" else "path",)) or {}

    def probe(run: _Run) -> None:
        hit = cond(run)
        if cmdlet == "test-path":
            run.out(("True" if hit else "False") + CRLF)
            return
        name = params.get("name", "")
        if hit:
            run.out(
                _lines(
                    "",
                    "Handles  NPM(K)    PM(K)      WS(K)     CPU(s)     Id  SI ProcessName",
                    "-------  ------    -----      -----     ------     --  -- -----------",
                    f"    100      10     1000       2000       0.01   1000   1 {name}",
                    "",
                )
            )
            return
        run.ok = False
        if not _silent(params):
            message = (
                f'Cannot find a process with the name "{name}". '
                "Verify the process name and call the cmdlet again."
            )
            run.err(_cmdlet_error("Get-Process", message, line_no, line))

    return probe


def _get_content(words: list[str], line_no: int, line: str) -> Statement | str:
    params = _params(words[1:], ("path",))
    if params is None or "path" not in params:
        return _binding_error("Get-Content", line_no, line)
    path, tail = params["path"], params.get("tail")

    def get_content(run: _Run) -> None:
        local = _local(run, path)
        try:
            text = local.read_text(errors="replace")
        except OSError:
            run.ok = False
            if not _silent(params):
                message = f"Cannot find path '{path}' because it does not exist."
                run.err(_cmdlet_error("Get-Content", message, line_no, line))
            return
        lines = text.splitlines()
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) > 0 else []
        run.out(_lines(*lines))

    return get_content


def _start_process(words: list[str], line_no: int, line: str) -> Statement | str:
    params = _params(words[1:], ("filepath", "argumentlist"))
    if params is None or "filepath" not in params:
        return _binding_error("Start-Process", line_no, line)
    path = params["filepath"]

    def start_process(run: _Run) -> None:
        with run.vm_store.transaction() as state:
            vm = Vm(run.vm_store, state, run.conn)
            program = state["programs"].get(path.lower())
            if program is None:
                run.ok = False
                message = (
                    "This command cannot be run due to the error: "
                    "The system cannot find the file specified."
                )
                run.err(_cmdlet_error("Start-Process", message, line_no, line))
                return
            vm.spawn(
                program["argv"],
                name=program_name(path),
                path=path,
                env=program.get("env"),
                cwd=program.get("cwd"),
            )

    return start_process


def task_key(state: dict[str, Any], name: str) -> str | None:
    """The stored name of task ``name`` (Windows task names ignore case)."""
    return next((k for k in state["tasks"] if k.lower() == name.lower()), None)


def _start_task(words: list[str], line_no: int, line: str) -> Statement | str:
    params = _params(words[1:], ("taskname",))
    if params is None or "taskname" not in params:
        return _binding_error("Start-ScheduledTask", line_no, line)
    name = params["taskname"]

    def start_task(run: _Run) -> None:
        with run.vm_store.transaction() as state:
            key = task_key(state, name)
            if key is None:
                run.ok = False
                message = "The system cannot find the file specified."
                run.err(_cmdlet_error("Start-ScheduledTask", message, line_no, line))
                return
            task = state["tasks"][key]
            task["state"] = "Running"
            task["runs"] = task.get("runs", 0) + 1
            vm = Vm(run.vm_store, state, run.conn)
            program = state["programs"].get(str(task.get("program") or "").lower())
            argv = task.get("argv") or (program or {}).get("argv")
            if argv:
                path = task.get("program") or key
                env = {**(program or {}).get("env", {}), **task.get("env", {})}
                task["pid"] = vm.spawn(argv, name=program_name(path), path=path, env=env)

    start_task.task_name = name  # type: ignore[attr-defined]
    return start_task


def _call(words: list[str], line_no: int, line: str) -> Statement | str:
    argv = [unquote(w) for w in words]
    prog = argv[0]

    def call(run: _Run) -> None:
        local: str | None
        if _DRIVE.match(prog):
            state = run.vm_store.read()
            program = state["programs"].get(prog.lower())
            cmd = [*program["argv"], *argv[1:]] if program else None
            local = cmd[0] if cmd else None
        else:
            cmd = [prog, *argv[1:]]
            local = shutil.which(prog)
        if cmd is None or local is None:
            run.err(not_recognized(prog, line_no, line))
            run.ok = False
            return
        done = subprocess.run([local, *cmd[1:]], check=False)
        run.last_exit = done.returncode if done.returncode >= 0 else 1
        run.ok = done.returncode == 0

    return call


@dataclass(frozen=True)
class Plan:
    """A compiled script: its statements, or the first unknown command."""

    statements: list[Statement]
    unknown: tuple[str, int, str] | None  # (command, line number, line)

    def tasks(self) -> list[str]:
        """Task names the script starts."""
        return [s.task_name for s in self.statements if hasattr(s, "task_name")]


_TEMPLATE_TAIL = (
    "$homeopsOk = $?",
    "if ($null -ne $LASTEXITCODE) { exit $LASTEXITCODE }",
    "if ($homeopsOk) { exit 0 }",
    "exit 1",
)


def compile_script(script: str) -> Plan:
    """Compile ``script`` line by line."""
    lines = script.replace("\r\n", "\n").split("\n")
    statements: list[Statement] = []
    # powershell_script(argv): "& 'prog' 'args'" then the $LASTEXITCODE/$? epilogue.
    body = [ln.strip() for ln in lines if ln.strip()]
    if len(body) == 5 and tuple(body[1:]) == _TEMPLATE_TAIL:
        return _compile_template(body[0])
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        compiled = _compile_line(stripped, no)
        if isinstance(compiled, str):
            return Plan(statements, (compiled, no, stripped))
        statements.append(compiled)
    return Plan(statements, None)


def _compile_template(first: str) -> Plan:
    words = _tokens(first)
    if not words or words[0] != "&" or len(words) < 2:
        return Plan([], (first, 1, first))
    argv = [unquote(w) for w in words[1:]]
    # A cmdlet called by name runs as that cmdlet would; anything else as a program. Quoted
    # words are arguments, never parameter names (as in PowerShell: '-Seconds' is a string).
    line = " ".join([argv[0], *words[2:]])
    if argv[0].lower() in _CMDLETS:
        inner = _compile_line(line, 1)
        if isinstance(inner, str):
            return Plan([], (inner, 1, first))

        def as_cmdlet(run: _Run) -> None:
            inner(run)
            run.exit = 0 if run.ok else 1

        return Plan([as_cmdlet], None)
    call = _call(words[1:], 1, first)
    assert not isinstance(call, str)

    def as_program(run: _Run) -> None:
        call(run)
        run.exit = run.last_exit if run.last_exit is not None else (0 if run.ok else 1)

    return Plan([as_program], None)


_CMDLETS = frozenset(
    {
        "write-output",
        "write-host",
        "write-error",
        "start-sleep",
        "test-path",
        "get-process",
        "get-content",
        "start-process",
        "start-scheduledtask",
    }
)


def run_plan(plan: Plan, store: StateStore, conn: str) -> Reply:
    """Run compiled statements; an unknown command is reported where PowerShell would."""
    run = _Run(store, conn)
    for statement in plan.statements:
        statement(run)
        if run.exit is not None:
            break
    else:
        if plan.unknown is not None:
            name, no, line = plan.unknown
            run.err(not_recognized(name, no, line))
            run.ok = False
    code = run.exit if run.exit is not None else (0 if run.ok else 1)
    # Output was already written as it came; the Reply carries it for the call log.
    return Reply("".join(run.stdout), "".join(run.stderr), code)


# -- extensions --------------------------------------------------------------------------------


def _extensions(site: Sequence[str]) -> list[Any]:
    here = Path(__file__).resolve()
    repo = here.parents[2]
    for path in [str(repo), str(repo / "src"), *site]:
        if path not in sys.path:
            sys.path.append(path)
    return [
        importlib.import_module(f"tests.fakes.{module.stem}")
        for module in sorted(here.parent.glob("winvm_*.py"))
    ]


def _by_extensions(script: str, vm: Vm, site: Sequence[str]) -> tuple[Reply, str] | None:
    for module in _extensions(site):
        for pattern, handler in getattr(module, "HANDLERS", ()):
            found = pattern.search(script)
            if found is not None:
                reply = as_reply(handler(found, script, vm))
                if reply is not None:
                    return reply, f"{module.__name__}:{getattr(handler, '__name__', '?')}"
        handle = getattr(module, "handle", None)
        if handle is not None:
            reply = as_reply(handle(script, vm.state, vm.root))
            if reply is not None:
                return reply, f"{module.__name__}:handle"
    return None


# -- the program -------------------------------------------------------------------------------


def _answer(script: str, store: StateStore) -> Reply | None:
    with store.transaction() as state:
        for answer in state["answers"]:
            if answer.get("times") == 0 or not re.search(answer["pattern"], script, re.S):
                continue
            if answer.get("times") is not None:
                answer["times"] -= 1
            return Reply(answer.get("stdout", ""), answer.get("stderr", ""), answer.get("exit", 0))
    return None


def _emit(reply: Reply) -> None:
    _write(1, reply.stdout)
    _write(2, reply.stderr)


def powershell(script: str, store: StateStore, conn: str, site: Sequence[str]) -> tuple[Reply, str]:
    """Answer one decoded script (see the module docstring for the order); output is written."""
    answered = _answer(script, store)
    if answered is not None:
        _emit(answered)
        return answered, "answer"
    with store.transaction() as state:
        vm = Vm(store, state, conn)
        for whole in WHOLE_SCRIPTS:
            reply = whole(script, vm)
            if reply is not None:
                _emit(reply)
                return reply, whole.__name__.lstrip("_")
    plan = compile_script(script)
    known_tasks = store.read()
    if plan.unknown is None and all(task_key(known_tasks, t) for t in plan.tasks()):
        return run_plan(plan, store, conn), "interpreter"
    with store.transaction() as state:
        found = _by_extensions(script, Vm(store, state, conn), site)
    if found is not None:
        _emit(found[0])
        return found
    return run_plan(plan, store, conn), "interpreter"


def _cmd(command: str, store: StateStore) -> Reply:
    sys.stdout.flush()
    done = subprocess.run(["/bin/sh", "-c", command], check=False, cwd=store.root)
    return Reply(exit_code=done.returncode if done.returncode >= 0 else 128 - done.returncode)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command sshd was asked for (``SSH_ORIGINAL_COMMAND``) as Windows would."""
    parser = argparse.ArgumentParser(description="Windows VM emulator (ForceCommand)")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--site", action="append", default=[], help="extra sys.path entries")
    args = parser.parse_args(argv)
    store = StateStore(args.state)
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    conn = os.environ.get("SSH_CONNECTION", "")
    call_id = f"{os.getpid()}-{time.monotonic_ns()}"
    started = time.monotonic()
    if command.strip() in ("internal-sftp", "sftp", SFTP_SERVER) or command.endswith("sftp-server"):
        store.record(
            {
                "id": call_id,
                "phase": "start",
                "time": _now(),
                "kind": "sftp",
                "command": command,
                "script": None,
                "conn": conn,
                "pid": os.getpid(),
            }
        )
        os.execv(SFTP_SERVER, [SFTP_SERVER, "-d", str(store.root)])
    script = decode_command(command)
    kind = "powershell" if script is not None else "cmd"
    store.record(
        {
            "id": call_id,
            "phase": "start",
            "time": _now(),
            "kind": kind,
            "command": command,
            "script": script,
            "conn": conn,
            "pid": os.getpid(),
        }
    )
    running = store.register_running(command, conn)
    handler = kind
    try:
        if not command.strip():
            reply = Reply(stderr="emulator: no interactive shell here\r\n", exit_code=1)
            _emit(reply)
        elif script is None:
            reply = _cmd(command, store)
        else:
            reply, handler = powershell(script, store, conn, args.site)
    except Exception as exc:  # the test must see the emulator's own failure
        reply = Reply(stderr=f"emulator error: {type(exc).__name__}: {exc}\r\n", exit_code=70)
        _emit(reply)
    finally:
        running.unlink(missing_ok=True)
    store.record(
        {
            "id": call_id,
            "phase": "end",
            "time": _now(),
            "exit": reply.exit_code,
            "handler": handler,
            "stdout": reply.stdout[:_OUTPUT_HEAD],
            "stderr": reply.stderr[:_OUTPUT_HEAD],
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
    )
    return reply.exit_code


if __name__ == "__main__":
    sys.exit(main())
