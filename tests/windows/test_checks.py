"""windows doctor checks: order, fixes, the Aloha probes against real loopback HTTP, the
failpoint, skipping in the umbrella doctor when nothing configures the domain, and the VM
checks of one pass sharing one runner and one ssh outcome (a fake runner at the seam; the
same over the VM emulator's sshd is tests/windows/test_checks_vm.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from homeops.core.health import Check, Status, exit_code_for, run_checks
from homeops.windows.checks import (
    QUERY_FAILED_FIX,
    SSH_FIRST_FIX,
    check_list,
    firewall_rules,
    url_port,
)
from homeops.windows.settings import WindowsSettings
from tests.fixtures.common import free_port
from tests.windows.test_exec import run_win

SEED_ORDER = ["ssh", "aloha_server", "aloha_client", "hatchet", "playwright"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://127.0.0.1:7887/", ("127.0.0.1", 7887), id="port"),
        pytest.param("http://vm/", ("vm", 80), id="scheme-default"),
        pytest.param("https://vm", ("vm", 443), id="https"),
        pytest.param("http://vm:99999/", ("vm", 7887), id="bad-port-uses-default"),
    ],
)
def test_url_port(url, expected):
    assert url_port(url, 7887) == expected


def test_firewall_rules_follow_the_configured_ports():
    settings = WindowsSettings.model_validate(
        {"aloha": {"server_url": "http://h:7000/", "client_url": "http://h:7001"}}
    )
    assert firewall_rules(settings) == {
        "Aloha-7000": 7000,
        "Aloha-7001": 7001,
        "Playwright-9323": 9323,
    }


class _Aloha(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.server.server_port == self.server.client_port:  # type: ignore[attr-defined]
            self.send_response(404)  # the real client has no GET route
            self.end_headers()
            return
        body = b"Aloha API server is running"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def aloha_ports() -> Iterator[tuple[int, int]]:
    servers = []
    for _ in range(2):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Aloha)
        servers.append(server)
    client_port = servers[1].server_port
    for server in servers:
        server.client_port = client_port  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers[0].server_port, client_port
    for server in servers:
        server.shutdown()
        server.server_close()


def _config(tmp_path: Path, server: int, client: int) -> Path:
    path = tmp_path / "win.json"
    path.write_text(
        json.dumps(
            {
                "windows": {"ssh_host": "127.0.0.1", "ssh_port": free_port()},
                "aloha": {
                    "server_url": f"http://127.0.0.1:{server}/",
                    "client_url": f"http://127.0.0.1:{client}",
                },
                "playwright": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "ws_path": "s3cret-path-x",
                },
            }
        )
    )
    return path


def test_doctor_reports_the_seed_checks_in_order_each_failure_with_a_fix(
    capsys, tmp_path, state_dir, aloha_ports
):
    config = _config(tmp_path, *aloha_ports)
    code, out, err = run_win(capsys, "--config", str(config), "doctor", "--json")
    assert code == 3, err  # the VM's sshd is not there: a dependency is unavailable
    checks = [c for c in json.loads(out)["checks"] if c["group"] == "windows"]
    names = [c["name"] for c in checks]
    assert names[:5] == SEED_ORDER
    by_name = {c["name"]: c for c in checks}
    assert by_name["aloha_server"]["status"] == "ok"
    assert by_name["aloha_client"]["status"] == "ok"
    assert "404" in by_name["aloha_client"]["detail"]
    assert by_name["hatchet"]["status"] == "skip"
    for check in checks:
        if check["status"] == "fail":
            assert check["data"]["fix"], check
            assert "fix: " in check["detail"]
    assert by_name["ssh"]["status"] == "fail"
    assert "s3cret-path-x" not in out + err


def test_aloha_server_without_its_marker_fails(capsys, tmp_path, state_dir, aloha_ports):
    # The client's port answers 404, not the server's marker: an app that answers is not Aloha.
    config = _config(tmp_path, aloha_ports[1], aloha_ports[1])
    code, out, _ = run_win(capsys, "--config", str(config), "doctor", "--json")
    assert code == 3
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["aloha_server"]["status"] == "fail"
    assert "without the server's marker" in checks["aloha_server"]["detail"]


def test_failpoint_forces_that_check_to_fail(capsys, tmp_path, state_dir, aloha_ports, monkeypatch):
    config = _config(tmp_path, *aloha_ports)
    monkeypatch.setenv("WIN_AUTOMATION_SUPERVISOR_FAILPOINT", "aloha_client")
    code, out, err = run_win(
        capsys, "--config", str(config), "supervisor", "run", "--once", "--json"
    )
    assert code == 3, err
    checks = {c["name"]: c for c in json.loads(out.splitlines()[0])["checks"]}
    assert checks["aloha_client"]["detail"].startswith("failpoint")
    assert checks["aloha_server"]["status"] == "ok"


def test_umbrella_doctor_skips_an_unconfigured_domain(capsys, state_dir, monkeypatch):
    from tests.core.test_cli import run_main

    for name in list(__import__("os").environ):
        if name.startswith("WIN_AUTOMATION_"):
            monkeypatch.delenv(name)
    code, out, err = run_main(capsys, "doctor", "--json", "--only", "windows")
    assert code == 0, err
    statuses = {c["status"] for c in json.loads(out)["checks"]}
    assert statuses == {"skip"}


# -- the VM checks of one pass share one runner and one ssh outcome (fakes at the seam) -------

VM_CHECKS = ["ssh", "firewall_rules", "aloha_processes", "playwright_task"]
SSH_ECHO = "'homeops-ssh-ok'"
SERVER_START = r"Start-Process -FilePath 'C:\Aloha\aloha-server.exe'"
CLIENT_START = r"Start-Process -FilePath 'C:\Aloha\aloha-client.exe'"


def _vm_settings() -> WindowsSettings:
    return WindowsSettings.model_validate(
        {
            "windows": {"ssh_host": "vm.test", "ssh_port": 22555, "ssh_user": "admin"},
            "aloha": {"server_start_cmd": SERVER_START, "client_start_cmd": CLIENT_START},
        }
    )


class FakeVm:
    """The checks' runner factory and the runner it opens: answers the checks' scripts (all
    healthy unless told otherwise), records them, and counts opens and closes. ``down`` is
    an unreachable VM: every command raises what the SSH seam raises after its retries."""

    def __init__(self, settings: WindowsSettings, *, down: bool = False) -> None:
        from homeops.windows import playwright as pw
        from homeops.windows import powershell as ps

        self.down = down
        self.opened = 0
        self.closed = 0
        self.scripts: list[str] = []
        self.cancelled: list[str] = []
        self.delay: dict[str, float] = {}  # script -> seconds before it answers
        rules = tuple(firewall_rules(settings))
        procs = ("aloha-server", "aloha-client")
        self.firewall = ps.firewall_state_script(rules)
        self.processes = ps.process_state_script(procs)
        self.task = pw.task_state_script()
        self.answers: dict[str, str | BaseException] = {
            SSH_ECHO: "homeops-ssh-ok\r\n",
            self.firewall: "".join(f"{n}=enabled\r\n" for n in rules),
            self.processes: "".join(f"{n}=running\r\n" for n in procs),
            self.task: "task=Running\r\naction=node.exe x\r\ntaskquery=done\r\n",
        }

    @contextlib.asynccontextmanager
    async def open(self, section: object) -> AsyncIterator[FakeVm]:
        self.opened += 1
        try:
            yield self
        finally:
            self.closed += 1

    async def run(self, argv, *, timeout, stdin=None, check=False):  # pragma: no cover
        raise AssertionError(f"the checks send PowerShell only, got argv {argv}")

    async def run_raw(self, command, *, timeout, stdin=None, check=False):
        from homeops.core.errors import SshUnavailable
        from homeops.core.runner import CommandResult
        from homeops.core.ssh.shell import decode_powershell

        script = decode_powershell(command)
        self.scripts.append(script)
        try:
            # Every answer takes a loop turn, so checks running together really overlap.
            await asyncio.sleep(self.delay.get(script, 0))
        except asyncio.CancelledError:
            self.cancelled.append(script)
            raise
        if self.down:
            raise SshUnavailable("ssh admin@vm.test:22555: connection refused (3 attempts)")
        answer = self.answers[script]
        if isinstance(answer, BaseException):
            raise answer
        done = CommandResult((command,), 0, answer.encode(), b"", 0.0, "vm.test")
        return done.check() if check else done


def _vm_checks(vm: FakeVm, settings: WindowsSettings, **timeouts: float) -> list[Check]:
    from homeops.core.registry import DomainContext

    dctx = DomainContext({}, None, None)  # type: ignore[arg-type]  # the VM probes use none
    checks = [c for c in check_list(settings, dctx, open_runner=vm.open) if c.name in VM_CHECKS]
    assert [c.name for c in checks] == VM_CHECKS
    return [dataclasses.replace(c, timeout=timeouts.get(c.name, c.timeout)) for c in checks]


def _status(results) -> dict[str, str]:
    return {r.name: str(r.status) for r in results}


async def test_vm_checks_of_a_pass_share_one_runner_ssh_probe_first():
    settings = _vm_settings()
    vm = FakeVm(settings)
    results = await run_checks(_vm_checks(vm, settings))
    assert _status(results) == dict.fromkeys(VM_CHECKS, "ok")
    assert (vm.opened, vm.closed) == (1, 1)
    # The ssh probe answered before any other query was sent, each query once.
    assert vm.scripts[0] == SSH_ECHO
    assert sorted(vm.scripts[1:]) == sorted([vm.firewall, vm.processes, vm.task])


async def test_ssh_down_the_other_vm_checks_are_not_checked_and_do_not_connect():
    settings = _vm_settings()
    vm = FakeVm(settings, down=True)
    results = await run_checks(_vm_checks(vm, settings))
    by = {r.name: r for r in results}
    assert by["ssh"].status is Status.FAIL
    assert "connection refused" in by["ssh"].detail
    assert "start the VM and its OpenSSH server" in str(by["ssh"].data["fix"])
    for name in VM_CHECKS[1:]:
        assert by[name].status is Status.SKIP, by[name]
        assert by[name].detail.startswith("not checked: ssh to vm.test:22555 failed; fix: ")
        assert by[name].data["fix"] == SSH_FIRST_FIX
        assert "ssh check" in SSH_FIRST_FIX
    # One connect (the ssh probe's command), not one per check.
    assert vm.scripts == [SSH_ECHO]
    assert (vm.opened, vm.closed) == (1, 1)
    assert exit_code_for(results) == 3


async def test_powershell_not_answering_stops_the_other_vm_checks_too():
    settings = _vm_settings()
    vm = FakeVm(settings)
    vm.answers[SSH_ECHO] = "something else\r\n"
    results = await run_checks(_vm_checks(vm, settings))
    by = {r.name: r for r in results}
    assert by["ssh"].status is Status.FAIL
    assert "PowerShell did not answer" in by["ssh"].detail
    assert [str(by[n].status) for n in VM_CHECKS[1:]] == ["skip"] * 3
    assert vm.scripts == [SSH_ECHO]


async def test_a_query_failing_after_ssh_worked_fails_with_its_own_fix():
    from homeops.core.errors import HomeopsTimeout

    settings = _vm_settings()
    vm = FakeVm(settings)
    vm.answers[vm.firewall] = HomeopsTimeout("ssh admin@vm.test:22555: timed out after 15s")
    results = await run_checks(_vm_checks(vm, settings))
    by = {r.name: r for r in results}
    assert _status(results) == {
        "ssh": "ok",
        "firewall_rules": "fail",
        "aloha_processes": "ok",
        "playwright_task": "ok",
    }
    assert "timed out" in by["firewall_rules"].detail
    assert by["firewall_rules"].data["fix"] == QUERY_FAILED_FIX


async def test_each_pass_opens_its_own_runner_and_closes_it():
    settings = _vm_settings()
    vm = FakeVm(settings)
    checks = _vm_checks(vm, settings)
    for _ in range(2):
        assert _status(await run_checks(checks)) == dict.fromkeys(VM_CHECKS, "ok")
    assert (vm.opened, vm.closed) == (2, 2)
    assert vm.scripts.count(SSH_ECHO) == 2


@pytest.mark.parametrize("down", [False, True], ids=["vm-up", "vm-down"])
async def test_a_check_run_alone_probes_ssh_itself(down):
    # The supervisor's confirming re-check runs one check by itself.
    settings = _vm_settings()
    vm = FakeVm(settings, down=down)
    firewall = next(c for c in _vm_checks(vm, settings) if c.name == "firewall_rules")
    (result,) = await run_checks([firewall])
    assert str(result.status) == ("skip" if down else "ok")
    assert vm.scripts == ([SSH_ECHO] if down else [SSH_ECHO, vm.firewall])
    assert (vm.opened, vm.closed) == (1, 1)


async def test_failpoint_on_ssh_still_lets_the_others_read_the_vm():
    settings = _vm_settings()
    vm = FakeVm(settings)
    results = await run_checks(_vm_checks(vm, settings), failpoint="ssh")
    assert _status(results) == {**dict.fromkeys(VM_CHECKS, "ok"), "ssh": "fail"}
    assert vm.scripts.count(SSH_ECHO) == 1
    assert vm.opened == 1


async def test_the_ssh_check_timing_out_does_not_cancel_the_probe_the_others_wait_for():
    settings = _vm_settings()
    vm = FakeVm(settings)
    # The ssh check's own timeout fires first (loop timers fire in deadline order); the
    # probe it started goes on for the others.
    vm.delay[SSH_ECHO] = 0.3
    results = await run_checks(_vm_checks(vm, settings, ssh=0.05))
    assert _status(results) == {**dict.fromkeys(VM_CHECKS, "ok"), "ssh": "fail"}
    assert results[0].detail == "timed out after 0.05s"
    assert vm.cancelled == []
    assert (vm.opened, vm.closed) == (1, 1)


async def test_every_vm_check_timing_out_cancels_the_probe_and_closes_the_runner():
    settings = _vm_settings()
    vm = FakeVm(settings)
    vm.delay[SSH_ECHO] = 3600  # a VM that never answers
    results = await run_checks(_vm_checks(vm, settings, **dict.fromkeys(VM_CHECKS, 0.05)))
    assert _status(results) == dict.fromkeys(VM_CHECKS, "fail")
    assert {r.detail for r in results} == {"timed out after 0.05s"}
    assert vm.cancelled == [SSH_ECHO]
    assert (vm.opened, vm.closed) == (1, 1)
