"""PowerShell the windows domain sends to the VM, and parsers of what comes back.

Pure builders and parsers (CONTRACTS.md §1); the SSH seam sends them with
``-EncodedCommand`` (core/ssh/shell.py), which survives cmd.exe and every other quoting
layer. Each probe prints one marker word, so a parser can tell "no" from "the script did
not run" (a missing cmdlet, a profile that prints a banner) instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from homeops.core.errors import OperationalError, UsageError
from homeops.core.ssh.shell import powershell_literal

LOCKED: Final = "locked"
UNLOCKED: Final = "unlocked"
LISTENING: Final = "listening"
NOT_LISTENING: Final = "not-listening"

# The program name of a start command's .exe (quoted or bare, any directory).
_EXE: Final = re.compile(r"([A-Za-z0-9_.-]+)\.exe\b", re.IGNORECASE)

# The Playwright server's scheduled task (CONTRACTS.md §1).
PLAYWRIGHT_TASK: Final = "WinAutomation-Playwright"


def desktop_locked_script() -> str:
    """Prints ``locked`` while the lock screen (LogonUI) runs, else ``unlocked``."""
    return (
        "if (Get-Process -Name LogonUI -ErrorAction SilentlyContinue) "
        f"{{ '{LOCKED}' }} else {{ '{UNLOCKED}' }}"
    )


def _marker(stdout: str, allowed: tuple[str, ...], what: str) -> str:
    # The last non-empty line: a profile or a module may print before the script's answer.
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if last not in allowed:
        shown = last if len(last) <= 80 else last[:77] + "..."
        raise OperationalError(f"{what}: unexpected answer from the VM: {shown!r}")
    return last


def parse_desktop_locked(stdout: str) -> bool:
    """Whether :func:`desktop_locked_script`'s output says the desktop is locked."""
    return _marker(stdout, (LOCKED, UNLOCKED), "desktop-locked check") == LOCKED


def _port(port: int) -> int:
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError(f"port must be 1-65535, got {port!r}")
    return port


def port_listening_script(port: int) -> str:
    """Prints ``listening`` when something listens on TCP ``port``, else ``not-listening``."""
    return (
        f"if (Get-NetTCPConnection -LocalPort {_port(port)} -State Listen "
        f"-ErrorAction SilentlyContinue) {{ '{LISTENING}' }} else {{ '{NOT_LISTENING}' }}"
    )


def parse_port_listening(stdout: str) -> bool:
    """Whether :func:`port_listening_script`'s output says the port listens."""
    return _marker(stdout, (LISTENING, NOT_LISTENING), "port check") == LISTENING


@dataclass(frozen=True)
class FirewallRule:
    """An inbound allow rule for one TCP port, on every profile."""

    name: str
    port: int

    def __post_init__(self) -> None:
        if not self.name.strip() or "\n" in self.name or "\r" in self.name:
            raise UsageError("firewall rule name must be one non-empty line")
        _port(self.port)


def firewall_rule_script(rule: FirewallRule) -> str:
    """Create the rule, or enable it if a rule of that name exists: safe to run again."""
    name = powershell_literal(rule.name)
    return "\n".join(
        [
            f"$rule = Get-NetFirewallRule -DisplayName {name} -ErrorAction SilentlyContinue",
            "if ($rule) {",
            f"  Set-NetFirewallRule -DisplayName {name} -Enabled True",
            "  'enabled'",
            "} else {",
            f"  New-NetFirewallRule -DisplayName {name} -Direction Inbound -Action Allow "
            f"-Protocol TCP -LocalPort {rule.port} -Profile Any | Out-Null",
            "  'created'",
            "}",
        ]
    )


def parse_firewall_rule(stdout: str) -> str:
    """``created`` or ``enabled``, from :func:`firewall_rule_script`'s output."""
    return _marker(stdout, ("created", "enabled"), "firewall rule")


def start_playwright_task_script() -> str:
    """Start the Playwright server's scheduled task."""
    return f"Start-ScheduledTask -TaskName {powershell_literal(PLAYWRIGHT_TASK)}"


# -- drift queries (doctor): one `name=state` line per item asked about ------------------------


def _names(names: tuple[str, ...], what: str) -> str:
    if not names:
        raise UsageError(f"{what}: no names given")
    for name in names:
        if not name.strip() or any(c in name for c in "\r\n="):
            raise UsageError(f"{what}: not a plain name: {name!r}")
    return ", ".join(powershell_literal(n) for n in names)


def firewall_state_script(names: tuple[str, ...]) -> str:
    """Prints ``<name>=enabled|disabled|missing`` for each firewall rule display name."""
    return (
        f"foreach ($n in @({_names(names, 'firewall rules')})) {{\n"
        "  $r = Get-NetFirewallRule -DisplayName $n -ErrorAction SilentlyContinue\n"
        '  if (-not $r) { "$n=missing" }\n'
        "  elseif (@($r | Where-Object { $_.Enabled -eq 'True' }).Count -gt 0) "
        '{ "$n=enabled" }\n'
        '  else { "$n=disabled" }\n'
        "}"
    )


def process_state_script(names: tuple[str, ...]) -> str:
    """Prints ``<name>=running|missing`` for each process name (``server`` for server.exe)."""
    return (
        f"foreach ($n in @({_names(names, 'processes')})) {{\n"
        "  if (Get-Process -Name $n -ErrorAction SilentlyContinue) "
        '{ "$n=running" } else { "$n=missing" }\n'
        "}"
    )


def parse_states(stdout: str, names: tuple[str, ...], allowed: tuple[str, ...]) -> dict[str, str]:
    """The ``name=state`` lines of a drift query, for exactly ``names``.

    A name the VM did not answer for, or an unknown state, is an :class:`OperationalError`
    (the script did not run as written), never read as "missing".
    """
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        name, sep, state = line.strip().rpartition("=")
        if sep and name in names and state in allowed:
            found[name] = state
    absent = [n for n in names if n not in found]
    if absent:
        raise OperationalError(f"drift query: no answer from the VM for {absent[0]!r}")
    return found


def program_process_name(start_cmd: str | None) -> str | None:
    """The process name a start command launches: ``Start-Process -FilePath 'C:\\A\\server.exe'``
    → ``server``; None when the command names no ``.exe``."""
    if not start_cmd:
        return None
    match = _EXE.search(start_cmd)
    return match.group(1) if match else None
