"""windows job types through the seed tool: enqueue with the seed's flags, a real worker,
a real loopback sshd (its /bin/sh reads these command lines as cmd.exe would)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from homeops.windows.jobs import ExecPayload
from tests.windows.test_exec import run_win, vm_config


def enqueue(capsys, config: Path, *args: str) -> str:
    code, out, err = run_win(capsys, "--config", str(config), "jobs", "enqueue", *args)
    assert code == 0, err
    fields = dict(part.split("=", 1) for part in out.split())
    assert fields["state"] == "queued"
    assert len(fields["trace_id"]) >= 16
    return fields["job_id"]


def job(capsys, config: Path, job_id: str) -> dict:
    code, out, err = run_win(
        capsys, "--config", str(config), "jobs", "status", "--id", job_id, "--json"
    )
    assert code == 0, err
    return json.loads(out)


def manifest(state_dir: Path, job_id: str) -> dict[str, dict]:
    data = json.loads((state_dir / "artifacts" / job_id / "manifest.json").read_text())
    return {a["path"]: a for a in data["artifacts"]}


def test_exec_jobs_run_with_their_artifacts_and_manifest(capsys, tmp_path, state_dir, sshd):
    config = vm_config(tmp_path, sshd)
    ok = enqueue(capsys, config, "--type", "windows.exec", "--cmd", "echo hi; echo oops >&2")
    bad = enqueue(
        capsys, config, "--type", "windows.exec", "--cmd", "exit 7", "--max-attempts", "3"
    )
    code, _, err = run_win(capsys, "--config", str(config), "worker", "--drain")
    assert code == 0, err

    done = job(capsys, config, ok)
    assert done["state"] == "succeeded"
    assert done["result"] == {"state": "succeeded", "exit_code": 0}
    files = manifest(state_dir, ok)
    assert set(files) == {"ssh/stdout.txt", "ssh/stderr.txt", "ssh/exit_code.txt"}
    for rel, entry in files.items():
        body = (state_dir / "artifacts" / ok / rel).read_bytes()
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["size_bytes"] == len(body)
        assert entry["type"] == "ssh"
    assert (state_dir / "artifacts" / ok / "ssh/stdout.txt").read_bytes() == b"hi\n"
    assert (state_dir / "artifacts" / ok / "ssh/stderr.txt").read_bytes() == b"oops\n"

    failed = job(capsys, config, bad)
    # The VM answered: running it again would do the same, so no second attempt.
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    assert "exited with status 7" in failed["error"]
    assert (state_dir / "artifacts" / bad / "ssh/exit_code.txt").read_text() == "7\n"


def test_exec_job_pulls_what_the_job_left_on_the_vm(capsys, tmp_path, state_dir, sshd):
    config = vm_config(tmp_path, sshd)
    job_id = enqueue(capsys, config, "--type", "windows.exec", "--cmd", "true")
    # What a job's commands would have written on Windows, where SFTP finds it.
    vm_dir = sshd.home / "C:" / "ProgramData" / "win-automation" / "artifacts" / job_id
    (vm_dir / "sub").mkdir(parents=True)
    (vm_dir / "export.csv").write_bytes(b"a,b\n1,2\n")
    (vm_dir / "sub" / "shot.png").write_bytes(b"\x89PNG fake")
    try:
        code, _, err = run_win(capsys, "--config", str(config), "worker", "--drain")
        assert code == 0, err
        files = manifest(state_dir, job_id)
        assert files["windows/export.csv"]["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
        assert files["windows/sub/shot.png"]["type"] == "windows"
    finally:
        import shutil

        shutil.rmtree(sshd.home / "C:", ignore_errors=True)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(["--type", "windows.exec"], "needs --cmd", id="no-cmd"),
        pytest.param(["--type", "windows.exec", "--cmd", " "], "needs --cmd", id="blank-cmd"),
        pytest.param(
            ["--type", "windows.exec", "--cmd", "x", "--url", "u"], "--url is not", id="stray"
        ),
        pytest.param(["--type", "nope.run", "--cmd", "x"], "not a windows job type", id="type"),
        pytest.param(
            ["--type", "windows.exec", "--cmd", "x", "--timeout", "-1s"], "--timeout", id="t"
        ),
        # What the direct commands refuse, enqueue refuses: no job that could never run.
        pytest.param(
            ["--type", "windows.exec", "--cmd", "line1\nline2"],
            "'windows.exec': cmd: a multi-line command needs --powershell",
            id="multi-line-cmd",
        ),
        pytest.param(
            ["--type", "windows.exec", "--cmd", "x" * 120_000],
            "'windows.exec': cmd: the command is 120000 characters on the wire",
            id="cmd-too-long",
        ),
        pytest.param(
            ["--type", "windows.exec", "--powershell", "--cmd", "x" * 7000],
            "'windows.exec': cmd: the command is",
            id="powershell-too-long-encoded",
        ),
        pytest.param(
            ["--type", "windows.exec", "--cmd", "x", "--idempotent-check", "a\nb"],
            "'windows.exec': idempotent_check: a multi-line command",
            id="multi-line-check",
        ),
        pytest.param(
            ["--type", "playwright.run", "--url", "http://127.0.0.1:99999/"],
            "'playwright.run': url: --url: port must be 1-65535",
            id="url-bad-port",
        ),
        pytest.param(
            ["--type", "playwright.run", "--url", "http://127.0.0.1:37553/\nx"],
            "'playwright.run': url: --url contains a control character",
            id="url-control-char",
        ),
    ],
)
def test_enqueue_usage_errors_are_exit_2_and_store_nothing(
    capsys, tmp_path, state_dir, sshd, args, match
):
    config = vm_config(tmp_path, sshd)
    code, out, err = run_win(capsys, "--config", str(config), "jobs", "enqueue", *args)
    assert code == 2, err
    assert match in err
    code, out, _ = run_win(capsys, "--config", str(config), "jobs", "list", "--json")
    assert json.loads(out) == []


def test_exec_payload_model_is_strict():
    assert ExecPayload.model_validate({"cmd": "dir"}).powershell is False
    with pytest.raises(ValueError, match="extra"):
        ExecPayload.model_validate({"cmd": "dir", "shell": "cmd"})


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        pytest.param({"cmd": "a\nb"}, "cmd", "needs --powershell", id="multi-line"),
        pytest.param({"cmd": "a\rb"}, "cmd", "needs --powershell", id="cr"),
        pytest.param({"cmd": "  "}, "cmd", "no command given", id="blank"),
        pytest.param({"cmd": "x\0", "powershell": True}, "cmd", "NUL", id="nul"),
        pytest.param({"cmd": "x" * 8192}, "cmd", "Windows allows 8191", id="long"),
        pytest.param(
            {"cmd": "x", "idempotent_check": "a\nb"}, "idempotent_check", "multi", id="check"
        ),
    ],
)
def test_exec_payload_refuses_what_windows_exec_refuses(data, field, says):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        ExecPayload.model_validate(data)
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert says in error["msg"] and not error["msg"].startswith("Value error")


def test_exec_payload_accepts_what_windows_exec_accepts():
    multi = ExecPayload.model_validate({"cmd": "Get-Date\nexit 3", "powershell": True})
    assert multi.cmd == "Get-Date\nexit 3"
    assert ExecPayload.model_validate({"cmd": "x" * 8191}).cmd == "x" * 8191
    check = {"cmd": "x", "powershell": True, "idempotent_check": "a\nb"}
    assert ExecPayload.model_validate(check).idempotent_check == "a\nb"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999/", "http://127.0.0.1:37553/\nx", "ftp://h/", "http://h:0/"],
)
def test_playwright_payload_refuses_what_playwright_run_refuses(url):
    from pydantic import ValidationError

    from homeops.windows.jobs import PlaywrightPayload

    with pytest.raises(ValidationError) as info:
        PlaywrightPayload.model_validate({"url": url})
    assert info.value.errors()[0]["loc"] == ("url",)


def test_the_umbrellas_enqueue_refuses_the_same_payloads(capsys, state_dir):
    from tests.core.test_cli import run_main

    payload = json.dumps({"cmd": "line1\nline2"})
    code, out, err = run_main(capsys, "jobs", "enqueue", "windows.exec", "--payload", payload)
    assert code == 2
    assert out == "" and "cmd: a multi-line command needs --powershell" in err
    code, out, err = run_main(capsys, "jobs", "list", "--json")
    assert code == 0, err
    assert json.loads(out) == []


def test_enqueue_json_refusal_is_one_object(capsys, tmp_path, state_dir):
    config = tmp_path / "win.json"
    config.write_text("{}")
    code, out, err = run_win(
        capsys,
        "--config",
        str(config),
        "jobs",
        "enqueue",
        "--type",
        "playwright.run",
        "--url",
        "http://127.0.0.1:99999/",
        "--json",
    )
    assert code == 2
    data = json.loads(out)
    assert (data["ok"], data["exit_code"], data["type"]) == (False, 2, "playwright.run")
    assert "url: --url: port must be 1-65535" in data["error"]
    assert err == f"error: {data['error']}\n"


def test_the_umbrella_sees_the_same_job_types_and_store(capsys, tmp_path, state_dir, sshd):
    from tests.core.test_cli import run_main

    config = vm_config(tmp_path, sshd)
    job_id = enqueue(capsys, config, "--type", "windows.exec", "--cmd", "echo x")
    umbrella = tmp_path / "homeops.json"
    umbrella.write_text(json.dumps({"windows": json.loads(config.read_text())}))
    code, out, err = run_main(capsys, "--config", str(umbrella), "jobs", "status", job_id, "--json")
    assert code == 0, err
    assert json.loads(out)["type"] == "windows.exec"


def test_playwright_run_job_keeps_a_real_screenshot_and_trace(
    capsys, tmp_path, state_dir, playwright_server, page_server
):
    config = tmp_path / "win.json"
    config.write_text(
        json.dumps(
            {
                "playwright": {
                    "host": playwright_server.host,
                    "port": playwright_server.port,
                    "ws_path": playwright_server.ws_path,
                }
            }
        )
    )
    job_id = enqueue(
        capsys, config, "--type", "playwright.run", "--url", page_server.base + "/", "--trace"
    )
    code, out, err = run_win(capsys, "--config", str(config), "worker", "--drain", "--metrics")
    assert code == 0, err
    done = job(capsys, config, job_id)
    assert done["state"] == "succeeded", done["error"]
    files = manifest(state_dir, job_id)
    png = (state_dir / "artifacts" / job_id / "playwright/screenshot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert files["playwright/screenshot.png"]["sha256"] == hashlib.sha256(png).hexdigest()
    import zipfile

    with zipfile.ZipFile(state_dir / "artifacts" / job_id / "playwright/trace.zip") as zf:
        assert zf.namelist()
    # The seed's counter, incremented where the session happened, in the worker's metrics.
    assert "metric=playwright_sessions_total value=1 " in out
    assert playwright_server.ws_path not in out + err


def test_playwright_payload_refuses_a_file_url(capsys, tmp_path, state_dir):
    config = tmp_path / "win.json"
    config.write_text("{}")
    code, _, err = run_win(
        capsys,
        "--config",
        str(config),
        "jobs",
        "enqueue",
        "--type",
        "playwright.run",
        "--url",
        "file:///etc/passwd",
    )
    assert code == 2
    assert "url" in err


def _playwright_config(tmp_path: Path, server) -> Path:
    config = tmp_path / "win.json"
    section = {"host": server.host, "port": server.port, "ws_path": server.ws_path}
    config.write_text(json.dumps({"playwright": section}))
    return config


def test_playwright_jobs_with_timeouts_beyond_nodes_timers_succeed(
    capfd, tmp_path, state_dir, playwright_server, page_server, monkeypatch
):
    # Node's timers are 32-bit signed ms: 30 days was "set to 1" and the connect failed.
    config = _playwright_config(tmp_path, playwright_server)
    url = page_server.base + "/"
    flag = enqueue(capfd, config, "--type", "playwright.run", "--url", url, "--timeout", "30d")
    monkeypatch.setenv("WIN_AUTOMATION_HATCHET_JOB_TIMEOUT", "30d")
    env = enqueue(capfd, config, "--type", "playwright.run", "--url", url, "--no-screenshot")
    code, _out, err = run_win(capfd, "--config", str(config), "worker", "--drain")
    assert code == 0, err
    for job_id in (flag, env):
        done = job(capfd, config, job_id)
        assert (done["state"], done["attempts"]) == ("succeeded", 1), done["error"]
    assert "TimeoutOverflowWarning" not in err


def test_playwright_job_on_a_404_page_fails_once_with_its_screenshot(
    capsys, tmp_path, state_dir, playwright_server, page_server
):
    config = _playwright_config(tmp_path, playwright_server)
    url = page_server.base + "/missing"
    job_id = enqueue(
        capsys, config, "--type", "playwright.run", "--url", url, "--max-attempts", "3"
    )
    code, _out, err = run_win(capsys, "--config", str(config), "worker", "--drain")
    assert code == 0, err
    done = job(capsys, config, job_id)
    # Another attempt would get the same 404: one attempt, the status named.
    assert (done["state"], done["attempts"]) == ("failed", 1)
    assert "the page answered HTTP 404" in done["error"]
    files = manifest(state_dir, job_id)
    png = (state_dir / "artifacts" / job_id / "playwright/screenshot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert files["playwright/screenshot.png"]["sha256"] == hashlib.sha256(png).hexdigest()
