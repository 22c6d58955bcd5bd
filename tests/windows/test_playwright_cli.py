"""``homeops win playwright health|run`` (and ``win-automation playwright``) end to end,
against the real loopback Playwright server of tests/fixtures/playwright_server.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homeops.windows import playwright_flow as flow
from tests.core.test_cli import run_main
from tests.fixtures.common import free_port
from tests.fixtures.playwright_server import PAGE_TITLE, PageServer, PlaywrightServer


@pytest.fixture
def server_env(
    playwright_server: PlaywrightServer, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> PlaywrightServer:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_HOST", playwright_server.host)
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_PORT", str(playwright_server.port))
    return playwright_server


def test_health_ok_with_the_ws_path_from_env(capsys, server_env, monkeypatch) -> None:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    code, out, err = run_main(capsys, "win", "playwright", "health", "--json", "--debug")
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] is True and data["port"] == server_env.port
    assert server_env.ws_path not in out + err


def test_health_finds_the_ws_path_install_stored(capsys, server_env, state_dir) -> None:
    flow.write_private(flow.local_ws_path_file(state_dir), server_env.ws_path + "\n")
    code, out, err = run_main(capsys, "win", "playwright", "health")
    assert code == 0, err
    assert out.startswith("playwright: ok 127.0.0.1:")


def test_health_without_a_ws_path_is_exit_2(capsys, server_env) -> None:
    code, out, err = run_main(capsys, "win", "playwright", "health")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "playwright install" in err


def test_health_nothing_listening_is_exit_3(capsys, state_dir, monkeypatch) -> None:
    secret = "secret-path-for-nothing-1234"
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_PORT", str(free_port()))
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", secret)
    code, _out, err = run_main(capsys, "win", "playwright", "health", "--debug")
    assert code == 3
    assert "nothing listens" in err
    assert secret not in err


def test_health_wrong_ws_path_is_exit_3_and_masked(capsys, server_env, monkeypatch) -> None:
    wrong = "wrong-path-abcdefghijkl"
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", wrong)
    code, _out, err = run_main(capsys, "win", "playwright", "health", "--debug")
    assert code == 3
    assert "WebSocket connect failed" in err
    assert wrong not in err


def test_run_writes_screenshot_and_trace(
    capsys, server_env, page_server: PageServer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    out_dir = tmp_path / "art"
    code, out, err = run_main(
        capsys,
        "win",
        "playwright",
        "run",
        "--url",
        page_server.base + "/",
        "--screenshot",
        "--trace",
        "--out",
        str(out_dir),
        "--json",
        "--debug",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["title"] == PAGE_TITLE
    assert data["files"] == [str(out_dir / "screenshot.png"), str(out_dir / "trace.zip")]
    assert (out_dir / "screenshot.png").read_bytes().startswith(b"\x89PNG")
    assert server_env.ws_path not in out + err


def test_seed_tool_runs_the_same_command(
    capsys, server_env, page_server: PageServer, monkeypatch, tmp_path
) -> None:
    from homeops.cli import run_console

    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    out_dir = tmp_path / "never-made"
    argv = ["playwright", "run", "--url", page_server.base + "/go", "--out", str(out_dir)]
    code = run_console("win-automation", argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f'title="{PAGE_TITLE}"' in out and f"final_url={page_server.base}/" in out
    assert not out_dir.exists()  # no file asked for, nothing written


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(["--url", "file:///C:/x"], "http:// or https://", id="file-url"),
        pytest.param(["--url", "ftp://h/x"], "http:// or https://", id="ftp-url"),
        pytest.param(["--url", "http://"], "no host", id="no-host"),
        pytest.param(["--url", "http://h/", "--timeout", "0s"], "--timeout", id="zero-timeout"),
        pytest.param(["--url", "http://h/", "--timeout", "soon"], "--timeout", id="bad-timeout"),
    ],
)
def test_run_bad_flags_are_one_line_exit_2(capsys, state_dir, args, says) -> None:
    code, out, err = run_main(capsys, "win", "playwright", "run", *args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and says in err


def test_run_out_must_be_a_directory(capsys, state_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", "any-path-0123456789")
    (tmp_path / "f").write_text("")
    code, _out, err = run_main(
        capsys, "win", "playwright", "run", "--url", "http://h/", "--out", str(tmp_path / "f")
    )
    assert code == 2 and "not a directory" in err
