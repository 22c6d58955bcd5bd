"""``playwright health`` and ``run`` against a REAL Playwright server (launch-server.js, npm
playwright-core, Debian chromium) on loopback; ``install`` against the scripted runner.

The server is session-scoped (tests/fixtures/playwright_server.py): starting Chromium once
keeps this file fast.
"""

from __future__ import annotations

import asyncio
import os
import stat
import zipfile
from pathlib import Path

import pytest
from pydantic import SecretStr

from homeops.core.errors import ConfigError, ExitCode, HomeopsTimeout, UsageError
from homeops.core.ssh.shell import encode_powershell
from homeops.windows import playwright as pw
from homeops.windows import playwright_flow as flow
from homeops.windows.settings import PlaywrightSection
from tests.fakes.runner import FakeRunner
from tests.fixtures.common import free_port
from tests.fixtures.playwright_server import PAGE_TITLE, PageServer, PlaywrightServer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def section(server: PlaywrightServer, **kw: object) -> PlaywrightSection:
    return PlaywrightSection.model_validate({"host": server.host, "port": server.port, **kw})


# -- health ----------------------------------------------------------------------------------


def test_health_connects_for_real(playwright_server: PlaywrightServer) -> None:
    report = asyncio.run(flow.health(section(playwright_server), playwright_server.ws_path))
    assert report.port == playwright_server.port
    # Chromium answers with its own version over the WebSocket: the connect really happened.
    assert report.browser_version[0].isdigit()
    assert report.client_version == flow.client_version()


def test_health_wrong_ws_path_is_unavailable_and_never_shows_it(
    playwright_server: PlaywrightServer, log_stream
) -> None:
    wrong = "not-the-right-path-123456"
    with pytest.raises(flow.PlaywrightUnavailable) as info:
        asyncio.run(flow.health(section(playwright_server), wrong))
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert "wrong ws path?" in str(info.value)
    assert wrong not in str(info.value)
    assert wrong not in log_stream.getvalue()


def test_health_nothing_listening_is_exit_3() -> None:
    idle = PlaywrightSection(host="127.0.0.1", port=free_port())
    with pytest.raises(flow.PlaywrightUnavailable, match="nothing listens") as info:
        asyncio.run(flow.health(idle, "some-secret-path-xyz", timeout=5))
    assert info.value.exit_code == ExitCode.UNAVAILABLE


def test_health_version_mismatch_names_both_versions(playwright_server: PlaywrightServer) -> None:
    # The real server compares the client's User-Agent; an old client's one gets the real 428.
    old = {"User-Agent": "Playwright/1.40.0 (x64; debian 12) python/3.11"}
    with pytest.raises(pw.PlaywrightVersionMismatch) as info:
        asyncio.run(flow.health(section(playwright_server), playwright_server.ws_path, headers=old))
    assert (info.value.server, info.value.client) == ("1.65", "1.40")
    assert "runs 1.65" in str(info.value) and "client is 1.40" in str(info.value)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert playwright_server.ws_path not in str(info.value)


# -- run -------------------------------------------------------------------------------------


def test_run_writes_a_real_png_and_trace(
    playwright_server: PlaywrightServer, page_server: PageServer, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "playwright"
    result = asyncio.run(
        flow.run(
            section(playwright_server),
            playwright_server.ws_path,
            url=page_server.base + "/go",
            out_dir=out,
            screenshot=True,
            trace=True,
            timeout=30,
        )
    )
    assert result.title == PAGE_TITLE
    assert result.final_url == page_server.base + "/"  # the redirect was followed
    assert result.status == 200
    assert result.files == (out / "screenshot.png", out / "trace.zip")
    assert (out / "screenshot.png").read_bytes()[:8] == PNG_MAGIC
    with zipfile.ZipFile(out / "trace.zip") as archive:
        assert archive.testzip() is None
        assert any(name.endswith(".trace") for name in archive.namelist())


def test_run_without_files_only_opens_the_page(
    playwright_server: PlaywrightServer, page_server: PageServer, tmp_path: Path
) -> None:
    result = asyncio.run(
        flow.run(
            section(playwright_server),
            playwright_server.ws_path,
            url=page_server.base + "/",
            out_dir=tmp_path / "o",
            screenshot=False,
        )
    )
    assert (result.title, result.files) == (PAGE_TITLE, ())
    assert not (tmp_path / "o").exists()


def test_run_page_that_never_loads_times_out_exit_4(
    playwright_server: PlaywrightServer, page_server: PageServer, tmp_path: Path
) -> None:
    with pytest.raises(HomeopsTimeout) as info:
        asyncio.run(
            flow.run(
                section(playwright_server),
                playwright_server.ws_path,
                url=page_server.base + "/hang",
                out_dir=tmp_path,
                timeout=2,
            )
        )
    assert info.value.exit_code == ExitCode.TIMEOUT


def test_run_page_answering_404_fails_exit_1_after_writing_its_files(
    playwright_server: PlaywrightServer, page_server: PageServer, tmp_path: Path
) -> None:
    url = page_server.base + "/missing"
    with pytest.raises(flow.PageLoadFailed) as info:
        asyncio.run(
            flow.run(
                section(playwright_server), playwright_server.ws_path, url=url, out_dir=tmp_path
            )
        )
    assert info.value.exit_code == ExitCode.FAILURE
    assert "HTTP 404 Not Found" in str(info.value)
    result = info.value.result
    assert (result.status, result.loaded, result.files) == (
        404,
        False,
        (tmp_path / "screenshot.png",),
    )
    assert (tmp_path / "screenshot.png").read_bytes().startswith(PNG_MAGIC)
    assert info.value.retryable is False  # the same 404 again


@pytest.mark.parametrize(
    ("status", "loaded", "retryable"),
    [
        pytest.param(None, True, None, id="no-response"),
        pytest.param(200, True, None, id="ok"),
        pytest.param(304, True, None, id="not-modified"),
        pytest.param(404, False, False, id="not-found"),
        pytest.param(429, False, True, id="too-many"),
        pytest.param(503, False, True, id="unavailable"),
    ],
)
def test_page_load_failed_only_for_http_errors(
    status: int | None, loaded: bool, retryable: bool | None
) -> None:
    result = flow.RunResult("http://h/", "http://h/", "", status, None, None, 1.0, "Why")
    assert result.loaded is loaded
    if retryable is not None:
        assert flow.PageLoadFailed(result).retryable is retryable


def test_run_refuses_file_urls_before_connecting(tmp_path: Path) -> None:
    idle = PlaywrightSection(host="127.0.0.1", port=free_port())
    with pytest.raises(UsageError, match="http:// or https://"):
        asyncio.run(flow.run(idle, "x" * 20, url="file:///C:/Windows/win.ini", out_dir=tmp_path))


def test_ws_path_never_logged_with_debug(
    playwright_server: PlaywrightServer, page_server: PageServer, tmp_path: Path, log_stream
) -> None:
    secret = playwright_server.ws_path
    sec = section(playwright_server)
    asyncio.run(flow.health(sec, secret))
    asyncio.run(flow.run(sec, secret, url=page_server.base + "/", out_dir=tmp_path))
    with pytest.raises(flow.PlaywrightUnavailable) as info:
        asyncio.run(flow.health(PlaywrightSection(host="127.0.0.1", port=free_port()), secret))
    logs = log_stream.getvalue()
    assert "playwright server healthy" in logs and "page opened" in logs  # debug was on
    assert secret not in logs
    assert secret not in str(info.value)


# -- ws path lookup --------------------------------------------------------------------------


def test_resolve_ws_path_prefers_settings_then_local_file(tmp_path: Path) -> None:
    local = flow.local_ws_path_file(tmp_path)
    with pytest.raises(ConfigError, match="playwright install") as info:
        flow.resolve_ws_path(PlaywrightSection(), tmp_path)
    assert info.value.exit_code == ExitCode.USAGE
    flow.write_private(local, "stored-path-0123456789\n")
    assert flow.resolve_ws_path(PlaywrightSection(), tmp_path) == "stored-path-0123456789"
    configured = PlaywrightSection(ws_path=SecretStr("/from-settings-abcdef"))
    assert flow.resolve_ws_path(configured, tmp_path) == "from-settings-abcdef"
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    assert stat.S_IMODE(local.parent.stat().st_mode) == 0o700


# -- install (scripted runner: the VM emulator answers these for real in test_playwright_vm) --

PREREQ_OK = (
    "node=v20.11.1\r\nnode_path=C:\\Program Files\\nodejs\\node.exe\r\n"
    "playwright_package=playwright\r\nplaywright=1.65.0\r\nprereq=done\r\n"
)


def scripted(prereq: str = PREREQ_OK) -> FakeRunner:
    runner = FakeRunner(host="administrator@localhost")
    runner.expect_raw(encode_powershell(pw.prerequisites_script()), stdout=prereq)
    runner.expect_raw(encode_powershell(pw.make_dir_script()), stdout="dir=done\r\n")
    runner.expect_raw(encode_powershell(pw.run_install_script()), stdout="install=done\r\n")
    runner.expect_raw(encode_powershell(pw.restart_task_script()), stdout="start=done\r\n")
    runner.expect_raw(
        encode_powershell(pw.task_state_script()),
        stdout="task=Running\r\naction=node.exe " + pw.task_arguments(9323) + "\r\ntaskquery=done",
    )
    return runner


class Uploads:
    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    async def __call__(self, local: Path, remote: str) -> None:
        self.files[remote] = await asyncio.to_thread(local.read_text)


def test_install_generates_stores_and_uploads_the_ws_path(tmp_path: Path, log_stream) -> None:
    runner, uploads = scripted(), Uploads()
    result = asyncio.run(
        flow.install(
            runner,
            uploads,
            PlaywrightSection(),
            state_dir=tmp_path,
            client="1.65.1",
            token_bytes=lambda n: b"\x01" * n,
            listen_wait_s=0.3,
        )
    )
    runner.assert_done()
    # Started, but nothing listens on 9323 here: said, after a bounded wait.
    assert result.listening is False
    expected = pw.generate_ws_path(lambda n: b"\x01" * n)
    assert uploads.files[pw.WS_PATH_PATH].strip() == expected
    assert uploads.files[pw.LAUNCH_SERVER_PATH] == pw.launch_server_js()
    assert "--port=9323" in uploads.files[pw.INSTALL_SCRIPT_PATH]
    local = flow.local_ws_path_file(tmp_path)
    assert result.ws_path_generated and result.ws_path_file == local
    assert local.read_text().strip() == expected
    assert stat.S_IMODE(os.stat(local).st_mode) == 0o600
    assert result.task.running
    assert expected not in log_stream.getvalue()
    # Nothing sent to the VM as a command carries the secret (only SFTP does).
    assert all(expected not in pw_decoded(c.argv[0]) for c in runner.calls)


def pw_decoded(command: str) -> str:
    from homeops.core.ssh.shell import decode_powershell

    return decode_powershell(command)


def test_install_again_keeps_the_stored_ws_path(tmp_path: Path) -> None:
    flow.write_private(flow.local_ws_path_file(tmp_path), "kept-path-abcdefgh\n")
    uploads = Uploads()
    result = asyncio.run(
        flow.install(
            scripted(),
            uploads,
            PlaywrightSection(),
            state_dir=tmp_path,
            client="1.65.1",
            listen_wait_s=0.1,
        )
    )
    assert not result.ws_path_generated
    assert uploads.files[pw.WS_PATH_PATH].strip() == "kept-path-abcdefgh"


@pytest.mark.parametrize(
    ("prereq", "named"),
    [
        pytest.param("node=missing\r\nplaywright=missing\r\nprereq=done", "Node.js", id="no-node"),
        pytest.param(
            "node=v20.1.0\r\nplaywright=missing\r\nprereq=done",
            "the playwright npm package",
            id="no-playwright",
        ),
    ],
)
def test_install_missing_prerequisite_is_exit_3(tmp_path: Path, prereq: str, named: str) -> None:
    runner = FakeRunner()
    runner.expect_raw(encode_powershell(pw.prerequisites_script()), stdout=prereq)
    uploads = Uploads()
    with pytest.raises(flow.PlaywrightMissing, match=named) as info:
        asyncio.run(
            flow.install(runner, uploads, PlaywrightSection(), state_dir=tmp_path, client="1.65.1")
        )
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert uploads.files == {}
    assert not flow.local_ws_path_file(tmp_path).exists()


def test_install_version_mismatch_names_both(tmp_path: Path) -> None:
    runner = FakeRunner()
    stdout = PREREQ_OK.replace("playwright=1.65.0", "playwright=1.48.2")
    runner.expect_raw(encode_powershell(pw.prerequisites_script()), stdout=stdout)
    with pytest.raises(pw.PlaywrightVersionMismatch, match=r"runs 1\.48\.2.*client is 1\.65\.1"):
        asyncio.run(
            flow.install(
                runner, Uploads(), PlaywrightSection(), state_dir=tmp_path, client="1.65.1"
            )
        )


# -- install for real: the emulator's handlers start the uploaded launch-server.js -----------


class EmulatedVm:
    """A RawRunner + Uploader that answers as tests/fakes/winvm_playwright.py does, in-process
    (until the sshd-based VM emulator wires those handlers behind real SSH)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state: dict[str, object] = {}
        self.scripts: list[str] = []

    async def run(self, argv, *, timeout, stdin=None, check=False):  # pragma: no cover
        raise AssertionError(f"install sends PowerShell only, got argv {argv}")

    async def run_raw(self, command, *, timeout, stdin=None, check=False):
        from homeops.core.runner import CommandResult
        from homeops.core.ssh.shell import decode_powershell
        from tests.fakes import winvm_playwright as vm

        script = decode_powershell(command)
        self.scripts.append(script)
        reply = await asyncio.to_thread(vm.handle, script, self.state, self.root)
        assert reply is not None, f"no handler for {script!r}"
        done = CommandResult(
            (command,), reply.exit_code, reply.stdout.encode(), reply.stderr.encode(), 0.0, "vm"
        )
        return done.check() if check else done

    async def upload(self, local: Path, remote: str) -> None:
        from tests.fakes.winvm_playwright import local_path

        def copy() -> None:
            target = local_path(self.root, remote)
            assert target.parent.is_dir(), "uploaded before the directory was made"
            target.write_bytes(local.read_bytes())

        await asyncio.to_thread(copy)


@pytest.fixture
def emulated_vm(tmp_path: Path):
    from tests.fakes import winvm_playwright as vm
    from tests.fixtures.playwright_server import missing_prerequisite

    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    emulated = EmulatedVm(tmp_path / "vm")
    yield emulated
    vm.stop_server(emulated.state)


def test_install_then_health_against_the_started_server(
    emulated_vm: EmulatedVm, tmp_path: Path, page_server: PageServer, log_stream
) -> None:
    sec = PlaywrightSection(host="127.0.0.1", port=free_port())
    state_dir = tmp_path / "state"
    result = asyncio.run(flow.install(emulated_vm, emulated_vm.upload, sec, state_dir=state_dir))
    assert result.ws_path_generated and result.task.running and result.listening is True
    assert result.task.action == "node.exe " + pw.task_arguments(sec.port)
    ws_path = flow.resolve_ws_path(sec, state_dir)  # found in the 0600 file install wrote
    report = asyncio.run(flow.health(sec, ws_path))
    assert report.browser_version[0].isdigit()
    shot = asyncio.run(
        flow.run(sec, ws_path, url=page_server.base + "/", out_dir=tmp_path / "o", timeout=30)
    )
    assert shot.title == PAGE_TITLE
    # Installing again replaces the task and restarts the server with the same secret.
    again = asyncio.run(flow.install(emulated_vm, emulated_vm.upload, sec, state_dir=state_dir))
    assert not again.ws_path_generated and again.task.running
    assert emulated_vm.state["playwright"]["task"]["registered"] == 2
    asyncio.run(flow.health(sec, ws_path))
    assert ws_path not in log_stream.getvalue()
    assert all(ws_path not in script for script in emulated_vm.scripts)


def test_install_node_missing_on_the_emulated_vm(emulated_vm: EmulatedVm, tmp_path: Path) -> None:
    from tests.fakes.winvm_playwright import pw_state

    pw_state(emulated_vm.state)["node"] = None
    with pytest.raises(flow.PlaywrightMissing, match=r"Node\.js"):
        asyncio.run(
            flow.install(
                emulated_vm, emulated_vm.upload, PlaywrightSection(), state_dir=tmp_path / "s"
            )
        )
    assert emulated_vm.scripts == [pw.prerequisites_script()]
