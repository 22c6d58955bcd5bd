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
        pytest.param(["--url", "http://127.0.0.1:99999/"], "port must be 1-65535", id="port"),
        pytest.param(["--url", "http://127.0.0.1:37553/\nx"], "control character", id="lf"),
        pytest.param([], "--url is required", id="no-args"),
        pytest.param(["--url", ""], "--url is required", id="empty-url"),
        pytest.param(["--screenshot"], "--url is required", id="no-url"),
        pytest.param(["--url", "http://h/", "--out", ""], "--out: empty path", id="empty-out"),
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


# -- hostile input (the review of issue 7) ------------------------------------------------------


def run_fd(capfd, *args: str) -> tuple[int, str, str]:
    """run_main, with the Node driver's own stderr (fd 2) captured too."""
    return run_main(capfd, *args)


@pytest.mark.parametrize("timeout", ["30d", "25d", "3650d"])
def test_run_with_a_timeout_beyond_nodes_timers_still_loads_the_page(
    capfd, server_env, page_server: PageServer, monkeypatch, timeout
) -> None:
    # Node keeps timers as 32-bit signed ms: 30d was "set to 1" and failed at once.
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    code, out, err = run_fd(
        capfd, "win", "playwright", "run", "--url", page_server.base + "/", "--timeout", timeout
    )
    assert code == 0, err
    assert f'title="{PAGE_TITLE}"' in out
    assert "TimeoutOverflowWarning" not in err and "exceeded" not in err


def test_health_with_a_timeout_beyond_nodes_timers_is_ok(capfd, server_env, monkeypatch) -> None:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    code, out, err = run_fd(capfd, "win", "playwright", "health", "--timeout", "30d")
    assert code == 0, err
    assert out.startswith("playwright: ok ")
    assert "TimeoutOverflowWarning" not in err


def test_run_out_empty_is_exit_2_and_writes_nothing_here(
    capsys, state_dir, tmp_path, monkeypatch
) -> None:
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", "any-path-0123456789")
    code, out, err = run_main(
        capsys, "win", "playwright", "run", "--url", "http://h/", "--screenshot", "--out", ""
    )
    assert code == 2
    assert out == "" and err == "error: --out: empty path\n"
    assert list(here.iterdir()) == []


@pytest.mark.parametrize(
    ("out_dir", "says"),
    [
        pytest.param("/proc/self/x", "cannot create the directory", id="proc"),
        pytest.param("{tmp}/file/sub", "cannot create the directory", id="under-a-file"),
        pytest.param("{tmp}/file", "not a directory", id="a-file"),
    ],
)
def test_run_out_that_cannot_be_written_is_exit_2_before_connecting(
    capsys, state_dir, tmp_path, monkeypatch, out_dir, says
) -> None:
    # Nothing listens on the configured port: reaching the server would be exit 3, not 2.
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_PORT", str(free_port()))
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", "any-path-0123456789")
    (tmp_path / "file").write_text("")
    target = out_dir.format(tmp=tmp_path)
    code, out, err = run_main(
        capsys,
        "win",
        "playwright",
        "run",
        "--url",
        "http://127.0.0.1:1/",
        "--trace",
        "--out",
        target,
    )
    assert code == 2, err
    assert out == ""
    assert err.startswith(f"error: --out {target}: ") and says in err
    assert "nothing listens" not in err


def test_run_page_answering_404_is_exit_1_naming_the_status_with_the_files(
    capsys, server_env, page_server: PageServer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    out_dir = tmp_path / "art"
    url = page_server.base + "/missing"
    code, out, err = run_main(
        capsys, "win", "playwright", "run", "--url", url, "--screenshot", "--out", str(out_dir)
    )
    assert code == 1
    assert out.splitlines() == [
        f'title="Error response" final_url={url} status=404',
        str(out_dir / "screenshot.png"),
    ]
    errors = [ln for ln in err.splitlines() if not ln.startswith("ts=")]
    assert errors == [
        f"error: playwright run {url}: the page answered HTTP 404 Not Found (final URL {url})"
    ]
    assert (out_dir / "screenshot.png").read_bytes().startswith(b"\x89PNG")


def test_run_page_answering_404_json_is_one_object_with_the_result(
    capsys, server_env, page_server: PageServer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    url = page_server.base + "/missing"
    out_dir = tmp_path / "art"
    code, out, err = run_main(
        capsys, "win", "playwright", "run", "--url", url, "--trace", "--out", str(out_dir), "--json"
    )
    assert code == 1
    data = json.loads(out)
    assert (data["ok"], data["exit_code"], data["status"]) == (False, 1, 404)
    assert "HTTP 404" in data["error"] and "HTTP 404" in err
    assert data["files"] == [str(out_dir / "trace.zip")]
    assert (out_dir / "trace.zip").stat().st_size > 0


def test_run_help_says_what_a_4xx_does(capsys) -> None:
    code, out, _ = run_main(capsys, "win", "playwright", "run", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "1 it failed to load, or its main response was an HTTP error (4xx/5xx" in text


def test_run_json_success_says_ok(
    capsys, server_env, page_server: PageServer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", server_env.ws_path)
    code, out, err = run_main(
        capsys, "win", "playwright", "run", "--url", page_server.base + "/", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] is True and data["status"] == 200


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        pytest.param(["health", "--json"], 3, "nothing listens", id="health-unreachable"),
        pytest.param(
            ["run", "--url", "http://127.0.0.1:1/", "--json"], 3, "nothing listens", id="run"
        ),
        pytest.param(["run", "--json"], 2, "--url is required", id="run-usage"),
        pytest.param(["health", "--json", "--timeout", "0s"], 2, "--timeout", id="health-usage"),
    ],
)
def test_json_failures_print_one_object_and_keep_the_error_line(
    capsys, state_dir, monkeypatch, args, code, says
) -> None:
    secret = "secret-path-for-nothing-1234"
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_PORT", str(free_port()))
    monkeypatch.setenv("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH", secret)
    got, out, err = run_main(capsys, "win", "playwright", *args, "--debug")
    assert got == code
    data = json.loads(out)
    assert (data["ok"], data["exit_code"]) == (False, code)
    assert says in data["error"]
    errors = [ln for ln in err.splitlines() if not ln.startswith("ts=")]
    assert errors == [f"error: {data['error']}"]
    assert secret not in out + err


def test_health_json_without_a_ws_path_is_one_object_exit_2(capsys, server_env) -> None:
    code, out, err = run_main(capsys, "win", "playwright", "health", "--json")
    assert code == 2
    data = json.loads(out)
    assert data["ok"] is False and data["exit_code"] == 2 and "playwright install" in data["error"]
    assert data["port"] == server_env.port
    assert "playwright install" in err
