"""``homeops win aloha health|run|stop`` (and ``win-automation aloha``) through the CLI, with a
config file pointing at the fake Aloha apps on loopback (tests/fakes/aloha.py).

The VM side (desktop-locked check, the client's log over SFTP) is replaced at the command's
own seam, ``aloha_cmd.vm_seams``: a FakeRunner answering the LogonUI probe and the fake
client's log file read locally (tests/fakes/winvm.py had not landed when these were written).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import ClassVar

import pytest

from homeops.windows.cli import aloha_cmd
from tests.core.test_cli import run_main
from tests.fakes.runner import FakeRunner
from tests.fixtures.common import free_port
from tests.windows.test_aloha import LOCK_PROBE, FileLog, _until
from tests.windows.test_exec import run_win


def _config(tmp_path: Path, server: str, client: str, **aloha: object) -> Path:
    path = tmp_path / "win.json"
    section = {"server_url": server + "/", "client_url": client, **aloha}
    path.write_text(
        json.dumps(
            {"windows": {"ssh_host": "127.0.0.1", "ssh_port": free_port()}, "aloha": section}
        )
    )
    return path


@pytest.fixture
def apps_config(aloha_apps, tmp_path, state_dir, monkeypatch):
    config = _config(
        tmp_path, aloha_apps.server.url, aloha_apps.client.url, client_log_path="C:\\aloha\\c.log"
    )
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(config))
    return aloha_apps


@pytest.fixture
def vm(monkeypatch, apps_config):
    """The VM seam: an unlocked desktop (or ``vm.locked = True``) and the fake's log."""

    class Vm:
        locked = False
        runners: ClassVar[list[FakeRunner]] = []
        log = FileLog(apps_config.log_path)

    @contextlib.asynccontextmanager
    async def seams(settings):
        runner = FakeRunner(host="vm")
        runner.expect_raw(LOCK_PROBE, stdout="locked\r\n" if Vm.locked else "unlocked\r\n")
        Vm.runners.append(runner)
        has_log = bool(settings.aloha.client_log_path)
        yield runner, (Vm.log if has_log else None)

    monkeypatch.setattr(aloha_cmd, "vm_seams", seams)
    return Vm


def test_health_ok_text_says_the_clients_404_is_expected(capsys, apps_config):
    code, out, err = run_main(capsys, "win", "aloha", "health")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("aloha server: ok ") and "Aloha API server is running" in lines[0]
    assert lines[1].startswith("aloha client: ok ") and "HTTP 404" in lines[1]


def test_health_json(capsys, apps_config):
    code, out, err = run_main(capsys, "win", "aloha", "health", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] is True
    assert data["server"]["status"] == 200 and data["client"]["status"] == 404


def test_health_unreachable_is_exit_3_with_the_report(capsys, tmp_path, state_dir, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(_config(tmp_path, dead, dead)))
    code, out, err = run_main(capsys, "win", "aloha", "health", "--json")
    assert code == 3
    data = json.loads(out)
    assert data["ok"] is False and data["client"]["reachable"] is False
    assert "aloha server and client unavailable" in err
    # The same keys as every --json failure.
    assert data["exit_code"] == 3
    assert data["error"] == "aloha server and client unavailable"


def test_health_under_the_seed_name_and_its_config_flag(capsys, aloha_apps, tmp_path, state_dir):
    config = _config(tmp_path, aloha_apps.server.url, aloha_apps.client.url)
    code, out, err = run_win(capsys, "--config", str(config), "aloha", "health")
    assert code == 0, err
    assert "aloha server: ok" in out


def test_run_prints_a_started_line_and_sends_every_field(capsys, vm, apps_config):
    code, out, err = run_main(
        capsys, "win", "aloha", "run", "--task", "open settings", "--max-steps", "2"
    )
    assert code == 0, err
    assert out == (
        'state=started task="open settings" max_steps=2 selected_screen=0 trace_id=example_trace\n'
    )
    (call,) = apps_config.client.calls("/run_task")
    assert call.body == {
        "task": "open settings",
        "selected_screen": 0,
        "trace_id": "example_trace",
        "server_url": apps_config.server.url + "/generate_action",
        "max_steps": 2,
    }
    assert apps_config.client.wait_idle()


def test_run_wait_json_follows_the_log_to_the_end(capsys, vm, apps_config):
    code, out, err = run_main(
        capsys,
        "win",
        "aloha",
        "run",
        "--task",
        "t",
        "--max-steps",
        "3",
        "--selected-screen",
        "1",
        "--trace-id",
        "hero",
        "--wait",
        "--timeout",
        "1m",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["state"] == "finished" and data["steps"] == 2 and data["errors"] == []
    assert data["response"] == {"status": "success", "message": "Task started", "task": "t"}
    assert data["request"]["trace_id"] == "hero" and data["request"]["selected_screen"] == 1


def test_run_wait_without_a_log_path_is_exit_2(
    capsys, aloha_apps, tmp_path, state_dir, monkeypatch
):
    config = _config(tmp_path, aloha_apps.server.url, aloha_apps.client.url)
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(config))
    code, out, err = run_main(capsys, "win", "aloha", "run", "--task", "t", "--wait")
    assert code == 2
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "aloha.client_log_path" in err
    assert aloha_apps.client.requests == []


def test_run_desktop_locked_is_exit_1_blocked(capsys, vm, apps_config):
    vm.locked = True
    code, out, err = run_main(capsys, "win", "aloha", "run", "--task", "t")
    assert code == 1
    assert out == "" and "state=blocked" in err
    assert apps_config.client.requests == []


def test_run_while_busy_is_exit_1_a_task_is_already_running(capsys, vm, apps_config):
    fake = apps_config.client
    fake.knobs.step_s = 0.2
    code, _, err = run_main(capsys, "win", "aloha", "run", "--task", "long", "--max-steps", "999")
    assert code == 0, err
    _until(lambda: fake.state.busy, "the first run is busy")
    code, out, err = run_main(capsys, "win", "aloha", "run", "--task", "second")
    assert code == 1
    assert out == "" and "a task is already running" in err
    code, out, err = run_main(capsys, "win", "aloha", "stop")
    assert code == 0, err
    assert out == 'state=stopping message="Stop signal sent"\n'
    assert fake.wait_idle()
    code, out, err = run_main(capsys, "win", "aloha", "stop", "--json")
    assert code == 0, err
    assert json.loads(out) == {"state": "idle", "status": 400, "message": "No active task to stop"}


def test_run_client_unreachable_is_exit_3(capsys, vm, apps_config, tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(_config(tmp_path, dead, dead)))
    code, out, err = run_main(capsys, "win", "aloha", "run", "--task", "t")
    assert code == 3
    assert out == "" and "/run_task" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "--task is required", id="no-arguments"),
        pytest.param(["--max-steps", "2"], "--task is required", id="no-task"),
        pytest.param(["--task", " "], "--task: the task text is empty", id="empty-task"),
        pytest.param(["--task", "t", "--max-steps", "0"], "--max-steps: must be 1-10000", id="0"),
        pytest.param(["--task", "t", "--max-steps", "x"], "--max-steps: not a whole", id="word"),
        pytest.param(["--task", "t", "--max-steps", "-3"], "--max-steps: not a whole", id="neg"),
        pytest.param(["--task", "t", "--selected-screen", "65"], "must be 0-64", id="screen"),
        pytest.param(["--task", "t", "--trace-id", ""], "--trace-id: empty", id="trace"),
        pytest.param(["--task", "t", "--timeout", "5s"], "only applies with --wait", id="to"),
        pytest.param(["--task", "t", "--wait", "--timeout", "soon"], "--timeout:", id="dur"),
        pytest.param(["--task", "t", "--wait", "--timeout", "0s"], "greater than 0", id="zero"),
    ],
)
def test_run_bad_flags_are_one_line_exit_2(capsys, vm, apps_config, args, message):
    code, out, err = run_main(capsys, "win", "aloha", "run", *args)
    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1
    assert message in err
    assert apps_config.client.requests == []


def test_run_json_failures_print_one_object(capsys, vm, apps_config, tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(_config(tmp_path, dead, dead)))
    code, out, err = run_main(capsys, "win", "aloha", "run", "--task", "t", "--json")
    assert code == 3
    data = json.loads(out)
    assert (data["ok"], data["exit_code"], data["task"]) == (False, 3, "t")
    assert "/run_task" in data["error"]
    assert err.splitlines()[-1] == f"error: {data['error']}"
    code, out, err = run_main(capsys, "win", "aloha", "stop", "--json")
    assert code == 3
    data = json.loads(out)
    assert (data["ok"], data["exit_code"]) == (False, 3)
    assert err.splitlines()[-1] == f"error: {data['error']}"


def test_run_json_usage_and_blocked_print_one_object(capsys, vm, apps_config):
    code, out, err = run_main(capsys, "win", "aloha", "run", "--json")
    assert code == 2
    assert json.loads(out) == {
        "ok": False,
        "error": "--task is required (aloha run --task TEXT)",
        "exit_code": 2,
    }
    assert err == "error: --task is required (aloha run --task TEXT)\n"
    vm.locked = True
    code, out, err = run_main(capsys, "win", "aloha", "run", "--task", "t", "--json")
    assert code == 1
    assert err.splitlines()[-1].endswith("(state=blocked)")
    data = json.loads(out)
    assert (data["ok"], data["exit_code"]) == (False, 1) and "state=blocked" in data["error"]
    assert apps_config.client.requests == []
