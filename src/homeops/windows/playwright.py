"""The Playwright server on the VM: the files ``playwright install`` writes there, the
PowerShell it runs, and pure parsers of what comes back (CONTRACTS.md §1, §3).

On Windows, ``launch-server.js`` (Node) calls ``chromium.launchServer`` from the ``playwright``
npm package and serves ``ws://<host>:<port>/<ws path>``. The ws path is the only secret
guarding the browser, so it never travels inside a script or an argv (both are logged, and a
base64 ``-EncodedCommand`` would hide it from the log masking): it is uploaded over SFTP into
``ws_path.txt`` beside the script, which reads it at start.

Every probe prints ``key=value`` marker lines and a final ``<probe>=done`` line, so a parser
can tell "node is missing" from "the script did not run" (a profile banner, a missing cmdlet).
No I/O here.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from homeops.core.errors import ConfigError, DependencyUnavailable, OperationalError, UsageError
from homeops.core.ssh.shell import powershell_literal
from homeops.windows.paths import PLAYWRIGHT_DIR, windows_join
from homeops.windows.powershell import PLAYWRIGHT_TASK

LAUNCH_SERVER_NAME: Final = "launch-server.js"
WS_PATH_NAME: Final = "ws_path.txt"
INSTALL_SCRIPT_NAME: Final = "install.ps1"
LAUNCH_SERVER_PATH: Final = windows_join(PLAYWRIGHT_DIR, LAUNCH_SERVER_NAME)
WS_PATH_PATH: Final = windows_join(PLAYWRIGHT_DIR, WS_PATH_NAME)
INSTALL_SCRIPT_PATH: Final = windows_join(PLAYWRIGHT_DIR, INSTALL_SCRIPT_NAME)
# The server binds every interface on the VM: the QEMU host forward does not reach loopback.
SERVER_BIND_HOST: Final = "0.0.0.0"
# The local copy of a generated ws path, under the core's state dir (mode 0600).
LOCAL_WS_PATH_FILE: Final = Path("windows") / "playwright-ws-path"
# Node package names launch-server.js accepts, in order: `playwright` is what the seed tells
# the user to install; `playwright-core` has the same launchServer and is what runs here.
PACKAGES: Final = ("playwright", "playwright-core")
# 24 random bytes: 32 URL-safe characters, 192 bits.
WS_PATH_BYTES: Final = 24
# Shorter secrets would be guessable, and the log masking ignores very short ones.
WS_PATH_MIN_LEN: Final = 8
_WS_PATH_CHARS = re.compile(r"[A-Za-z0-9._~-]+")
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+][0-9A-Za-z.-]*)?")
MISSING: Final = "missing"


# -- launch-server.js -----------------------------------------------------------------------

_LAUNCH_SERVER_JS = r"""// The Playwright server of the Windows VM.
// Written by `win-automation playwright install`.
// Run by the scheduled task WinAutomation-Playwright:
//   node.exe launch-server.js --host=0.0.0.0 --port=9323
// The ws path (the only secret guarding the browser) is read from ws_path.txt beside this
// file and never printed. Optional: --executable-path=PATH and --browser-arg=ARG (repeatable)
// choose another Chromium build and its flags.
'use strict';
const fs = require('fs');
const path = require('path');

function values(name) {
  const prefix = '--' + name + '=';
  return process.argv.slice(2)
    .filter((a) => a.startsWith(prefix))
    .map((a) => a.slice(prefix.length));
}

function last(name, fallback) {
  const found = values(name);
  return found.length ? found[found.length - 1] : fallback;
}

function fail(message) {
  console.error('launch-server: ' + message);
  process.exit(2);
}

function loadPlaywright() {
  for (const name of ['playwright', 'playwright-core']) {
    try {
      return require(name);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  fail('npm package playwright not found (npm install playwright in ' + __dirname + ')');
}

async function main() {
  const host = last('host', '127.0.0.1');
  const port = Number(last('port', '9323'));
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail('bad --port');
  let wsPath;
  try {
    // A BOM (Notepad) and the line end are not part of the secret.
    const raw = fs.readFileSync(path.join(__dirname, 'ws_path.txt'), 'utf8');
    wsPath = raw.replace(/^\uFEFF/, '').trim();
  } catch (e) {
    fail('cannot read ws_path.txt: ' + e.code);
  }
  if (!wsPath) fail('ws_path.txt is empty');
  if (!wsPath.startsWith('/')) wsPath = '/' + wsPath;
  const options = { host, port, wsPath, headless: true };
  const executablePath = last('executable-path', '');
  if (executablePath) options.executablePath = executablePath;
  const args = values('browser-arg');
  if (args.length) options.args = args;
  const server = await loadPlaywright().chromium.launchServer(options);
  // Not server.wsEndpoint(): it holds the secret, and this output may be logged.
  console.log('playwright server listening on ' + host + ':' + port);
  let closing = false;
  const stop = async () => {
    if (closing) return;
    closing = true;
    await server.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => fail(e && e.message ? e.message.split('\n')[0] : String(e)));
"""


def launch_server_js() -> str:
    """The text of ``launch-server.js``."""
    return _LAUNCH_SERVER_JS


def launch_server_argv(
    port: int,
    *,
    host: str = SERVER_BIND_HOST,
    executable_path: str | None = None,
    browser_args: tuple[str, ...] = (),
) -> list[str]:
    """The arguments after ``node launch-server.js``."""
    argv = [f"--host={host}", f"--port={_port(port)}"]
    if executable_path:
        argv.append(f"--executable-path={executable_path}")
    argv.extend(f"--browser-arg={arg}" for arg in browser_args)
    return argv


def task_arguments(port: int) -> str:
    """The scheduled task's argument line (CONTRACTS.md §1), after ``node.exe``."""
    return " ".join([LAUNCH_SERVER_PATH, *launch_server_argv(port)])


# -- PowerShell ------------------------------------------------------------------------------

# One line of JavaScript for `node -e`: only single quotes, since Windows PowerShell 5.1 does
# not escape double quotes inside arguments to native programs. It resolves the package as
# launch-server.js will (from its directory, plus NODE_PATH), so the check tells the truth.
_PACKAGE_PROBE_JS = (
    "const d=process.argv[1];"
    f"for (const n of [{', '.join(repr(p) for p in PACKAGES)}]) {{"
    "try {const p=require.resolve(n+'/package.json',{paths:[d]});"
    "console.log('playwright_package='+n);"
    "console.log('playwright='+require(p).version);process.exit(0)} catch (e) {}}"
    f"console.log('playwright={MISSING}')"
)


def prerequisites_script() -> str:
    """Prints ``node=<version|missing>``, ``playwright=<version|missing>``,
    ``playwright_package=<name>`` and ``prereq=done``."""
    return "\n".join(
        [
            "$node = Get-Command node.exe -ErrorAction SilentlyContinue",
            "if ($node) {",
            "  $v = (& node.exe --version 2>$null | Select-Object -First 1)",
            "  'node=' + $v",
            "  'node_path=' + $node.Source",
            f"  & node.exe -e {powershell_literal(_PACKAGE_PROBE_JS)} "
            f"{powershell_literal(PLAYWRIGHT_DIR)} 2>$null",
            "} else {",
            f"  'node={MISSING}'",
            f"  'playwright={MISSING}'",
            "}",
            "'prereq=done'",
        ]
    )


def make_dir_script() -> str:
    """Create the Playwright directory (safe to run again); prints ``dir=done``."""
    return (
        f"New-Item -ItemType Directory -Force -Path {powershell_literal(PLAYWRIGHT_DIR)} "
        "| Out-Null\n'dir=done'"
    )


def install_script(port: int) -> str:
    """``install.ps1``: lock ``ws_path.txt`` down and (re-)register the scheduled task.

    ``-Force`` makes a second run replace the task, so install is safe to repeat.
    """
    task = powershell_literal(PLAYWRIGHT_TASK)
    return "\n".join(
        [
            "# Written by `win-automation playwright install`; safe to run again.",
            "$ErrorActionPreference = 'Stop'",
            f"$dir = {powershell_literal(PLAYWRIGHT_DIR)}",
            f"$ws = Join-Path $dir {powershell_literal(WS_PATH_NAME)}",
            # ProgramData lets every local user read; the secret is for SYSTEM and admins only
            # (SIDs, not names, so a localized Windows matches too).
            "& icacls.exe $ws /inheritance:r /grant:r '*S-1-5-18:F' '*S-1-5-32-544:F' | Out-Null",
            "$action = New-ScheduledTaskAction -Execute 'node.exe' "
            f"-Argument {powershell_literal(task_arguments(port))} -WorkingDirectory $dir",
            "$trigger = New-ScheduledTaskTrigger -AtStartup",
            "$principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount "
            "-RunLevel Highest",
            # The default limit (72 h) would kill the server after three days; restart it
            # when node dies.
            "$settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) "
            "-RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1) -StartWhenAvailable",
            f"Register-ScheduledTask -TaskName {task} -Action $action -Trigger $trigger "
            "-Principal $principal -Settings $settings -Force | Out-Null",
            "'task=registered'",
        ]
    )


def run_install_script() -> str:
    """Run the uploaded ``install.ps1`` (the process-wide execution policy may forbid it)."""
    return "\n".join(
        [
            "Set-ExecutionPolicy -Scope Process -ExecutionPolicy Bypass -Force",
            f"& {powershell_literal(INSTALL_SCRIPT_PATH)}",
            "'install=done'",
        ]
    )


def restart_task_script() -> str:
    """Stop the task if it runs (an old ws path), then start it; prints ``start=done``."""
    task = powershell_literal(PLAYWRIGHT_TASK)
    return "\n".join(
        [
            f"Stop-ScheduledTask -TaskName {task} -ErrorAction SilentlyContinue",
            f"Start-ScheduledTask -TaskName {task}",
            "'start=done'",
        ]
    )


def task_state_script() -> str:
    """Prints ``task=<State>|missing``, ``action=<command line>`` and ``taskquery=done``."""
    task = powershell_literal(PLAYWRIGHT_TASK)
    return "\n".join(
        [
            f"$t = Get-ScheduledTask -TaskName {task} -ErrorAction SilentlyContinue",
            "if ($t) { 'task=' + $t.State; $a = $t.Actions | Select-Object -First 1; "
            "'action=' + $a.Execute + ' ' + $a.Arguments "
            f"}} else {{ 'task={MISSING}' }}",
            "'taskquery=done'",
        ]
    )


# -- parsers ---------------------------------------------------------------------------------


def _markers(stdout: str, done: str, what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw in stdout.splitlines():
        key, sep, value = raw.strip().partition("=")
        if sep and key.replace("_", "").isalnum():
            found[key] = value.strip()
    if found.get(done) != "done":
        tail = [line.strip() for line in stdout.splitlines() if line.strip()]
        shown = tail[-1][:80] if tail else ""
        raise OperationalError(f"{what}: unexpected answer from the VM: {shown!r}")
    return found


def _present(value: str | None) -> str | None:
    return None if value in (None, "", MISSING) else value


@dataclass(frozen=True)
class Prerequisites:
    """What :func:`prerequisites_script` found on the VM (None: missing)."""

    node_version: str | None
    playwright_version: str | None
    playwright_package: str | None = None
    node_path: str | None = None

    def missing(self) -> list[str]:
        """What must be installed first, in words for the user."""
        if self.node_version is None:
            return ["Node.js (node.exe on PATH)", "the playwright npm package"]
        if self.playwright_version is None:
            return ["the playwright npm package"]
        return []


def parse_prerequisites(stdout: str) -> Prerequisites:
    """:class:`Prerequisites` from :func:`prerequisites_script`'s output."""
    found = _markers(stdout, "prereq", "prerequisite check")
    node = _present(found.get("node"))
    playwright = _present(found.get("playwright")) if node else None
    return Prerequisites(
        node_version=node,
        playwright_version=playwright,
        playwright_package=_present(found.get("playwright_package")) if playwright else None,
        node_path=_present(found.get("node_path")),
    )


@dataclass(frozen=True)
class TaskStatus:
    """The scheduled task as Windows reports it (``state`` None: not registered)."""

    state: str | None
    action: str | None = None

    @property
    def exists(self) -> bool:
        """Whether the task is registered."""
        return self.state is not None

    @property
    def running(self) -> bool:
        """Whether Windows says it runs now."""
        return self.state == "Running"


def parse_task_state(stdout: str) -> TaskStatus:
    """:class:`TaskStatus` from :func:`task_state_script`'s output."""
    found = _markers(stdout, "taskquery", "scheduled task query")
    state = _present(found.get("task"))
    return TaskStatus(state, _present(found.get("action")) if state else None)


def parse_step(stdout: str, step: str) -> None:
    """Check that a step script (``dir``, ``install``, ``start``) ran to its end."""
    _markers(stdout, step, f"playwright install ({step})")


# -- ws path and URL -------------------------------------------------------------------------


def generate_ws_path(token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A new random ws path: 32 URL-safe characters (``token_bytes`` is the random source)."""
    return base64.urlsafe_b64encode(token_bytes(WS_PATH_BYTES)).decode("ascii").rstrip("=")


def check_ws_path(value: str, *, source: str = "", field: str = "playwright.ws_path") -> str:
    """The ws path without a leading ``/``; :class:`ConfigError` if it cannot be one.

    The message never quotes the value: it is a secret.
    """
    path = value.strip().removeprefix("/")
    if len(path) < WS_PATH_MIN_LEN:
        raise ConfigError(source, field, f"must be at least {WS_PATH_MIN_LEN} characters")
    if not _WS_PATH_CHARS.fullmatch(path):
        raise ConfigError(source, field, "may hold only letters, digits and . _ ~ -")
    return path


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def ws_url(host: str, port: int, ws_path: str) -> str:
    """``ws://host:port/<ws path>`` (the secret is in it: never log it)."""
    return f"ws://{_url_host(host)}:{_port(port)}/{ws_path.removeprefix('/')}"


def shown_ws_url(host: str, port: int) -> str:
    """The server's URL as logs and errors show it: the path masked."""
    return f"ws://{_url_host(host)}:{_port(port)}/***"


def check_url(url: str) -> str:
    """``url`` if a browser on the VM may open it (http or https with a host and a valid
    port, no control characters), else UsageError.

    ``file:`` and the like are refused: they would read the VM's own files. Control
    characters are refused before parsing: ``urlsplit`` silently drops tabs and line ends,
    so the URL it checked would not be the one the browser gets.
    """
    text = url.strip()
    for index, ch in enumerate(text):
        if not ch.isprintable():
            raise UsageError(f"--url contains a control character ({ch!r} at position {index})")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"--url must be an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise UsageError("--url has no host")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        shown = parts.netloc.rpartition(":")[2]
        raise UsageError(f"--url: port must be 1-65535, got {shown!r}")
    return text


# Node keeps timers as 32-bit signed milliseconds: a longer Playwright timeout fires at once
# ("TimeoutOverflowWarning: ... Timeout duration was set to 1"), so ~25 days or more would
# fail a healthy run immediately. Longer runs are still bounded by the caller's own timeout.
MAX_TIMEOUT_MS: Final = 2**31 - 1


def timeout_ms(seconds: float) -> float:
    """``seconds`` as the millisecond timeout Playwright takes: at least 1 ms (0 would mean
    "no timeout") and at most :data:`MAX_TIMEOUT_MS`."""
    return min(max(seconds * 1000.0, 1.0), float(MAX_TIMEOUT_MS))


# -- versions --------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Version:
    """A Playwright release number; only major.minor must match across client and server."""

    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def minor_line(self) -> str:
        """``major.minor``, what the server compares."""
        return f"{self.major}.{self.minor}"


def parse_version(text: str) -> Version:
    """``1.65.1``, ``v1.65`` or ``1.66.0-alpha``; OperationalError if it is none of those."""
    match = _VERSION.fullmatch(text.strip())
    if not match:
        raise OperationalError(f"not a Playwright version: {text.strip()[:40]!r}")
    major, minor, patch = match.groups()
    return Version(int(major), int(minor), int(patch or 0))


def compatible(server: Version, client: Version) -> bool:
    """Whether a client of ``client`` may connect to a server of ``server`` (major.minor)."""
    return (server.major, server.minor) == (client.major, client.minor)


class PlaywrightVersionMismatch(DependencyUnavailable):
    """Client and server Playwright differ in major.minor: the server refuses (exit 3)."""

    def __init__(self, server: str, client: str) -> None:
        super().__init__(
            f"Playwright version mismatch: the server on the VM runs {server}, this client is "
            f"{client}; install playwright@{client} on the VM (npm install playwright@{client}) "
            "or the matching Python playwright here, then run playwright install again"
        )
        self.server = server
        self.client = client


_MISMATCH_SERVER = re.compile(r"server version:\s*v?(\d+\.\d+(?:\.\d+)?)")
_MISMATCH_CLIENT = re.compile(r"client version:\s*v?(\d+\.\d+(?:\.\d+)?)")


def parse_version_mismatch(text: str) -> PlaywrightVersionMismatch | None:
    """The mismatch error in a failed connect's message (HTTP 428), or None if it is another."""
    if "428" not in text and "version mismatch" not in text.lower():
        return None
    server = _MISMATCH_SERVER.search(text)
    client = _MISMATCH_CLIENT.search(text)
    if not server or not client:
        return None
    return PlaywrightVersionMismatch(server.group(1), client.group(1))


def _port(port: int) -> int:
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError(f"port must be 1-65535, got {port!r}")
    return port
