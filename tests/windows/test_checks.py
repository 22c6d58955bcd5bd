"""windows doctor checks: order, fixes, the Aloha probes against real loopback HTTP, the
failpoint, and skipping in the umbrella doctor when nothing configures the domain."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeops.windows.checks import firewall_rules, url_port
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
