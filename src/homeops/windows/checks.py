"""Doctor checks and supervisor repairs of the windows domain.

The five checks of seed 001, in its order (SSH, Aloha server, Aloha client, Hatchet,
Playwright; the names are the failpoint names), then the items of seed 000's Drift
Checklist that can be read from Linux: forwarded ports, firewall rules, the Aloha processes,
the Playwright scheduled task, this program's version and the config file. A failed item
says how to fix it. Repairs (run by ``supervisor run`` when a check fails, then re-checked):
the firewall rules, the configured Aloha start commands, ``Start-ScheduledTask``.

Every probe opens its own short-lived SSH pool: a check must not leave a connection behind
in the event loop that ran it, and a pass every 30 s does not need one kept open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from homeops.core.health import Check, CheckOutcome, Status, tcp_port_open

if TYPE_CHECKING:
    from homeops.core.registry import DomainContext, Remediation
    from homeops.core.runner import RawRunner
    from homeops.windows.settings import WindowsSettings

GROUP: Final = "windows"
SSH_CHECK_TIMEOUT_S: Final = 25.0  # room for the seam's 3 connect attempts
HTTP_CHECK_TIMEOUT_S: Final = 15.0
PORT_TIMEOUT_S: Final = 3.0
ALOHA_SERVER_MARKER: Final = "Aloha API server is running"
FIREWALL_STATES: Final = ("enabled", "disabled", "missing")
PROCESS_STATES: Final = ("running", "missing")


def _ok(detail: str, **data: object) -> CheckOutcome:
    return CheckOutcome(Status.OK, detail, data)


def _fail(detail: str, fix: str, **data: object) -> CheckOutcome:
    return CheckOutcome(Status.FAIL, f"{detail}; fix: {fix}", {**data, "fix": fix})


def _skip(detail: str) -> CheckOutcome:
    return CheckOutcome(Status.SKIP, detail)


def url_port(url: str, default: int) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL; the scheme's port when none is given."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port
    except ValueError:  # out of range: the settings' own check reports it; probe the default
        return host, default
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme, default)
    return host, port


def firewall_rules(settings: WindowsSettings) -> dict[str, int]:
    """The inbound rules the VM needs, by display name (seed 001's ``Aloha-7887`` style)."""
    _, server = url_port(settings.aloha.server_url, 7887)
    _, client = url_port(settings.aloha.client_url, 7888)
    return {
        f"Aloha-{server}": server,
        f"Aloha-{client}": client,
        f"Playwright-{settings.playwright.port}": settings.playwright.port,
    }


@dataclass(frozen=True)
class _Probes:
    """The probes of one settings snapshot; each opens what it needs and closes it."""

    settings: WindowsSettings
    dctx: DomainContext

    async def _on_vm(
        self,
        action: Callable[[RawRunner], Awaitable[CheckOutcome]],
        fix: str = "make the ssh check pass first: this is read over SSH",
    ) -> CheckOutcome:
        from homeops.core.errors import HomeopsError
        from homeops.windows.target import vm_runner

        try:
            async with vm_runner(self.settings.windows) as runner:
                return await action(runner)
        except HomeopsError as exc:
            return _fail(exc.message, fix)

    async def ssh(self) -> CheckOutcome:
        from homeops.windows.vm import run_script

        section = self.settings.windows
        where = f"{section.ssh_user}@{section.ssh_host}:{section.ssh_port}"

        async def probe(runner: RawRunner) -> CheckOutcome:
            done = await run_script(runner, "'homeops-ssh-ok'")
            if "homeops-ssh-ok" not in done.stdout_text:
                return _fail(
                    f"{where}: PowerShell did not answer as expected",
                    "check the VM's OpenSSH DefaultShell and that powershell.exe runs",
                )
            return _ok(f"{where}: OpenSSH and PowerShell answer", host=where)

        return await self._on_vm(
            probe,
            "start the VM and its OpenSSH server (sshd), check the 22555->22 forward, "
            "windows.ssh_identity_file and the host key in windows.known_hosts",
        )

    async def aloha_server(self) -> CheckOutcome:
        from homeops.core import http
        from homeops.core.errors import HomeopsError

        url = _root(self.settings.aloha.server_url)
        fix = "run aloha.server_start_cmd on the VM (supervisor run --once) and allow 7887 inbound"
        try:
            async with http.make_client(timeout=5.0) as client:
                response = await http.request(client, "GET", url)
        except HomeopsError as exc:
            return _fail(f"{url}: {exc.message}", fix)
        if response.status_code != 200 or ALOHA_SERVER_MARKER not in response.text:
            return _fail(f"{url}: HTTP {response.status_code} without the server's marker", fix)
        return _ok(f"{url}: {ALOHA_SERVER_MARKER}", status=response.status_code)

    async def aloha_client(self) -> CheckOutcome:
        from homeops.core import http
        from homeops.core.errors import HomeopsError

        url = _root(self.settings.aloha.client_url)
        try:
            async with http.make_client(timeout=5.0) as client:
                response = await http.request(client, "GET", url)
        except HomeopsError as exc:
            return _fail(
                f"{url}: {exc.message}",
                "run aloha.client_start_cmd on the VM (supervisor run --once), allow 7888 inbound",
            )
        # The client has no GET route (CONTRACTS.md §2): any answer means it is up, and a
        # 404 is the expected one; say which it was rather than call every answer healthy.
        note = " (404: the client has no GET /, as expected)" if response.status_code == 404 else ""
        return _ok(
            f"{url}: reachable, HTTP {response.status_code}{note}", status=response.status_code
        )

    async def hatchet(self) -> CheckOutcome:
        section = self.settings.hatchet
        if section.token is None:
            return _skip("not configured (no hatchet.token): jobs use the embedded store")
        from homeops.core import http
        from homeops.core.errors import HomeopsError

        base = section.health_url.rstrip("/")
        answers: dict[str, object] = {}
        try:
            async with http.make_client(timeout=5.0) as client:
                for route in ("live", "ready", "version"):
                    response = await http.request(client, "GET", f"{base}/{route}")
                    answers[route] = response.status_code
                    if route == "version" and response.status_code == 200:
                        answers["server_version"] = _json_field(response.text, "version")
        except HomeopsError as exc:
            return _fail(
                f"{base}: {exc.message}", "start hatchet-lite (hatchet server start)", **answers
            )
        sdk = _sdk_version()
        data = {**answers, "sdk_version": sdk}
        if answers.get("live") != 200 or answers.get("ready") != 200:
            return _fail(
                f"{base}: /live {answers.get('live')}, /ready {answers.get('ready')}",
                "wait for hatchet-lite's migrations (503 while they run) or check its logs",
                **data,
            )
        server = answers.get("server_version") or "unknown"
        return _ok(f"{base}: live and ready, server {server}, sdk {sdk or 'not installed'}", **data)

    async def playwright(self) -> CheckOutcome:
        from homeops.core.errors import HomeopsError
        from homeops.windows import playwright_flow

        section = self.settings.playwright
        try:
            ws_path = playwright_flow.resolve_ws_path(section, self.dctx.core.state_dir)
            report = await playwright_flow.health(section, ws_path)
        except HomeopsError as exc:
            return _fail(
                exc.message,
                "run `win-automation playwright install`, or start the WinAutomation-Playwright "
                "task; check the 9323 forward",
            )
        return _ok(
            f"{section.host}:{section.port}: browser {report.browser_version}, "
            f"client {report.client_version}",
            browser_version=report.browser_version,
            client_version=report.client_version,
        )

    async def forwarded_ports(self) -> CheckOutcome:
        wanted = self._ports()
        answers = await asyncio.gather(
            *(tcp_port_open(h, p, timeout=PORT_TIMEOUT_S) for h, p in wanted.values())
        )
        closed = [name for name, up in zip(wanted, answers, strict=True) if not up]
        data = {name: f"{h}:{p}" for name, (h, p) in wanted.items()}
        if closed:
            shown = ", ".join(f"{n} ({data[n]})" for n in closed)
            return _fail(
                f"no answer on {shown}",
                "add the port forwards (services.windowsServer.extraPortForwards) and start "
                "what listens behind them",
                closed=closed,
                **data,
            )
        return _ok(f"{len(wanted)} forwarded ports answer", **data)

    def _ports(self) -> dict[str, tuple[str, int]]:
        s = self.settings
        ports = {
            "ssh": (s.windows.ssh_host, s.windows.ssh_port),
            "aloha_server": url_port(s.aloha.server_url, 7887),
            "aloha_client": url_port(s.aloha.client_url, 7888),
            "playwright": (s.playwright.host, s.playwright.port),
        }
        if s.hatchet.token is not None:
            grpc_host, _, grpc_port = s.hatchet.grpc_address.rpartition(":")
            ports["hatchet_http"] = url_port(s.hatchet.http_url, 8888)
            ports["hatchet_health"] = url_port(s.hatchet.health_url, 8733)
            if grpc_port.isdigit():
                ports["hatchet_grpc"] = (grpc_host or "localhost", int(grpc_port))
        return ports

    async def firewall(self) -> CheckOutcome:
        from homeops.windows import powershell as ps
        from homeops.windows.vm import run_script

        rules = firewall_rules(self.settings)
        names = tuple(rules)

        async def probe(runner: RawRunner) -> CheckOutcome:
            done = await run_script(runner, ps.firewall_state_script(names))
            states = ps.parse_states(done.stdout_text, names, FIREWALL_STATES)
            bad = [f"{n} {st}" for n, st in states.items() if st != "enabled"]
            if bad:
                return _fail(
                    "firewall rules: " + ", ".join(bad),
                    "run `win-automation supervisor run --once` (creates or enables them)",
                    **states,
                )
            return _ok("firewall rules enabled: " + ", ".join(names), **states)

        return await self._on_vm(probe)

    async def aloha_processes(self) -> CheckOutcome:
        from homeops.windows import powershell as ps
        from homeops.windows.vm import run_script

        aloha = self.settings.aloha
        wanted = {
            role: name
            for role, name in (
                ("server", ps.program_process_name(aloha.server_start_cmd)),
                ("client", ps.program_process_name(aloha.client_start_cmd)),
            )
            if name is not None
        }
        if not wanted:
            return _skip("no aloha.server_start_cmd/client_start_cmd naming an .exe to look for")
        names = tuple(dict.fromkeys(wanted.values()))

        async def probe(runner: RawRunner) -> CheckOutcome:
            done = await run_script(runner, ps.process_state_script(names))
            states = ps.parse_states(done.stdout_text, names, PROCESS_STATES)
            missing = [
                f"{role} ({name})" for role, name in wanted.items() if states[name] != "running"
            ]
            if missing:
                return _fail(
                    "not running: " + ", ".join(missing),
                    "run `win-automation supervisor run --once` (runs the start commands)",
                    **states,
                )
            return _ok("running: " + ", ".join(f"{r} ({n})" for r, n in wanted.items()), **states)

        return await self._on_vm(probe)

    async def playwright_task(self) -> CheckOutcome:
        from homeops.windows import playwright as pw
        from homeops.windows import powershell as ps
        from homeops.windows.vm import run_script

        async def probe(runner: RawRunner) -> CheckOutcome:
            done = await run_script(runner, pw.task_state_script())
            task = pw.parse_task_state(done.stdout_text)
            if not task.exists:
                return _fail(
                    f"scheduled task {ps.PLAYWRIGHT_TASK} is not registered",
                    "run `win-automation playwright install`",
                )
            if not task.running:
                return _fail(
                    f"scheduled task {ps.PLAYWRIGHT_TASK} is {task.state}, not Running",
                    "run `win-automation supervisor run --once` (starts the task)",
                    state=task.state,
                )
            return _ok(f"scheduled task {ps.PLAYWRIGHT_TASK} is Running", state=task.state)

        return await self._on_vm(probe)

    async def version(self) -> CheckOutcome:
        from homeops import __version__

        return _ok(f"homeops {__version__}", version=__version__)

    async def config(self) -> CheckOutcome:
        path = self.dctx.config_path or self.dctx.environ.get("WIN_AUTOMATION_CONFIG")
        if not path:
            return _ok("no config file: built-in defaults and environment", path=None)
        return _ok(f"{path}: valid", path=str(path))


def _root(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def _json_field(text: str, key: str) -> object:
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def _sdk_version() -> str | None:
    # The installed distribution's version, without importing it (hatchet_sdk costs ~1.5 s).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hatchet-sdk")
    except PackageNotFoundError:
        return None


def configured(dctx: DomainContext) -> bool:
    """Whether this invocation is about the VM: the seed tool, or a windows setting given
    in a file or the environment. ``homeops doctor`` on the embedded defaults is not."""
    from homeops.core.config import DEFAULT

    config = dctx.config
    if config is None or config.seed == GROUP:
        return True
    return any(source != DEFAULT for source in config.domain(GROUP).sources.values())


def _skipped(check: Check) -> Check:
    async def probe() -> CheckOutcome:
        return _skip("windows domain not configured (no windows settings in file or env)")

    return Check(check.name, probe, check.timeout, check.group)


def windows_checks(dctx: DomainContext) -> list[Check]:
    """The domain's doctor checks, the seed's five first (they are the failpoint names);
    all skipped when nothing configures the domain (see :func:`configured`)."""
    checks = _all_checks(dctx)
    return checks if configured(dctx) else [_skipped(c) for c in checks]


def _all_checks(dctx: DomainContext) -> list[Check]:
    probes = _Probes(dctx.settings("windows"), dctx)
    return [
        Check("ssh", probes.ssh, SSH_CHECK_TIMEOUT_S, GROUP),
        Check("aloha_server", probes.aloha_server, HTTP_CHECK_TIMEOUT_S, GROUP),
        Check("aloha_client", probes.aloha_client, HTTP_CHECK_TIMEOUT_S, GROUP),
        Check("hatchet", probes.hatchet, HTTP_CHECK_TIMEOUT_S, GROUP),
        Check("playwright", probes.playwright, HTTP_CHECK_TIMEOUT_S, GROUP),
        Check("forwarded_ports", probes.forwarded_ports, PORT_TIMEOUT_S + 2, GROUP),
        Check("firewall_rules", probes.firewall, SSH_CHECK_TIMEOUT_S, GROUP),
        Check("aloha_processes", probes.aloha_processes, SSH_CHECK_TIMEOUT_S, GROUP),
        Check("playwright_task", probes.playwright_task, SSH_CHECK_TIMEOUT_S, GROUP),
        Check("version", probes.version, 1.0, GROUP),
        Check("config", probes.config, 1.0, GROUP),
    ]


def windows_remediations(dctx: DomainContext) -> Mapping[str, Remediation]:
    """Repairs by check name: firewall rules, the Aloha start commands, the Playwright task."""
    from homeops.windows import powershell as ps

    settings: WindowsSettings = dctx.settings("windows")
    rules = firewall_rules(settings)
    by_port = {port: ps.FirewallRule(name, port) for name, port in rules.items()}
    _, server_port = url_port(settings.aloha.server_url, 7887)
    _, client_port = url_port(settings.aloha.client_url, 7888)

    def repair(*scripts: str | None) -> Remediation:
        async def run() -> None:
            from homeops.windows.target import vm_runner
            from homeops.windows.vm import run_script

            async with vm_runner(settings.windows) as runner:
                for script in scripts:
                    if script:
                        await run_script(runner, script, timeout=60.0)

        return run

    def rule(port: int) -> str:
        return ps.firewall_rule_script(by_port[port])

    return {
        "aloha_server": repair(rule(server_port), settings.aloha.server_start_cmd),
        "aloha_client": repair(rule(client_port), settings.aloha.client_start_cmd),
        "playwright": repair(rule(settings.playwright.port), ps.start_playwright_task_script()),
        "firewall_rules": repair(*(ps.firewall_rule_script(r) for r in by_port.values())),
        "playwright_task": repair(ps.start_playwright_task_script()),
    }
