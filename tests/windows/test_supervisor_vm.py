r"""``win-automation supervisor run`` and ``doctor`` end to end against the Windows VM emulator.

The VM is tests/fakes/winvm.py behind a real sshd; the Aloha apps are the fake of
tests/fakes/aloha.py run as programs the VM starts (``C:\Aloha\aloha-server.exe`` is mapped
to ``python3 -m tests.fakes.aloha`` on a free loopback port), so the supervisor's repair is
the configured start command over SSH and its effect is a real HTTP server. Hatchet is a
tiny loopback health endpoint. The full repair test also starts the real Playwright server
through the scheduled task ``playwright install`` registered; it skips without node or
Chromium. ``supervisor run`` without ``--once`` runs as its own process until SIGTERM.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homeops.windows.aloha import SERVER_MARKER
from homeops.windows.powershell import PLAYWRIGHT_TASK
from tests.fixtures.aloha import aloha_process, wait_answering
from tests.fixtures.common import free_port
from tests.fixtures.playwright_server import missing_prerequisite
from tests.fixtures.winvm import WinVm, python_argv, python_env
from tests.windows.test_exec import run_win

SERVER_EXE = r"C:\Aloha\aloha-server.exe"
CLIENT_EXE = r"C:\Aloha\aloha-client.exe"
HATCHET_TOKEN = "hatchet-token-do-not-log-0123456789"
WS_PATH = "ws-path-do-not-log-0123456789"
# Every item doctor reports for the windows domain: the seed's five checks, then the drift
# checklist (seed 000), in this order.
ALL_CHECKS = [
    "ssh",
    "aloha_server",
    "aloha_client",
    "hatchet",
    "playwright",
    "forwarded_ports",
    "firewall_rules",
    "aloha_processes",
    "playwright_task",
    "version",
    "config",
]
WIN_AUTOMATION = Path(sys.executable).with_name("win-automation")
# Bounds for the long-running supervisor process (it passes every 100 ms).
LONG_RUN_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0


class _Hatchet(http.server.BaseHTTPRequestHandler):
    """hatchet-lite's health routes, all healthy."""

    def do_GET(self) -> None:
        body = {"/live": b"ok", "/ready": b"ok", "/version": b'{"version": "v0.0-test"}'}.get(
            self.path
        )
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def hatchet_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hatchet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@dataclass
class Setup:
    """One VM configuration: where everything listens, and the config file."""

    config: Path
    server_port: int
    client_port: int
    playwright_port: int

    @property
    def rules(self) -> dict[str, int]:
        return {
            f"Aloha-{self.server_port}": self.server_port,
            f"Aloha-{self.client_port}": self.client_port,
            f"Playwright-{self.playwright_port}": self.playwright_port,
        }


def _setup(
    tmp_path: Path,
    winvm: WinVm,
    hatchet_port: int,
    monkeypatch: pytest.MonkeyPatch,
    *,
    start_cmds: bool = True,
) -> Setup:
    server_port, client_port, playwright_port = free_port(), free_port(), free_port()
    aloha: dict[str, object] = {
        "server_url": f"http://127.0.0.1:{server_port}/",
        "client_url": f"http://127.0.0.1:{client_port}",
    }
    if start_cmds:
        for exe, role, port in (
            (SERVER_EXE, "server", server_port),
            (CLIENT_EXE, "client", client_port),
        ):
            argv = python_argv("-m", "tests.fakes.aloha", "--role", role, "--port", str(port))
            winvm.map_program(exe, argv, env=python_env())
        aloha["server_start_cmd"] = f"Start-Process -FilePath '{SERVER_EXE}'"
        aloha["client_start_cmd"] = f"Start-Process -FilePath '{CLIENT_EXE}'"
    hatchet = f"http://127.0.0.1:{hatchet_port}"
    settings = winvm.windows_settings(
        aloha=aloha,
        playwright={"host": "127.0.0.1", "port": playwright_port},
        hatchet={
            "http_url": hatchet,
            "health_url": hatchet,
            "grpc_address": f"127.0.0.1:{hatchet_port}",
        },
    )
    config = tmp_path / "win.json"
    config.write_text(json.dumps(settings))
    # The two secrets, from the environment as the NixOS unit passes them.
    monkeypatch.setenv("WIN_AUTOMATION_HATCHET_TOKEN", HATCHET_TOKEN)
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", WS_PATH)
    return Setup(config, server_port, client_port, playwright_port)


def _by_name(checks: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(c["name"]): c for c in checks}


def _windows(checks: list[dict[str, object]]) -> list[dict[str, object]]:
    return [c for c in checks if c["group"] == "windows"]


def _assert_failures_carry_a_fix(checks: list[dict[str, object]]) -> None:
    for check in checks:
        if check["status"] == "fail":
            data = check["data"]
            assert isinstance(data, dict) and data.get("fix"), check
            assert f"fix: {data['fix']}" in str(check["detail"]), check


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert HATCHET_TOKEN not in text
        assert WS_PATH not in text


def _supervise_once(capsys, setup: Setup, *extra: str) -> tuple[int, dict[str, object], str]:
    code, out, err = run_win(
        capsys, *extra, "--config", str(setup.config), "supervisor", "run", "--once", "--json"
    )
    lines = out.splitlines()
    assert len(lines) == 1, out
    _assert_no_secret(out, err)
    return code, json.loads(lines[0]), err


def _rule_scripts(winvm: WinVm, name: str) -> int:
    return sum(f"New-NetFirewallRule -DisplayName '{name}'" in s for s in winvm.scripts())


# -- doctor ------------------------------------------------------------------------------------


def test_doctor_reports_every_drift_item_of_a_bare_vm_each_failure_with_a_fix(
    capsys, tmp_path, state_dir, winvm: WinVm, hatchet_port, monkeypatch
) -> None:
    setup = _setup(tmp_path, winvm, hatchet_port, monkeypatch)
    winvm.set_firewall_rule(f"Aloha-{setup.client_port}", setup.client_port, enabled=False)
    code, out, err = run_win(capsys, "--config", str(setup.config), "doctor", "--json")
    assert code == 3, err  # a dependency is unavailable
    report = json.loads(out)
    assert report["exit_code"] == 3 and report["ok"] is False
    checks = _windows(report["checks"])
    assert [c["name"] for c in checks] == ALL_CHECKS
    _assert_failures_carry_a_fix(checks)
    by = _by_name(checks)
    status = {name: c["status"] for name, c in by.items()}
    assert status == {
        "ssh": "ok",
        "aloha_server": "fail",
        "aloha_client": "fail",
        "hatchet": "ok",
        "playwright": "fail",
        "forwarded_ports": "fail",
        "firewall_rules": "fail",
        "aloha_processes": "fail",
        "playwright_task": "fail",
        "version": "ok",
        "config": "ok",
    }
    assert by["firewall_rules"]["data"] == {
        f"Aloha-{setup.server_port}": "missing",
        f"Aloha-{setup.client_port}": "disabled",
        f"Playwright-{setup.playwright_port}": "missing",
        "fix": by["firewall_rules"]["data"]["fix"],  # type: ignore[index]
    }
    assert by["aloha_processes"]["data"] == {
        "aloha-server": "missing",
        "aloha-client": "missing",
        "fix": by["aloha_processes"]["data"]["fix"],  # type: ignore[index]
    }
    assert "not registered" in str(by["playwright_task"]["detail"])
    assert "playwright install" in str(by["playwright_task"]["data"]["fix"])  # type: ignore[index]
    closed = by["forwarded_ports"]["data"]["closed"]  # type: ignore[index]
    assert sorted(closed) == ["aloha_client", "aloha_server", "playwright"]
    assert by["hatchet"]["data"]["server_version"] == "v0.0-test"  # type: ignore[index]
    assert str(setup.config) in str(by["config"]["detail"])
    # Doctor only looks: nothing was started, no rule changed.
    assert winvm.started() == []
    assert f"Aloha-{setup.server_port}" not in winvm.firewall_rules()
    _assert_no_secret(out, err)


# -- one pass repairs, the next one finds nothing to do ----------------------------------------


def test_once_repairs_aloha_firewall_and_the_playwright_task_then_all_is_well(
    capsys, tmp_path, state_dir, winvm: WinVm, hatchet_port, monkeypatch
) -> None:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    setup = _setup(tmp_path, winvm, hatchet_port, monkeypatch)
    # Registered but not started: the task is there, its server is not.
    code, _, err = run_win(
        capsys, "--config", str(setup.config), "playwright", "install", "--no-start"
    )
    assert code == 0, err
    assert winvm.tasks()[PLAYWRIGHT_TASK]["runs"] == 0
    winvm.set_firewall_rule(f"Aloha-{setup.client_port}", setup.client_port, enabled=False)

    code, report, err = _supervise_once(capsys, setup, "--debug")
    # forwarded_ports and aloha_processes have no repair of their own and were read before
    # the repairs ran: this pass stays "not ok", the next one shows whether the repairs hold.
    assert code == 3, err
    assert sorted(report["remediated"]) == sorted(  # type: ignore[arg-type]
        ["aloha_server", "aloha_client", "playwright", "firewall_rules", "playwright_task"]
    )
    assert report["remediation_failed"] == []
    by = _by_name(report["checks"])  # type: ignore[arg-type]
    for name in ("aloha_server", "aloha_client", "playwright", "firewall_rules"):
        assert by[name]["status"] == "ok", by[name]
    assert "remediation ran" in err

    # The start commands ran over SSH once each, and the server answers real HTTP.
    scripts = winvm.scripts()
    assert scripts.count(f"Start-Process -FilePath '{SERVER_EXE}'") == 1
    assert scripts.count(f"Start-Process -FilePath '{CLIENT_EXE}'") == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{setup.server_port}/", timeout=5) as answer:
        assert SERVER_MARKER in answer.read().decode()
    wait_answering(f"http://127.0.0.1:{setup.client_port}/")
    # Every rule exists and is enabled; the task was started once (not once per repair).
    rules = winvm.firewall_rules()
    for name, port in setup.rules.items():
        assert rules[name]["port"] == port and rules[name]["enabled"], rules
    task = winvm.tasks()[PLAYWRIGHT_TASK]
    assert task["runs"] == 1
    assert scripts.count(f"Start-ScheduledTask -TaskName '{PLAYWRIGHT_TASK}'") == 1

    code, again, err = _supervise_once(capsys, setup, "--debug")
    assert code == 0, err
    assert again["ok"] is True and again["remediated"] == []
    assert [c["status"] for c in _windows(again["checks"])] == ["ok"] * len(ALL_CHECKS)  # type: ignore[arg-type]
    assert winvm.scripts()[len(scripts) :].count(f"Start-Process -FilePath '{SERVER_EXE}'") == 0

    code, out, err = run_win(capsys, "--debug", "--config", str(setup.config), "doctor", "--json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True
    _assert_no_secret(out, err)


def test_a_stopped_playwright_task_is_started_again(
    capsys, tmp_path, state_dir, winvm: WinVm, hatchet_port, monkeypatch
) -> None:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    setup = _setup(tmp_path, winvm, hatchet_port, monkeypatch, start_cmds=False)
    for name, port in setup.rules.items():
        winvm.set_firewall_rule(name, port)
    code, _, err = run_win(capsys, "--config", str(setup.config), "playwright", "install")
    assert code == 0, err
    assert winvm.kill_started("node")  # the server dies; Windows shows the task Ready
    with aloha_process("server", setup.server_port), aloha_process("client", setup.client_port):
        code, report, err = _supervise_once(capsys, setup)
    # Only the forwarded ports were read before the repair, with 9323's server down.
    failing = [c["name"] for c in report["checks"] if c["status"] == "fail"]  # type: ignore[attr-defined]
    assert (code, failing) == (3, ["forwarded_ports"]), err
    assert "playwright_task" in report["remediated"]  # type: ignore[operator]
    by = _by_name(report["checks"])  # type: ignore[arg-type]
    assert by["playwright"]["status"] == "ok" and by["playwright_task"]["status"] == "ok"
    assert winvm.tasks()[PLAYWRIGHT_TASK]["runs"] == 2
    assert winvm.started_pids("node")


# -- the failpoint -----------------------------------------------------------------------------


def test_failpoint_fails_that_check_without_probing_and_its_repair_cannot_confirm(
    capsys, tmp_path, state_dir, winvm: WinVm, hatchet_port, monkeypatch
) -> None:
    setup = _setup(tmp_path, winvm, hatchet_port, monkeypatch, start_cmds=False)
    for name, port in setup.rules.items():
        winvm.set_firewall_rule(name, port)
    monkeypatch.setenv("WIN_AUTOMATION_SUPERVISOR_FAILPOINT", "firewall_rules")
    with aloha_process("server", setup.server_port), aloha_process("client", setup.client_port):
        code, report, err = _supervise_once(capsys, setup)
    assert code == 3, err
    by = _by_name(report["checks"])  # type: ignore[arg-type]
    assert str(by["firewall_rules"]["detail"]).startswith("failpoint")
    assert by["ssh"]["status"] == "ok"
    assert "firewall_rules" in report["remediation_failed"]  # type: ignore[operator]
    # The drift query never ran, the repair did (every rule, though all were there).
    scripts = winvm.scripts()
    assert not any("Get-NetFirewallRule -DisplayName $n" in s for s in scripts)
    for name in setup.rules:
        assert _rule_scripts(winvm, name) >= 1
    assert all(rule["enabled"] for rule in winvm.firewall_rules().values())


# -- the long run: breaker, one line per change, SIGTERM ----------------------------------------


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_breaker_opens_after_three_failed_passes_logged_once_and_sigterm_stops_it(
    tmp_path, state_dir, winvm: WinVm, hatchet_port, monkeypatch
) -> None:
    setup = _setup(tmp_path, winvm, hatchet_port, monkeypatch, start_cmds=False)
    for name, port in setup.rules.items():
        winvm.set_firewall_rule(name, port)
    monkeypatch.setenv("WIN_AUTOMATION_SUPERVISOR_FAILPOINT", "aloha_server")
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with (
        aloha_process("server", setup.server_port),
        aloha_process("client", setup.client_port),
        out_path.open("wb") as out,
        err_path.open("wb") as err,
    ):
        # Everything else answers the same way every pass (Playwright is not installed):
        # what changes is only the breaker.
        argv = [str(WIN_AUTOMATION), "--debug", "--config", str(setup.config)]
        proc = subprocess.Popen(
            [*argv, "supervisor", "run", "--interval", "100ms"],
            stdout=out,
            stderr=err,
            env=dict(os.environ),
        )
        try:
            deadline = time.monotonic() + LONG_RUN_DEADLINE_S
            while _read(err_path).count('msg="supervisor pass done"') < 7:
                assert proc.poll() is None, _read(err_path)[-3000:]
                assert time.monotonic() < deadline, "the supervisor made no 7 passes"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(STOP_DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_DEADLINE_S)
    log, printed = _read(err_path), _read(out_path)
    assert code == 0, log[-3000:]
    passes = [line for line in log.splitlines() if 'msg="supervisor pass done"' in line]
    assert len(passes) >= 7
    assert log.count('msg="circuit breaker opened"') == 1
    # At info level and up, one pass line per change: the first pass, and the breaker
    # opening; every other tick is debug only. Stdout reports the same two passes.
    changes = [line for line in passes if "level=debug" not in line]
    assert len(changes) == 2, changes
    assert "breaker=closed" in changes[0] and "breaker=open" in changes[1]
    summaries = [line for line in printed.splitlines() if line.startswith("breaker=")]
    assert [s.split()[0] for s in summaries] == ["breaker=closed", "breaker=open"]
    # The third failed pass still repaired (and failed to), then opened the breaker; the
    # repairs paused from there on.
    assert "remediation_failed=aloha_server" in summaries[1]
    assert _rule_scripts(winvm, f"Aloha-{setup.server_port}") == 3
    assert 'msg="supervisor stopped"' in log
    _assert_no_secret(log, printed)
