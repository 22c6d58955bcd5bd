r"""The VM checks of one ``win-automation doctor`` pass over the VM emulator's real sshd.

With the VM reachable, ssh, firewall_rules, aloha_processes and playwright_task read the VM
over one SSH connection (one login in sshd's log, one ``SSH_CONNECTION`` in the emulator's
call log). With ``windows.ssh_port`` on a closed loopback port, the ssh check fails once
with its fix after one connect sequence (the seam's retries), and the other VM checks say
"not checked" instead of each connecting again.
"""

from __future__ import annotations

import json
from pathlib import Path

from homeops.windows.powershell import PLAYWRIGHT_TASK
from tests.fixtures.common import free_port
from tests.fixtures.winvm import WinVm
from tests.windows.test_exec import run_win

VM_CHECKS = ["ssh", "firewall_rules", "aloha_processes", "playwright_task"]
SERVER_EXE = r"C:\Aloha\aloha-server.exe"
CLIENT_EXE = r"C:\Aloha\aloha-client.exe"


def _config(tmp_path: Path, winvm: WinVm, **windows: object) -> tuple[Path, dict[str, int]]:
    """The config file, and the firewall rules it makes the VM need (name -> port)."""
    # Closed ports: the Aloha and Playwright HTTP checks fail fast; they are not the subject.
    server, client, playwright = free_port(), free_port(), free_port()
    settings = winvm.windows_settings(
        aloha={
            "server_url": f"http://127.0.0.1:{server}/",
            "client_url": f"http://127.0.0.1:{client}",
            "server_start_cmd": f"Start-Process -FilePath '{SERVER_EXE}'",
            "client_start_cmd": f"Start-Process -FilePath '{CLIENT_EXE}'",
        },
        playwright={"host": "127.0.0.1", "port": playwright},
        **windows,
    )
    path = tmp_path / "win.json"
    path.write_text(json.dumps(settings))
    rules = {f"Aloha-{server}": server, f"Aloha-{client}": client}
    return path, {**rules, f"Playwright-{playwright}": playwright}


def _vm_checks(out: str) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(out)["checks"] if c["name"] in VM_CHECKS}


def test_doctor_reads_the_vm_over_one_ssh_connection(
    capsys, tmp_path, state_dir, winvm: WinVm
) -> None:
    config, rules = _config(tmp_path, winvm)
    for name, port in rules.items():
        winvm.set_firewall_rule(name, port)
    winvm.add_process("aloha-server")
    winvm.add_process("aloha-client")
    logins = winvm.sshd.accepted_logins()

    code, out, err = run_win(capsys, "--config", str(config), "doctor", "--json")

    assert code == 3, err  # the Aloha apps and Playwright are not there
    by = _vm_checks(out)
    assert {n: c["status"] for n, c in by.items()} == {
        "ssh": "ok",
        "firewall_rules": "ok",
        "aloha_processes": "ok",
        "playwright_task": "fail",
    }
    assert "not registered" in str(by["playwright_task"]["detail"])
    # Four queries, one login, one TCP connection (the emulator records SSH_CONNECTION,
    # whose client port differs per connection).
    calls = winvm.calls()
    scripts = [c["script"] for c in calls]
    assert scripts[0] == "'homeops-ssh-ok'"
    assert len(scripts) == 4 and any(PLAYWRIGHT_TASK in s for s in scripts), scripts
    assert len({c["conn"] for c in calls}) == 1, calls
    assert winvm.sshd.accepted_logins() - logins == 1
    assert err.count("op=connect msg=connected") == 1, err


def test_doctor_on_a_closed_ssh_port_connects_once_and_says_what_was_not_checked(
    capsys, tmp_path, state_dir, winvm: WinVm
) -> None:
    closed = free_port()
    config, _ = _config(tmp_path, winvm, ssh_port=closed)

    code, out, err = run_win(capsys, "--config", str(config), "doctor", "--json")

    assert code == 3, err
    by = _vm_checks(out)
    ssh = by["ssh"]
    assert ssh["status"] == "fail"
    assert f"fix: {ssh['data']['fix']}" in str(ssh["detail"])  # type: ignore[index]
    assert "OpenSSH server" in str(ssh["data"]["fix"])  # type: ignore[index]
    for name in VM_CHECKS[1:]:
        check = by[name]
        assert check["status"] == "skip", check
        assert str(check["detail"]).startswith(
            f"not checked: ssh to {winvm.host}:{closed} failed; fix: "
        ), check
        assert "ssh check" in str(check["data"]["fix"])  # type: ignore[index]
    # One connect sequence (its retries inside it), one failure line: not one per check.
    failed = [line for line in err.splitlines() if 'msg="connection failed"' in line]
    assert len(failed) == 1, err
    assert "attempts=3" in failed[0]
    assert winvm.calls() == []
