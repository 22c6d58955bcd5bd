"""PowerShell the windows domain sends to the VM, and parsers of what comes back.

Pure builders and parsers (CONTRACTS.md §1); the SSH seam sends them with
``-EncodedCommand`` (core/ssh/shell.py), which survives cmd.exe and every other quoting
layer. Each probe prints one marker word, so a parser can tell "no" from "the script did
not run" (a missing cmdlet, a profile that prints a banner) instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from homeops.core.errors import OperationalError, UsageError
from homeops.core.ssh.shell import powershell_literal

LOCKED: Final = "locked"
UNLOCKED: Final = "unlocked"
LISTENING: Final = "listening"
NOT_LISTENING: Final = "not-listening"

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
