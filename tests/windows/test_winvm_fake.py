"""The Windows VM emulator (tests/fakes/winvm.py): its interpreter in-process, and the whole
fake through the real seam (asyncssh SshPool + SshRunner against the emulator's sshd)."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from homeops.core.errors import HomeopsTimeout
from homeops.core.runner import SshRunner
from homeops.core.ssh import SshPool
from homeops.core.ssh.shell import encode_powershell, powershell_script
from homeops.windows import powershell as ps
from homeops.windows import vm as vmprobe
from homeops.windows.settings import WindowsSection
from homeops.windows.target import vm_target
from tests.fakes import winvm as emulator
from tests.fixtures.sshd import remote_pids, wait_gone
from tests.fixtures.winvm import WinVm

# -- in-process: the interpreter and the state -------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> emulator.StateStore:
    store = emulator.StateStore(tmp_path / "state")
    store.init()
    return store


def answer(store: emulator.StateStore, script: str) -> tuple[emulator.Reply, str]:
    return emulator.powershell(script, store, "127.0.0.1 1 127.0.0.1 2", ())


def test_encoded_command_round_trips_and_other_lines_are_cmd() -> None:
    script = "Write-Output 'é ü'\n"
    assert emulator.decode_command(encode_powershell(script)) == script
    assert emulator.decode_command("echo hi") is None
    assert emulator.decode_command("powershell -Command 'x'") is None


@pytest.mark.parametrize(
    ("windows", "local"),
    [
        pytest.param(r"C:\A\B.txt", "C:/A/B.txt", id="backslash"),
        pytest.param("c:/A/B", "C:/A/B", id="sftp-form-lower-drive"),
        pytest.param("C:\\", "C:", id="drive-root"),
    ],
)
def test_windows_paths_map_under_the_drive_root(windows: str, local: str) -> None:
    assert emulator.windows_path_to_local(Path("/r"), windows) == Path("/r") / local


def test_windows_path_refuses_relative_and_dotdot() -> None:
    for bad in ("A\\B", r"C:\A\..\..\etc"):
        with pytest.raises(ValueError, match=r"Windows path|'\.\.'"):
            emulator.windows_path_to_local(Path("/r"), bad)


def test_interpreter_prints_writes_stderr_and_exits(store: emulator.StateStore) -> None:
    script = "Write-Output 'a b'\n'it''s'\n[Console]::Error.WriteLine('oops')\nexit 4\n'never'"
    reply, how = answer(store, script)
    assert (reply.stdout, reply.stderr, reply.exit_code) == ("a b\r\nit's\r\n", "oops\r\n", 4)
    assert how == "interpreter"


def test_unknown_cmdlet_is_reported_like_powershell(store: emulator.StateStore) -> None:
    reply, _ = answer(store, "'before'\nFrob-Widget -Size 3")
    assert reply.exit_code == 1
    assert reply.stdout == "before\r\n"
    assert reply.stderr.startswith(
        "Frob-Widget : The term 'Frob-Widget' is not recognized as the name of a cmdlet"
    )
    assert "At line:2 char:1" in reply.stderr


def test_quoted_dash_word_is_an_argument_not_a_parameter(store: emulator.StateStore) -> None:
    # PowerShell binds '-Seconds' (quoted) positionally: Start-Sleep cannot take it.
    reply, _ = answer(store, powershell_script(["Start-Sleep", "-Seconds", "0"]))
    assert reply.exit_code == 1
    assert "Start-Sleep :" in reply.stderr
    reply, _ = answer(store, powershell_script(["Start-Sleep", "0"]))
    assert reply.exit_code == 0


def test_call_operator_runs_a_plain_program_and_passes_its_exit(
    store: emulator.StateStore, capfd: pytest.CaptureFixture[str]
) -> None:
    reply, _ = answer(store, powershell_script(["sh", "-c", "echo out; exit 7"]))
    assert reply.exit_code == 7
    assert capfd.readouterr().out == "out\n"
    reply, _ = answer(store, powershell_script(["no-such-program-xyz"]))
    assert reply.exit_code == 1
    assert "'no-such-program-xyz' is not recognized" in reply.stderr


def test_scripted_answer_wins_and_runs_out(store: emulator.StateStore) -> None:
    with store.transaction() as state:
        state["answers"].append(
            {"pattern": r"LogonUI", "stdout": "odd\r\n", "stderr": "", "exit": 9, "times": 1}
        )
    first, how = answer(store, ps.desktop_locked_script())
    assert (first.stdout, first.exit_code, how) == ("odd\r\n", 9, "answer")
    second, how = answer(store, ps.desktop_locked_script())
    assert (second.stdout, how) == ("unlocked\r\n", "interpreter")


def test_locked_state_shows_logonui(store: emulator.StateStore) -> None:
    with store.transaction() as state:
        state["locked"] = True
    reply, _ = answer(store, ps.desktop_locked_script())
    assert ps.parse_desktop_locked(reply.stdout) is True
    reply, _ = answer(store, ps.process_state_script(("LogonUI", "server")))
    assert ps.parse_states(reply.stdout, ("LogonUI", "server"), ("running", "missing")) == {
        "LogonUI": "running",
        "server": "missing",
    }


def test_get_process_fails_without_a_match(store: emulator.StateStore) -> None:
    reply, _ = answer(store, "Get-Process -Name server")
    assert reply.exit_code == 1
    assert 'Cannot find a process with the name "server"' in reply.stderr
    reply, _ = answer(store, "Get-Process -Name server -ErrorAction SilentlyContinue")
    assert (reply.stderr, reply.exit_code) == ("", 1)


def test_firewall_rule_is_created_then_enabled_and_queried(store: emulator.StateStore) -> None:
    rule = ps.FirewallRule("Aloha 'server' 7887", 7887)
    reply, _ = answer(store, ps.firewall_rule_script(rule))
    assert ps.parse_firewall_rule(reply.stdout) == "created"
    with store.transaction() as state:
        state["firewall"][rule.name]["enabled"] = False
    names = (rule.name, "Other")
    reply, _ = answer(store, ps.firewall_state_script(names))
    assert ps.parse_states(reply.stdout, names, ("enabled", "disabled", "missing")) == {
        rule.name: "disabled",
        "Other": "missing",
    }
    reply, _ = answer(store, ps.firewall_rule_script(rule))
    assert ps.parse_firewall_rule(reply.stdout) == "enabled"
    assert store.read()["firewall"] == {
        rule.name: {"port": 7887, "enabled": True, "direction": "Inbound"}
    }


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_listening_looks_at_real_sockets(store: emulator.StateStore, listener: int) -> None:
    reply, _ = answer(store, ps.port_listening_script(listener))
    assert ps.parse_port_listening(reply.stdout) is True
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, never listening
        reply, _ = answer(store, ps.port_listening_script(closed))
    assert ps.parse_port_listening(reply.stdout) is False


# In-process the emulator drops the detached child's Popen (over sshd the login shell exits).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_start_scheduled_task_needs_the_task(store: emulator.StateStore) -> None:
    reply, _ = answer(store, "Start-ScheduledTask -TaskName 'Nope'")
    assert reply.exit_code == 1
    assert reply.stderr.startswith("Start-ScheduledTask : The system cannot find the file")
    with store.transaction() as state:
        state["tasks"]["MyTask"] = {"state": "Ready", "argv": ["sleep", "0"], "runs": 0}
    reply, _ = answer(store, "Start-ScheduledTask -TaskName 'mytask'\n'start=done'")
    assert (reply.stdout, reply.exit_code) == ("start=done\r\n", 0)
    task = store.read()["tasks"]["MyTask"]
    assert (task["state"], task["runs"]) == ("Running", 1)
    assert task["pid"] in [e["pid"] for e in store.read()["started"]]
    # In-process the emulator is not the short-lived login shell it is over sshd: reap here.
    os.waitpid(task["pid"], 0)


def test_test_path_and_get_content_tail(store: emulator.StateStore) -> None:
    local = emulator.windows_path_to_local(store.root, r"C:\Logs\client.log")
    local.parent.mkdir(parents=True)
    local.write_text("one\ntwo\nthree\n")
    reply, _ = answer(
        store,
        "Test-Path 'C:\\Logs\\client.log'\nTest-Path 'C:\\Logs\\x'\n"
        "Get-Content -Path 'C:\\Logs\\client.log' -Tail 2",
    )
    assert reply.stdout == "True\r\nFalse\r\ntwo\r\nthree\r\n"
    reply, _ = answer(store, "Get-Content 'C:\\Logs\\missing.log'")
    assert reply.exit_code == 1
    assert "Cannot find path 'C:\\Logs\\missing.log'" in reply.stderr


def test_extension_handlers_answer_unknown_scripts_and_keep_state(
    store: emulator.StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def register(match: re.Match[str], script: str, vm: emulator.Vm) -> tuple[str, str, int]:
        vm.state.setdefault("widgets", []).append(match.group(1))
        seen.append(str(vm.local_path("C:\\W")))
        return "registered\r\n", "", 0

    module = SimpleNamespace(
        __name__="tests.fakes.winvm_widgets",
        HANDLERS=[(re.compile(r"Register-Widget -Name '(\w+)'"), register)],
    )
    monkeypatch.setattr(emulator, "_extensions", lambda site: [module])
    reply, how = answer(store, "Register-Widget -Name 'blue'")
    assert (reply.stdout, how) == ("registered\r\n", "tests.fakes.winvm_widgets:register")
    assert store.read()["widgets"] == ["blue"]
    assert seen == [str(store.root / "C:" / "W")]
    reply, _ = answer(store, "Unregister-Widget")
    assert "'Unregister-Widget' is not recognized" in reply.stderr


# -- through the real seam: sshd + emulator --------------------------------------------------


@pytest.fixture
async def runner(winvm: WinVm) -> AsyncIterator[SshRunner]:
    section = WindowsSection(**winvm.windows_settings()["windows"])
    async with SshPool() as pool:
        yield SshRunner(pool, vm_target(section))


async def test_locked_and_unlocked(winvm: WinVm, runner: SshRunner) -> None:
    assert await vmprobe.desktop_locked(runner) is False
    winvm.set_locked(True)
    assert await vmprobe.desktop_locked(runner) is True
    with pytest.raises(vmprobe.DesktopLocked, match="state=blocked"):
        await vmprobe.require_unlocked(runner, "aloha run")
    assert winvm.scripts()[-1] == ps.desktop_locked_script()


async def test_firewall_rule_created_then_enabled(winvm: WinVm, runner: SshRunner) -> None:
    rule = ps.FirewallRule("Aloha-7887", 7887)
    first = await vmprobe.run_script(runner, ps.firewall_rule_script(rule))
    second = await vmprobe.run_script(runner, ps.firewall_rule_script(rule))
    assert [ps.parse_firewall_rule(d.stdout_text) for d in (first, second)] == [
        "created",
        "enabled",
    ]
    assert winvm.firewall_rules() == {
        "Aloha-7887": {"port": 7887, "enabled": True, "direction": "Inbound"}
    }


async def test_port_listening_follows_a_real_socket(winvm: WinVm, runner: SshRunner) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    assert await vmprobe.port_listening(runner, port) is True
    sock.close()
    assert await vmprobe.port_listening(runner, port) is False


async def test_start_process_starts_the_mapped_program(winvm: WinVm, runner: SshRunner) -> None:
    winvm.map_program(r"C:\Aloha\server.exe", ["sleep", "41.25"])
    names = ("server",)
    query = ps.process_state_script(names)
    done = await vmprobe.run_script(runner, query)
    assert ps.parse_states(done.stdout_text, names, ("running", "missing")) == {"server": "missing"}
    await vmprobe.run_script(runner, r"Start-Process -FilePath 'C:\Aloha\server.exe'")
    pid = winvm.wait_started("server")
    assert pid in remote_pids("sleep 41.25")
    done = await vmprobe.run_script(runner, query)
    assert ps.parse_states(done.stdout_text, names, ("running", "missing")) == {"server": "running"}
    # Detached: the SSH command ended, the program runs on; killed, Get-Process loses it.
    assert winvm.kill_started("server") == [pid]
    assert await wait_gone("sleep 41.25", 5) == []
    done = await vmprobe.run_script(runner, query)
    assert ps.parse_states(done.stdout_text, names, ("running", "missing")) == {"server": "missing"}
    unknown = await vmprobe.run_script(
        runner, r"Start-Process -FilePath 'C:\Nope.exe'", check=False
    )
    assert unknown.exit_status == 1
    assert "cannot find the file specified" in unknown.stderr_text


async def test_timeout_kills_a_long_start_sleep(winvm: WinVm, runner: SshRunner) -> None:
    start = time.monotonic()
    with pytest.raises(HomeopsTimeout, match="remote command killed"):
        await runner.run(["Start-Sleep", "37.75"], timeout=1)
    assert time.monotonic() - start < 5
    assert await wait_gone("sleep 37.75", 5) == []
    calls = winvm.calls()
    sleep_call = next(c for c in calls if "37.75" in (c["script"] or ""))
    kill_call = next(c for c in calls if c.get("handler") == "kill_script")
    assert sleep_call["exit"] is None  # killed: it never wrote its end record
    assert kill_call["exit"] == 0
    assert kill_call["stdout"].strip() == str(sleep_call["pid"])
    assert winvm.running() == []


async def test_call_log_records_commands_and_decoded_scripts(
    winvm: WinVm, runner: SshRunner
) -> None:
    await runner.run(["Write-Output", "hello"], timeout=10)
    await runner.run_raw("echo plain", timeout=10)
    first, second = winvm.calls()
    assert first["kind"] == "powershell"
    assert first["script"] == powershell_script(["Write-Output", "hello"])
    assert first["command"] == encode_powershell(first["script"])
    assert (first["exit"], first["stdout"]) == (0, "hello\r\n")
    assert second["kind"] == "cmd"
    assert (second["command"], second["script"], second["exit"]) == ("echo plain", None, 0)
    assert winvm.scripts() == [first["script"]]
    assert all(c["conn"].split()[2:] == ["127.0.0.1", str(winvm.port)] for c in (first, second))


async def test_cmd_passthrough_exit_stderr_and_stdin(winvm: WinVm, runner: SshRunner) -> None:
    done = await runner.run_raw("echo hi", timeout=10)
    assert (done.stdout_text, done.exit_status) == ("hi\n", 0)
    failed = await runner.run_raw("echo bad >&2; exit 3", timeout=10, check=False)
    assert (failed.stdout_text, failed.stderr_text, failed.exit_status) == ("", "bad\n", 3)
    piped = await runner.run_raw("tr a-z A-Z", timeout=10, stdin=b"shout")
    assert piped.stdout_text == "SHOUT"


async def test_sftp_lands_on_the_emulated_drive(
    winvm: WinVm, runner: SshRunner, tmp_path: Path
) -> None:
    local = tmp_path / "x.log"
    local.write_text("a\nb\nc\n")
    await runner.pool.put(runner.target, local, "C:/ProgramData/x.log", timeout=10)
    assert winvm.windows_path_to_local(r"C:\ProgramData\x.log").read_text() == "a\nb\nc\n"
    done = await vmprobe.run_script(runner, r"Get-Content -Path 'C:\ProgramData\x.log' -Tail 1")
    assert done.stdout_text == "c\r\n"


def test_windows_settings_point_at_the_fake(winvm: WinVm) -> None:
    config = winvm.windows_settings(ssh_user="other", aloha={"server_url": "http://127.0.0.1:1"})
    section = WindowsSection(**config["windows"])
    assert (section.ssh_host, section.ssh_port, section.ssh_user) == (
        "127.0.0.1",
        winvm.port,
        "other",
    )
    assert section.known_hosts == winvm.known_hosts
    assert config["aloha"] == {"server_url": "http://127.0.0.1:1"}
