"""The ``aloha.run`` job type: the seed tool's enqueue, a real worker and SQLite queue, the
Windows VM emulator over sshd (desktop-locked check, the client's log over SFTP) and the fake
Aloha apps on loopback.

The point of most of these: a job may be tried again only while its ``POST /run_task`` has
provably not reached the client; once it may have, another attempt could start the same GUI
task twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fakes.aloha import FakeAloha
from tests.fixtures.winvm import WinVm
from tests.windows.test_exec import run_win
from tests.windows.test_jobs import enqueue, job, manifest

CLIENT_LOG = r"C:\aloha\client.log"


@dataclass
class Setup:
    config: Path
    server: FakeAloha
    client: FakeAloha


@pytest.fixture
def vm_aloha(winvm: WinVm, tmp_path: Path, state_dir: Path) -> Iterator[Setup]:
    # The client logs where the VM's SFTP finds C:\aloha\client.log.
    log = winvm.windows_path_to_local(CLIENT_LOG)
    log.parent.mkdir(parents=True, exist_ok=True)
    server = FakeAloha("server").start()
    client = FakeAloha("client", log_path=log).start()
    config = tmp_path / "win.json"
    settings = winvm.windows_settings(
        aloha={"server_url": server.url, "client_url": client.url, "client_log_path": CLIENT_LOG}
    )
    config.write_text(json.dumps(settings))
    try:
        yield Setup(config, server, client)
    finally:
        client.close()
        server.close()


def drain(capsys, setup: Setup, *extra: str) -> str:
    code, out, err = run_win(capsys, "--config", str(setup.config), "worker", "--drain", *extra)
    assert code == 0, err
    return out


def accepted(client: FakeAloha) -> int:
    return len([r for r in client.calls("/run_task") if r.status == 200])


def test_a_waited_run_succeeds_with_its_response_and_counter(capsys, vm_aloha, state_dir):
    job_id = enqueue(
        capsys, vm_aloha.config, "--type", "aloha.run", "--task", "open notepad", "--max-steps", "4"
    )
    out = drain(capsys, vm_aloha, "--metrics")
    done = job(capsys, vm_aloha.config, job_id)
    assert done["state"] == "succeeded", done["error"]
    # The fake's run takes max_steps - 1 steps before it ends.
    assert done["result"]["state"] == "finished"
    assert done["result"]["steps"] == 3
    files = manifest(state_dir, job_id)
    body = (state_dir / "artifacts" / job_id / "aloha/response.json").read_bytes()
    assert files["aloha/response.json"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert files["aloha/response.json"]["type"] == "aloha"
    data = json.loads(body)
    # Every field is sent, the omitted ones at the client's defaults.
    assert data["request"] == {
        "task": "open notepad",
        "selected_screen": 0,
        "trace_id": "example_trace",
        "server_url": vm_aloha.server.url + "/generate_action",
        "max_steps": 4,
    }
    assert data["response"]["status"] == "success"
    assert (data["state"], data["errors"]) == ("finished", [])
    assert accepted(vm_aloha.client) == 1
    assert "metric=aloha_runs_total value=1 " in out


def test_a_busy_client_fails_the_job_once(capsys, vm_aloha):
    # Another run holds the client: 409, and a second POST would only be refused again.
    httpx.post(
        vm_aloha.client.url + "/run_task",
        json={"task": "long", "max_steps": 10_000, "server_url": vm_aloha.server.url},
        timeout=5,
    )
    try:
        job_id = enqueue(
            capsys,
            vm_aloha.config,
            "--type",
            "aloha.run",
            "--task",
            "t",
            "--no-wait",
            "--max-attempts",
            "3",
        )
        drain(capsys, vm_aloha)
        failed = job(capsys, vm_aloha.config, job_id)
        assert (failed["state"], failed["attempts"]) == ("failed", 1)
        assert "a task is already running" in failed["error"]
    finally:
        httpx.post(vm_aloha.client.url + "/stop", timeout=5)
        vm_aloha.client.wait_idle()
    assert [r.status for r in vm_aloha.client.calls("/run_task")] == [200, 409]


def test_a_client_that_never_took_the_task_is_tried_again(capsys, vm_aloha):
    # Three 503s use up the seam's own attempts: the task was provably never started, so the
    # job's next attempt may send it.
    vm_aloha.client.knobs.unavailable = 3
    job_id = enqueue(
        capsys,
        vm_aloha.config,
        "--type",
        "aloha.run",
        "--task",
        "t",
        "--no-wait",
        "--max-attempts",
        "2",
    )
    drain(capsys, vm_aloha)
    done = job(capsys, vm_aloha.config, job_id)
    assert (done["state"], done["attempts"]) == ("succeeded", 2), done["error"]
    assert [r.status for r in vm_aloha.client.calls("/run_task")] == [503, 503, 503, 200]
    assert accepted(vm_aloha.client) == 1


def test_a_post_that_may_have_arrived_is_never_sent_again(capsys, vm_aloha):
    # The client hangs on the POST: the job times out, and since the task may have started,
    # it fails for good instead of posting it once more.
    vm_aloha.client.knobs.hang.set()
    try:
        job_id = enqueue(
            capsys,
            vm_aloha.config,
            "--type",
            "aloha.run",
            "--task",
            "t",
            "--no-wait",
            "--timeout",
            "2s",
            "--max-attempts",
            "3",
        )
        drain(capsys, vm_aloha)
    finally:
        vm_aloha.client.knobs.hang.clear()
    failed = job(capsys, vm_aloha.config, job_id)
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    assert "timed out" in failed["error"]


def test_a_locked_desktop_blocks_before_anything_is_posted(capsys, vm_aloha, winvm):
    winvm.set_locked()
    job_id = enqueue(
        capsys, vm_aloha.config, "--type", "aloha.run", "--task", "t", "--max-attempts", "3"
    )
    drain(capsys, vm_aloha)
    failed = job(capsys, vm_aloha.config, job_id)
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    assert "locked" in failed["error"]
    assert vm_aloha.client.calls("/run_task") == []
    assert any("LogonUI" in script for script in winvm.scripts())


def test_an_error_in_the_clients_log_fails_the_job_with_its_response(capsys, vm_aloha, state_dir):
    # Each step asks the server, which answers with Flask's HTML 500: the client logs
    # "Error during task processing" and ends the run.
    vm_aloha.client.knobs.call_server = True
    vm_aloha.server.knobs.server_error = True
    job_id = enqueue(
        capsys, vm_aloha.config, "--type", "aloha.run", "--task", "t", "--max-attempts", "3"
    )
    drain(capsys, vm_aloha)
    failed = job(capsys, vm_aloha.config, job_id)
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    assert "the client logged an error" in failed["error"]
    data = json.loads((state_dir / "artifacts" / job_id / "aloha/response.json").read_text())
    assert data["state"] == "failed"
    assert data["errors"]


def test_waiting_needs_the_clients_log_before_anything_is_queued(capsys, tmp_path, state_dir):
    config = tmp_path / "win.json"
    config.write_text(json.dumps({"aloha": {"client_url": "http://127.0.0.1:9"}}))
    code, out, err = run_win(
        capsys, "--config", str(config), "jobs", "enqueue", "--type", "aloha.run", "--task", "t"
    )
    assert code == 2
    assert "aloha.client_log_path" in err
    assert "--no-wait" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run_win(capsys, "--config", str(config), "jobs", "list", "--json")
    assert code == 0
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        pytest.param(("--max-steps", "0"), "--max-steps", id="zero-steps"),
        pytest.param(("--selected-screen", "65"), "--selected-screen", id="screen-too-high"),
        pytest.param(("--task", " "), "--task", id="blank-task"),
    ],
)
def test_bad_aloha_payloads_are_refused_at_enqueue(capsys, tmp_path, state_dir, flags, named):
    config = tmp_path / "win.json"
    config.write_text("{}")
    args = ["--task", "t", "--no-wait", *flags]
    code, _, err = run_win(
        capsys, "--config", str(config), "jobs", "enqueue", "--type", "aloha.run", *args
    )
    assert code == 2, err
    assert named in err or named.strip("-").replace("-", "_") in err
