"""The Playwright server's pure parts: launch-server.js, the install PowerShell, parsers
(recorded outputs in tests/windows/cases/playwright_*.json), ws paths, URLs, versions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from homeops.core.errors import ConfigError, OperationalError, UsageError
from homeops.core.ssh.shell import decode_powershell, encode_powershell
from homeops.windows import playwright as pw

CASES = Path(__file__).parent / "cases"
MISMATCH_TEXT = (
    "BrowserType.connect: WebSocket error: ws://127.0.0.1:9323/s3cret 428 Precondition Required\n"
    "╔════════════════════════════════╗\n"
    "║ Playwright version mismatch:   ║\n"
    "║   - server version: v1.65      ║\n"
    "║   - client version: v1.40      ║\n"
    "╚════════════════════════════════╝\n"
)


def _cases(name: str) -> list[object]:
    return [pytest.param(c, id=c["id"]) for c in json.loads((CASES / name).read_text())]


# -- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("playwright_prerequisites.json"))
def test_parse_prerequisites(case: dict) -> None:
    if "error" in case:
        with pytest.raises(OperationalError, match=case["error"]):
            pw.parse_prerequisites(case["stdout"])
        return
    found = pw.parse_prerequisites(case["stdout"])
    assert found == pw.Prerequisites(**case["want"])
    assert found.missing() == case["missing"]


@pytest.mark.parametrize("case", _cases("playwright_task_state.json"))
def test_parse_task_state(case: dict) -> None:
    if "error" in case:
        with pytest.raises(OperationalError, match=case["error"]):
            pw.parse_task_state(case["stdout"])
        return
    task = pw.parse_task_state(case["stdout"])
    assert (task.state, task.exists, task.running, task.action) == (
        case["state"],
        case["exists"],
        case["running"],
        case["action"],
    )


@pytest.mark.parametrize("step", ["dir", "install", "start"])
def test_parse_step_needs_its_done_marker(step: str) -> None:
    pw.parse_step(f"something\r\n{step}=done\r\n", step)
    with pytest.raises(OperationalError, match=f"playwright install \\({step}\\)"):
        pw.parse_step("Register-ScheduledTask : Access is denied.\r\n", step)


# -- scripts ---------------------------------------------------------------------------------


def test_task_action_is_the_contracts() -> None:
    assert pw.task_arguments(9323) == (
        r"C:\ProgramData\win-automation\playwright\launch-server.js --host=0.0.0.0 --port=9323"
    )


def test_install_script_registers_the_task_as_contracted() -> None:
    script = pw.install_script(9400)
    assert "New-ScheduledTaskAction -Execute 'node.exe' -Argument " in script
    assert pw.task_arguments(9400) in script
    assert "New-ScheduledTaskTrigger -AtStartup" in script
    assert "-UserId 'SYSTEM'" in script and "-RunLevel Highest" in script
    # -Force: a second install replaces the task instead of failing on "already exists".
    assert re.search(
        r"Register-ScheduledTask -TaskName 'WinAutomation-Playwright' .*-Force", script
    )
    assert "ExecutionTimeLimit ([TimeSpan]::Zero)" in script
    assert "icacls.exe $ws /inheritance:r" in script


@pytest.mark.parametrize(
    "script",
    [
        pw.prerequisites_script(),
        pw.make_dir_script(),
        pw.install_script(9323),
        pw.run_install_script(),
        pw.restart_task_script(),
        pw.task_state_script(),
    ],
    ids=["prereq", "dir", "install", "run-install", "restart", "task-state"],
)
def test_scripts_survive_encoding_and_carry_no_double_quotes(script: str) -> None:
    assert decode_powershell(encode_powershell(script)) == script
    # Windows PowerShell 5.1 mangles double quotes in native arguments (node -e ...).
    assert '"' not in script


def test_package_probe_runs_in_node_and_finds_playwright_core(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    modules = Path(__file__).resolve().parents[2] / "node" / "node_modules"
    if not (modules / "playwright-core").is_dir():
        pytest.skip("npm playwright-core is missing (scripts/bootstrap --dev)")
    # The same one-liner the PowerShell check passes to node -e, with NODE_PATH as on a VM
    # whose package is installed elsewhere.
    js = pw._PACKAGE_PROBE_JS
    found = subprocess.run(
        ["node", "-e", js, str(tmp_path)],
        env={"NODE_PATH": str(modules), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    parsed = pw.parse_prerequisites(f"node=v20.0.0\n{found.stdout}prereq=done\n")
    assert parsed.playwright_package == "playwright-core"
    assert parsed.playwright_version == "1.65.1"
    bare = subprocess.run(
        ["node", "-e", js, str(tmp_path)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert bare.stdout.strip() == "playwright=missing"


def test_launch_server_js_is_valid_javascript(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    script = tmp_path / "launch-server.js"
    script.write_text(pw.launch_server_js())
    subprocess.run(["node", "--check", str(script)], check=True, timeout=30)


def test_launch_server_js_refuses_a_missing_ws_path_file(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    script = tmp_path / "launch-server.js"
    script.write_text(pw.launch_server_js())
    done = subprocess.run(
        ["node", str(script), *pw.launch_server_argv(9323)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "cannot read ws_path.txt: ENOENT" in done.stderr


def test_launch_server_argv_passes_the_browser_choice() -> None:
    assert pw.launch_server_argv(
        1234, host="127.0.0.1", executable_path="/usr/bin/chromium", browser_args=("--a", "--b")
    ) == [
        "--host=127.0.0.1",
        "--port=1234",
        "--executable-path=/usr/bin/chromium",
        "--browser-arg=--a",
        "--browser-arg=--b",
    ]
    with pytest.raises(UsageError):
        pw.launch_server_argv(0)


# -- ws path, URLs -----------------------------------------------------------------------------


def test_generate_ws_path_uses_the_random_source() -> None:
    asked: list[int] = []

    def source(n: int) -> bytes:
        asked.append(n)
        return bytes(range(n))

    path = pw.generate_ws_path(source)
    assert asked == [pw.WS_PATH_BYTES]
    assert path == pw.generate_ws_path(lambda n: bytes(range(n)))
    assert len(path) == 32 and re.fullmatch(r"[A-Za-z0-9_-]+", path)
    assert pw.generate_ws_path() != pw.generate_ws_path()
    assert pw.check_ws_path(path) == path


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("short", "at least 8", id="too-short"),
        pytest.param("/ab/cdefghij", "only letters", id="slash-inside"),
        pytest.param("abc def ghij", "only letters", id="space"),
        pytest.param("abcdefgh?x=1", "only letters", id="query"),
    ],
)
def test_check_ws_path_refuses_without_quoting_the_secret(value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        pw.check_ws_path(value)
    assert value not in str(info.value)


def test_ws_url_and_its_shown_form() -> None:
    assert pw.check_ws_path("/abcdefgh12") == "abcdefgh12"
    assert pw.ws_url("127.0.0.1", 9323, "/abcdefgh12") == "ws://127.0.0.1:9323/abcdefgh12"
    assert pw.ws_url("::1", 9323, "abcdefgh12") == "ws://[::1]:9323/abcdefgh12"
    assert pw.shown_ws_url("127.0.0.1", 9323) == "ws://127.0.0.1:9323/***"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        pytest.param("http://127.0.0.1:8080/x", True, id="http"),
        pytest.param("https://example.invalid/", True, id="https"),
        pytest.param("file:///C:/Windows/win.ini", False, id="file"),
        pytest.param("javascript:alert(1)", False, id="javascript"),
        pytest.param("127.0.0.1/x", False, id="no-scheme"),
        pytest.param("http:///x", False, id="no-host"),
        pytest.param("http://[::1]:8080/", True, id="ipv6-port"),
        pytest.param("http://127.0.0.1:99999/", False, id="port-too-big"),
        pytest.param("http://127.0.0.1:0/", False, id="port-0"),
        pytest.param("http://127.0.0.1:http/", False, id="port-word"),
        pytest.param("http://127.0.0.1:37553/\nx", False, id="newline"),
        pytest.param("http://127.0.0.1/\tx", False, id="tab"),
        pytest.param("http://127.0.0.1/\x00", False, id="nul"),
        pytest.param("http://127.0.0.1/\x7f", False, id="del"),
    ],
)
def test_check_url(url: str, ok: bool) -> None:
    if ok:
        assert pw.check_url(url) == url
    else:
        with pytest.raises(UsageError):
            pw.check_url(url)


def test_check_url_says_what_is_wrong() -> None:
    with pytest.raises(UsageError, match="port must be 1-65535, got '99999'"):
        pw.check_url("http://127.0.0.1:99999/")
    # urlsplit drops tabs and line ends silently: the check must see them first.
    with pytest.raises(UsageError, match=r"control character \('\\n' at position 23\)"):
        pw.check_url("http://127.0.0.1:37553/\nx")


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        pytest.param(60.0, 60_000.0, id="plain"),
        pytest.param(0.0001, 1.0, id="never-0-which-means-no-timeout"),
        pytest.param(2**31 / 1000, 2**31 - 1, id="just-over"),
        pytest.param(30 * 86400.0, 2**31 - 1, id="30-days"),
        pytest.param(float(10**12), 2**31 - 1, id="huge"),
    ],
)
def test_timeout_ms_fits_node_timers(seconds: float, ms: float) -> None:
    assert pw.timeout_ms(seconds) == ms
    assert pw.MAX_TIMEOUT_MS == 2**31 - 1


# -- versions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "client", "ok"),
    [
        pytest.param("1.65.0", "1.65.1", True, id="patch-differs"),
        pytest.param("v1.65", "1.65.1", True, id="minor-line"),
        pytest.param("1.66.0-alpha-1", "1.65.1", False, id="newer-minor"),
        pytest.param("1.48.2", "1.65.1", False, id="older-minor"),
        pytest.param("2.65.0", "1.65.0", False, id="major"),
    ],
)
def test_compatible(server: str, client: str, ok: bool) -> None:
    assert pw.compatible(pw.parse_version(server), pw.parse_version(client)) is ok


def test_parse_version_refuses_garbage() -> None:
    assert str(pw.parse_version("v1.65")) == "1.65.0"
    assert pw.parse_version("1.65.1").minor_line == "1.65"
    with pytest.raises(OperationalError, match="not a Playwright version"):
        pw.parse_version("latest")


def test_parse_version_mismatch_names_both_versions() -> None:
    err = pw.parse_version_mismatch(MISMATCH_TEXT)
    assert err is not None
    assert (err.server, err.client) == ("1.65", "1.40")
    assert "s3cret" not in str(err)
    assert "1.65" in str(err) and "1.40" in str(err)
    assert pw.parse_version_mismatch("WebSocket error: 400 Bad Request") is None
    assert pw.parse_version_mismatch("connect ECONNREFUSED 127.0.0.1:9323") is None
