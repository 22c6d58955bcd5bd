r"""``win-automation playwright install`` end to end against the Windows VM emulator.

Everything between the CLI and "Windows" is real: the command runs in-process, its scripts
go over asyncssh to the emulator's sshd (tests/fakes/winvm.py, with the Playwright handlers
of tests/fakes/winvm_playwright.py), the files over its SFTP onto the emulated drive, and the
task the uploaded install.ps1 registers starts the uploaded launch-server.js for real, which
``playwright health`` then connects to. The prerequisite failures need neither node nor
Chromium; the tests that start the server skip without them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from homeops.windows import playwright as pw
from homeops.windows.playwright_flow import local_ws_path_file
from homeops.windows.powershell import PLAYWRIGHT_TASK
from tests.fakes import winvm_playwright
from tests.fixtures.common import free_port
from tests.fixtures.playwright_server import missing_prerequisite
from tests.fixtures.winvm import WinVm
from tests.windows.test_exec import run_win


def _config(tmp_path: Path, winvm: WinVm, port: int) -> Path:
    path = tmp_path / "win.json"
    settings = winvm.windows_settings(playwright={"host": "127.0.0.1", "port": port})
    path.write_text(json.dumps(settings))
    return path


def _vm_file(winvm: WinVm, windows_path: str) -> Path:
    return winvm.windows_path_to_local(windows_path)


def _everything_logged(winvm: WinVm) -> str:
    """What the VM side recorded: every call (command line, script, output heads) and the
    output of every program it started."""
    logs = [p.read_text(errors="replace") for p in (winvm.state_dir / "logs").glob("*.log")]
    return json.dumps(winvm.calls()) + "".join(logs)


def _set_knob(winvm: WinVm, **values: object) -> None:
    with winvm.store.transaction() as state:
        winvm_playwright.pw_state(state).update(values)


@pytest.fixture
def needs_server() -> None:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize(
    ("knob", "named", "not_named"),
    [
        pytest.param({"node": None}, "Node.js", None, id="no-node"),
        pytest.param({"version": None}, "the playwright npm package", "Node.js", id="no-npm"),
    ],
)
def test_missing_prerequisite_is_exit_3_naming_it_and_changes_nothing(
    capsys, tmp_path, state_dir, winvm: WinVm, knob, named, not_named
) -> None:
    _set_knob(winvm, **knob)
    config = _config(tmp_path, winvm, free_port())
    code, out, err = run_win(capsys, "--config", str(config), "playwright", "install")
    assert code == 3, err
    assert named in err
    if not_named:
        assert not_named not in err
    assert out == ""
    # Nothing was written on either side, and no task registered: only the check ran.
    assert not _vm_file(winvm, pw.PLAYWRIGHT_DIR).exists()
    assert PLAYWRIGHT_TASK not in winvm.tasks()
    assert not local_ws_path_file(state_dir).exists()
    assert winvm.scripts() == [pw.prerequisites_script()]


def test_configured_ws_path_is_uploaded_not_stored_and_no_start_registers_only(
    capsys, tmp_path, state_dir, winvm: WinVm, monkeypatch
) -> None:
    secret = "configured-ws-path-0123456789"
    secret_file = tmp_path / "ws-path"
    secret_file.write_text(secret + "\n")
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH_FILE", str(secret_file))
    port = free_port()
    config = _config(tmp_path, winvm, port)
    code, out, err = run_win(
        capsys, "--debug", "--config", str(config), "playwright", "install", "--no-start", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["task"] == "Ready"
    assert report["started"] is False and report["ws_path_generated"] is False
    assert report["ws_path_source"] == "settings (playwright.ws_path)"
    assert _vm_file(winvm, pw.WS_PATH_PATH).read_text().strip() == secret
    assert _vm_file(winvm, pw.INSTALL_SCRIPT_PATH).read_text() == pw.install_script(port)
    assert not local_ws_path_file(state_dir).exists()
    task = winvm.tasks()[PLAYWRIGHT_TASK]
    assert task["arguments"] == pw.task_arguments(port)
    assert task["runs"] == 0
    assert winvm.started("node") == []
    assert secret not in out + err
    assert secret not in _everything_logged(winvm)


def test_install_writes_the_files_registers_and_starts_a_server_health_reaches(
    capsys, tmp_path, state_dir, winvm: WinVm, needs_server
) -> None:
    port = free_port()
    config = _config(tmp_path, winvm, port)
    code, out, err = run_win(
        capsys, "--debug", "--config", str(config), "playwright", "install", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["task"] == "Running" and report["started"] and report["ws_path_generated"]
    assert report["listening"] is True  # install waited for the port: health cannot race it

    # The files, on the emulated C: drive where SFTP put them.
    assert _vm_file(winvm, pw.LAUNCH_SERVER_PATH).read_text() == pw.launch_server_js()
    assert _vm_file(winvm, pw.INSTALL_SCRIPT_PATH).read_text() == pw.install_script(port)
    on_vm = _vm_file(winvm, pw.WS_PATH_PATH).read_text().strip()
    local = local_ws_path_file(state_dir)
    assert report["ws_path_source"] == str(local)
    assert local.read_text().strip() == on_vm
    assert len(on_vm) >= pw.WS_PATH_MIN_LEN
    assert stat.S_IMODE(os.stat(local).st_mode) == 0o600

    # The task Windows would show, and the server it started.
    task = winvm.tasks()[PLAYWRIGHT_TASK]
    assert task["arguments"] == pw.task_arguments(port)
    assert task["runs"] == 1
    first_pid = winvm.wait_started("node")

    code, out2, err2 = run_win(capsys, "--config", str(config), "playwright", "health", "--json")
    assert code == 0, err2
    assert json.loads(out2)["port"] == port

    # Again: the stored path is kept, the task replaced (-Force) and the server restarted.
    code, out3, err3 = run_win(capsys, "--config", str(config), "playwright", "install", "--json")
    assert code == 0, err3
    assert json.loads(out3)["ws_path_generated"] is False
    assert _vm_file(winvm, pw.WS_PATH_PATH).read_text().strip() == on_vm
    assert winvm.tasks()[PLAYWRIGHT_TASK]["runs"] == 2
    assert winvm.started_pids("node") == [winvm.wait_started("node")]
    assert first_pid not in winvm.started_pids("node")
    code, _, err4 = run_win(capsys, "--config", str(config), "playwright", "health")
    assert code == 0, err4

    for text in (out, err, out2, err2, out3, err3, err4, _everything_logged(winvm)):
        assert on_vm not in text
