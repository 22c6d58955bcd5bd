"""Doctor checks and supervisor repairs of the windows domain.

The five checks of seed 001, in its order (SSH, Aloha server, Aloha client, Hatchet,
Playwright; the names are the failpoint names), then the items of seed 000's Drift
Checklist that can be read from Linux: forwarded ports, firewall rules, the Aloha processes,
the Playwright scheduled task, this program's version and the config file. A failed item
says how to fix it; the Aloha verdicts are ``aloha health``'s (homeops.windows.aloha_flow).
Repairs (run by ``supervisor run`` when a check fails, then re-checked): the firewall rules,
the configured Aloha start commands, ``Start-ScheduledTask`` of a registered task that is
not running; one that starts a program waits, bounded, for its port before the re-check.

The VM checks (ssh, firewall_rules, aloha_processes, playwright_task) that run at the same
time, which is one doctor or supervisor pass, share one runner (one SshPool, so one SSH
connection) and one ssh outcome: the first of them to start opens the runner and runs the
ssh probe; the others wait for it and run their query on the same connection, or, when ssh
failed, report "not checked" (skip: the ssh check carries the failure and its fix) instead
of each retrying the connect of an unreachable VM. The last one to finish closes the pool:
a check must not leave a connection behind in the event loop that ran it, and a pass every
30 s does not need one kept open. A check run alone (the supervisor's confirming re-check)
opens its own, ssh probe first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from homeops.core.health import Check, CheckOutcome, Status, tcp_port_open, wait_listening
from homeops.core.logging import get_logger

if TYPE_CHECKING:
    from homeops.core.registry import DomainContext, Remediation
    from homeops.core.runner import RawRunner
    from homeops.windows.settings import WindowsSection, WindowsSettings

# Opens the runner on the VM for one pass (default: homeops.windows.target.vm_runner, a
# pool of its own closed on exit); tests pass a fake.
RunnerFactory = Callable[["WindowsSection"], AbstractAsyncContextManager["RawRunner"]]

_log = get_logger("windows.checks")

GROUP: Final = "windows"
# Every repair runs over SSH to the VM: none is tried in a pass whose ssh check failed.
SSH: Final = ("ssh",)
SSH_CHECK_TIMEOUT_S: Final = 25.0  # room for the seam's 3 connect attempts
# A VM check after ssh: first the shared ssh outcome (within the ssh check's budget), then
# its own query (vm.PROBE_TIMEOUT_S bounds that).
VM_CHECK_TIMEOUT_S: Final = SSH_CHECK_TIMEOUT_S + 15.0
HTTP_CHECK_TIMEOUT_S: Final = 15.0
PORT_TIMEOUT_S: Final = 3.0
REPAIR_SCRIPT_TIMEOUT_S: Final = 60.0
# How long a repair that started a program waits for its port (the Aloha server loads its
# model first); within the supervisor's remediation timeout (120 s by default).
START_WAIT_S: Final = 30.0
START_POLL_S: Final = 0.25
FIREWALL_STATES: Final = ("enabled", "disabled", "missing")
PROCESS_STATES: Final = ("running", "missing")


def _ok(detail: str, **data: object) -> CheckOutcome:
    return CheckOutcome(Status.OK, detail, data)


def _fail(detail: str, fix: str, **data: object) -> CheckOutcome:
    return CheckOutcome(Status.FAIL, f"{detail}; fix: {fix}", {**data, "fix": fix})


def _skip(detail: str) -> CheckOutcome:
    return CheckOutcome(Status.SKIP, detail)


SSH_FIRST_FIX: Final = "make the ssh check pass first (see its fix): this is read over SSH"
QUERY_FAILED_FIX: Final = (
    "SSH works but this query did not: see the error; a timeout may be a busy VM, "
    "so run doctor again"
)


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


@dataclass
class _VmPass:
    """What the VM checks running at the same time share: the runner and the ssh outcome."""

    loop: asyncio.AbstractEventLoop
    gate: asyncio.Task[tuple[RawRunner, CheckOutcome]]
    stack: contextlib.AsyncExitStack
    members: int = 0

    async def close(self) -> None:
        if not self.gate.done():
            self.gate.cancel()
        await asyncio.wait({self.gate})
        if not self.gate.cancelled():
            self.gate.exception()  # seen by the checks that awaited it; not "never retrieved"
        try:
            await self.stack.aclose()
        except Exception as exc:
            # The pass's results are already known: closing the pool is no finding of theirs.
            _log.warn("close", "closing the VM connection failed", err=repr(exc))


@dataclass
class _VmShare:
    """The pass in progress, if any (mutable, inside the frozen probes)."""

    current: _VmPass | None = None


def _default_runner(section: WindowsSection) -> AbstractAsyncContextManager[RawRunner]:
    from homeops.windows.target import vm_runner

    return vm_runner(section)


@dataclass(frozen=True)
class _Probes:
    """The probes of one settings snapshot; each opens what it needs and closes it, except
    that the VM probes of one pass share one runner and one ssh outcome (:meth:`_vm_pass`)."""

    settings: WindowsSettings
    dctx: DomainContext
    open_runner: RunnerFactory = _default_runner
    share: _VmShare = field(default_factory=_VmShare, compare=False, repr=False)

    @property
    def _where(self) -> str:
        section = self.settings.windows
        return f"{section.ssh_user}@{section.ssh_host}:{section.ssh_port}"

    @contextlib.asynccontextmanager
    async def _vm_pass(self) -> AsyncIterator[_VmPass]:
        """Join the pass in progress, or start one: open the runner and run the ssh probe
        once, in a task of its own (a check that times out must not cancel it for the
        others). The last member to leave closes the runner."""
        loop = asyncio.get_running_loop()
        vm = self.share.current
        if vm is None or vm.loop is not loop:
            stack = contextlib.AsyncExitStack()
            gate = asyncio.create_task(self._open_and_probe(stack))
            vm = self.share.current = _VmPass(loop, gate, stack)
        vm.members += 1
        try:
            yield vm
        finally:
            vm.members -= 1
            if vm.members == 0:
                # Forgotten before the await: a check starting now opens a pass of its own.
                if self.share.current is vm:
                    self.share.current = None
                await vm.close()

    async def _open_and_probe(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[RawRunner, CheckOutcome]:
        runner = await stack.enter_async_context(self.open_runner(self.settings.windows))
        return runner, await self._ssh_probe(runner)

    async def _ssh_probe(self, runner: RawRunner) -> CheckOutcome:
        from homeops.core.errors import HomeopsError
        from homeops.windows.vm import run_script

        where = self._where
        try:
            done = await run_script(runner, "'homeops-ssh-ok'")
        except HomeopsError as exc:
            return _fail(
                exc.message,
                "start the VM and its OpenSSH server (sshd), check the "
                f"{self.settings.windows.ssh_port}->22 forward, "
                "windows.ssh_identity_file and the host key in windows.known_hosts",
            )
        if "homeops-ssh-ok" not in done.stdout_text:
            return _fail(
                f"{where}: PowerShell did not answer as expected",
                "check the VM's OpenSSH DefaultShell and that powershell.exe runs",
            )
        return _ok(f"{where}: OpenSSH and PowerShell answer", host=where)

    def _not_checked(self) -> CheckOutcome:
        section = self.settings.windows
        return CheckOutcome(
            Status.SKIP,
            f"not checked: ssh to {section.ssh_host}:{section.ssh_port} failed; "
            f"fix: {SSH_FIRST_FIX}",
            {"fix": SSH_FIRST_FIX, "needs": "ssh"},
        )

    async def _on_vm(self, action: Callable[[RawRunner], Awaitable[CheckOutcome]]) -> CheckOutcome:
        from homeops.core.errors import HomeopsError

        async with self._vm_pass() as vm:
            try:
                runner, ssh = await asyncio.shield(vm.gate)
            except Exception:
                # The ssh check reports this error; here it only means no SSH.
                return self._not_checked()
            if ssh.status is not Status.OK:
                return self._not_checked()
            try:
                return await action(runner)
            except HomeopsError as exc:
                return _fail(exc.message, QUERY_FAILED_FIX)

    async def ssh(self) -> CheckOutcome:
        async with self._vm_pass() as vm:
            _, outcome = await asyncio.shield(vm.gate)
            return outcome

    async def aloha_server(self) -> CheckOutcome:
        from homeops.core import http
        from homeops.windows import aloha, aloha_flow

        section = self.settings.aloha
        url = aloha.root_url(section.server_url)
        async with http.make_client(timeout=5.0) as client:
            found = await aloha_flow.server_health(client, section)
        if found.ok:
            return _ok(f"{url}: {found.detail}", status=found.status_code)
        # The same verdict as `aloha health` (aloha.parse_server_root); the fix depends on
        # what answered: nothing, something that is not the Aloha server, or a broken one.
        if found.status_code is None:
            fix = (
                "run aloha.server_start_cmd on the VM (supervisor run --once) and allow "
                f"{url_port(url, 7887)[1]} inbound"
            )
            return _fail(found.detail, fix)
        if found.status_code < 500:
            # The Aloha server answers GET / with 200 and its marker, always: a 404 there
            # is some other app (the client, say) on that port.
            fix = (
                "another app answers there without the server's marker: point "
                "aloha.server_url at the Aloha server"
            )
        else:
            fix = "see the server's console on the VM, then restart it (aloha.server_start_cmd)"
        return _fail(f"{url}: {found.detail}", fix, status=found.status_code)

    async def aloha_client(self) -> CheckOutcome:
        from homeops.core import http
        from homeops.windows import aloha, aloha_flow

        section = self.settings.aloha
        url = aloha.root_url(section.client_url)
        async with http.make_client(timeout=5.0) as client:
            found = await aloha_flow.client_health(client, section)
        if not found.reachable:
            return _fail(
                found.detail,
                "run aloha.client_start_cmd on the VM (supervisor run --once) and allow "
                f"{url_port(url, 7888)[1]} inbound",
            )
        # The client has no GET route (CONTRACTS.md §2): any answer means it is up, and the
        # detail says whether it was the expected 404 (aloha.classify_client_root).
        return _ok(f"{url}: {found.detail}", status=found.status_code)

    async def hatchet(self) -> CheckOutcome:
        section = self.settings.hatchet
        if section.token is None:
            # Only the health of a Hatchet engine is checked: jobs always use the embedded store.
            return _skip("not configured (no hatchet.token)")
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
    return check_list(dctx.settings("windows"), dctx)


def check_list(
    settings: WindowsSettings, dctx: DomainContext, *, open_runner: RunnerFactory | None = None
) -> list[Check]:
    """The checks of ``settings``; the VM ones run over ``open_runner`` (default: SSH)."""
    probes = _Probes(settings, dctx, open_runner or _default_runner)
    return [
        Check("ssh", probes.ssh, SSH_CHECK_TIMEOUT_S, GROUP),
        Check("aloha_server", probes.aloha_server, HTTP_CHECK_TIMEOUT_S, GROUP, repair_needs=SSH),
        Check("aloha_client", probes.aloha_client, HTTP_CHECK_TIMEOUT_S, GROUP, repair_needs=SSH),
        Check("hatchet", probes.hatchet, HTTP_CHECK_TIMEOUT_S, GROUP),
        Check("playwright", probes.playwright, HTTP_CHECK_TIMEOUT_S, GROUP, repair_needs=SSH),
        Check("forwarded_ports", probes.forwarded_ports, PORT_TIMEOUT_S + 2, GROUP),
        Check("firewall_rules", probes.firewall, VM_CHECK_TIMEOUT_S, GROUP, repair_needs=SSH),
        Check("aloha_processes", probes.aloha_processes, VM_CHECK_TIMEOUT_S, GROUP),
        Check(
            "playwright_task", probes.playwright_task, VM_CHECK_TIMEOUT_S, GROUP, repair_needs=SSH
        ),
        Check("version", probes.version, 1.0, GROUP),
        Check("config", probes.config, 1.0, GROUP),
    ]


async def start_playwright_task(runner: RawRunner) -> bool:
    """Start the Playwright task unless Windows says it runs; whether it was started.

    :class:`~homeops.core.errors.OperationalError` when it is not registered: only
    ``playwright install`` can fix that, and ``Start-ScheduledTask`` would only say "file
    not found".
    """
    from homeops.core.errors import OperationalError
    from homeops.windows import playwright as pw
    from homeops.windows import powershell as ps
    from homeops.windows.vm import run_script

    done = await run_script(runner, pw.task_state_script(), timeout=REPAIR_SCRIPT_TIMEOUT_S)
    task = pw.parse_task_state(done.stdout_text)
    if not task.exists:
        raise OperationalError(
            f"scheduled task {ps.PLAYWRIGHT_TASK} is not registered: run "
            "`win-automation playwright install`"
        )
    if task.running:
        return False
    await run_script(runner, ps.start_playwright_task_script(), timeout=REPAIR_SCRIPT_TIMEOUT_S)
    return True


def windows_remediations(dctx: DomainContext) -> Mapping[str, Remediation]:
    """Repairs by check name: firewall rules, the Aloha start commands, the Playwright task.

    A repair that starts something (a start command, the task) then waits, bounded, until
    its port answers from here: Windows returns from ``Start-Process`` and
    ``Start-ScheduledTask`` at once, and the supervisor's confirming re-check must not race
    the program's start-up.
    """
    from homeops.windows import powershell as ps

    settings: WindowsSettings = dctx.settings("windows")
    rules = firewall_rules(settings)
    by_port = {port: ps.FirewallRule(name, port) for name, port in rules.items()}
    aloha = settings.aloha
    server = url_port(aloha.server_url, 7887)
    client = url_port(aloha.client_url, 7888)
    playwright = (settings.playwright.host, settings.playwright.port)

    def repair(
        *scripts: str | None, task: bool = False, wait: tuple[str, int] | None = None
    ) -> Remediation:
        async def run() -> None:
            from homeops.windows.target import vm_runner
            from homeops.windows.vm import run_script

            started = False
            async with vm_runner(settings.windows) as runner:
                for script in scripts:
                    if script:
                        await run_script(runner, script, timeout=REPAIR_SCRIPT_TIMEOUT_S)
                if task:
                    started = await start_playwright_task(runner)
            if wait is not None and (started or not task):
                host, port = wait
                if not await wait_listening(host, port, wait_s=START_WAIT_S, poll_s=START_POLL_S):
                    _log.info("remediate", "started, but its port does not answer yet", port=port)

        return run

    def rule(port: int) -> str:
        return ps.firewall_rule_script(by_port[port])

    return {
        "aloha_server": repair(
            rule(server[1]),
            aloha.server_start_cmd,
            wait=server if aloha.server_start_cmd else None,
        ),
        "aloha_client": repair(
            rule(client[1]),
            aloha.client_start_cmd,
            wait=client if aloha.client_start_cmd else None,
        ),
        "playwright": repair(rule(playwright[1]), task=True, wait=playwright),
        "firewall_rules": repair(*(ps.firewall_rule_script(r) for r in by_port.values())),
        "playwright_task": repair(task=True, wait=playwright),
    }
