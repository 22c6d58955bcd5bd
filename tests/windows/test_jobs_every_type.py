r"""Issue 7's end-to-end run: one job of each windows type through one worker.

``windows.exec`` runs on the Windows VM emulator over sshd, ``aloha.run`` on the fake Aloha
apps (its client log on the emulated C:\aloha\client.log, followed over SFTP), and
``playwright.run`` on the real Playwright server (launchServer + Chromium) against a loopback
page. Every job must succeed, every artifact listed in its manifest must hash to what is on
disk, and the worker's metric lines must count what happened.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.fakes.aloha import FakeAloha
from tests.fixtures.playwright_server import PageServer, PlaywrightServer
from tests.fixtures.winvm import WinVm
from tests.windows.test_exec import run_win
from tests.windows.test_jobs import enqueue, job, manifest

CLIENT_LOG = r"C:\aloha\client.log"


def _metric(out: str, name: str) -> int:
    values = [
        int(line.split()[1].removeprefix("value="))
        for line in out.splitlines()
        if line.startswith(f"metric={name} ")
    ]
    assert values, f"no {name} line in {out!r}"
    return values[-1]


def test_one_job_of_each_type_succeeds_with_verified_artifacts(
    capsys,
    tmp_path: Path,
    state_dir: Path,
    winvm: WinVm,
    playwright_server: PlaywrightServer,
    page_server: PageServer,
) -> None:
    log = winvm.windows_path_to_local(CLIENT_LOG)
    log.parent.mkdir(parents=True, exist_ok=True)
    server = FakeAloha("server").start()
    client = FakeAloha("client", log_path=log).start()
    try:
        settings = winvm.windows_settings(
            aloha={
                "server_url": server.url,
                "client_url": client.url,
                "client_log_path": CLIENT_LOG,
            },
            playwright={
                "host": playwright_server.host,
                "port": playwright_server.port,
                "ws_path": playwright_server.ws_path,
            },
        )
        config = tmp_path / "win.json"
        config.write_text(json.dumps(settings))
        ids = {
            "windows.exec": enqueue(capsys, config, "--type", "windows.exec", "--cmd", "echo hi"),
            "aloha.run": enqueue(
                capsys, config, "--type", "aloha.run", "--task", "open notepad", "--max-steps", "3"
            ),
            "playwright.run": enqueue(
                capsys,
                config,
                "--type",
                "playwright.run",
                "--url",
                page_server.base + "/",
                "--trace",
            ),
        }
        code, out, err = run_win(capsys, "--config", str(config), "worker", "--drain", "--metrics")
        assert code == 0, err
    finally:
        client.close()
        server.close()

    expected = {
        "windows.exec": {"ssh/stdout.txt", "ssh/stderr.txt", "ssh/exit_code.txt"},
        "aloha.run": {"aloha/response.json"},
        "playwright.run": {"playwright/screenshot.png", "playwright/trace.zip"},
    }
    for kind, job_id in ids.items():
        done = job(capsys, config, job_id)
        assert (done["type"], done["state"]) == (kind, "succeeded"), done["error"]
        files = manifest(state_dir, job_id)
        assert expected[kind] <= set(files), (kind, sorted(files))
        for path, entry in files.items():
            body = (state_dir / "artifacts" / job_id / path).read_bytes()
            assert entry["sha256"] == hashlib.sha256(body).hexdigest(), (kind, path)
            assert entry["size_bytes"] == len(body), (kind, path)
    exec_dir = state_dir / "artifacts" / ids["windows.exec"] / "ssh"
    assert (exec_dir / "stdout.txt").read_bytes().strip() == b"hi"
    assert (exec_dir / "exit_code.txt").read_text().strip() == "0"
    assert _metric(out, "jobs_completed_total") == 3
    assert _metric(out, "jobs_failed_total") == 0
    assert _metric(out, "aloha_runs_total") == 1
    assert _metric(out, "playwright_sessions_total") == 1
    # The secret ws path went to the server, never to output.
    assert playwright_server.ws_path not in out + err
