r"""``win-automation windows exec`` end to end against the Windows VM emulator (issue 7 item 2).

The VM is tests/fakes/winvm.py behind a real loopback sshd: a PowerShell ``-EncodedCommand``
is decoded and answered by its interpreter, any other command line runs under ``/bin/sh``
(its stand-in for cmd.exe). Its call log shows exactly what reached the VM. ``windows exec``
talks to it through OpenSSH's ``ssh`` with a shared master when ``ssh`` is on PATH; the
master's login runs ``exit 0`` once, which is not the user's command (``user_calls``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from homeops.core import logging as hlog
from homeops.core.errors import ExitCode
from tests.fixtures.common import free_port
from tests.fixtures.winvm import WinVm
from tests.windows.test_exec import run_win

WIN_AUTOMATION = Path(sys.executable).with_name("win-automation")
ENCODED_PREFIX = "powershell -NoProfile -NonInteractive -EncodedCommand "
# The OneShotSsh master's own login command: it cannot run the user's work.
MASTER_LOGIN = "exit 0"
# Bounds that turn a hang into a failure (not speed assertions: those live in bench/).
CLI_DEADLINE_S = 60.0
GONE_DEADLINE_S = 5.0
HATCHET_TOKEN = "hatchet-token-exec-do-not-log-0123456789"
WS_PATH = "ws-path-exec-do-not-log-0123456789"


def write_config(tmp_path: Path, winvm: WinVm, **overrides: Any) -> str:
    path = tmp_path / "win.json"
    path.write_text(json.dumps(winvm.windows_settings(**overrides)))
    return str(path)


def exec_vm(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> tuple[int, str, str]:
    return run_win(capsys, "--config", config, "windows", "exec", *args)


def user_calls(winvm: WinVm) -> list[dict[str, Any]]:
    """The calls that carried a command of ours (not the master's login)."""
    return [c for c in winvm.calls() if c["command"] != MASTER_LOGIN]


def error_lines(err: str) -> list[str]:
    """Stderr without the logfmt log lines (``ts=…``): what the user is told."""
    return [line for line in err.splitlines() if not line.startswith("ts=")]


def login_user_pids(marker: str, uid: int) -> list[int]:
    """Pids of processes owned by ``uid`` whose command line holds ``marker`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (entry / "status").read_text()
        except OSError:
            continue
        uids = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:")), "")
        state = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("State:")), "")
        if marker in cmdline and uids == str(uid) and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


# -- 1. PowerShell -------------------------------------------------------------------------


def test_powershell_goes_encoded_and_its_output_streams(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    config = write_config(tmp_path, winvm)
    script = "Write-Output 'it''s \"here\"'\n[Console]::Error.WriteLine('oops')\nexit 0"
    code, out, err = exec_vm(capsys, config, "--powershell", "--", script)
    assert (code, out) == (0, 'it\'s "here"\n'), err
    assert error_lines(err) == ["oops"]
    [call] = user_calls(winvm)
    assert call["kind"] == "powershell"
    assert call["command"].startswith(ENCODED_PREFIX)
    assert call["script"] == script
    # The VM printed Windows line ends; only our side made them Unix ones.
    assert (call["stdout"], call["stderr"], call["exit"]) == ('it\'s "here"\r\n', "oops\r\n", 0)

    code, out, _ = exec_vm(capsys, config, "--raw", "--powershell", "--", script)
    assert (code, out) == (0, 'it\'s "here"\r\n')
    assert [c["script"] for c in user_calls(winvm)] == [script, script]


def test_powershell_json_reports_code_output_and_duration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    config = write_config(tmp_path, winvm)
    script = "'line one'\n'line two'\n[Console]::Error.WriteLine('warned')\nexit 5"
    code, out, _ = exec_vm(capsys, config, "--json", "--powershell", "--", script)
    assert code == ExitCode.FAILURE
    data = json.loads(out)
    assert data["state"] == "failed"
    assert data["exit_code"] == 5
    assert data["stdout"] == "line one\nline two\n"
    assert data["stderr"] == "warned\n"
    assert isinstance(data["duration_ms"], float)
    assert data["duration_ms"] > 0
    assert data["host"] == f"{winvm.user}@{winvm.host}:{winvm.port}"
    [call] = user_calls(winvm)
    assert (call["script"], call["exit"]) == (script, 5)

    code, out, _ = exec_vm(capsys, config, "--json", "--raw", "--powershell", "--", "'x'")
    assert code == 0
    assert json.loads(out)["stdout"] == "x\r\n"


# -- 2. the default shell ------------------------------------------------------------------


def test_cmd_line_reaches_the_default_shell_and_failure_is_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    config = write_config(tmp_path, winvm)
    words = ["printf", "'a\\r\\nb\\n';", "echo", "e", ">&2;", "exit", "3"]
    line = " ".join(words)  # the words after -- joined as ssh(1) joins them
    code, out, err = exec_vm(capsys, config, "--", *words)
    assert (code, out) == (ExitCode.FAILURE, "a\nb\n")
    assert error_lines(err) == ["e", "error: remote command exited with status 3 (state=failed)"]
    [call] = user_calls(winvm)
    assert (call["kind"], call["command"], call["script"], call["exit"]) == ("cmd", line, None, 3)

    code, out, _ = exec_vm(capsys, config, "--json", "--", *words)
    assert code == ExitCode.FAILURE
    data = json.loads(out)
    assert (data["state"], data["exit_code"], data["stdout"], data["stderr"]) == (
        "failed",
        3,
        "a\nb\n",
        "e\n",
    )
    assert [c["command"] for c in user_calls(winvm)] == [line, line]


# -- 3. idempotent mode --------------------------------------------------------------------


def test_idempotent_check_skips_the_second_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    config = write_config(tmp_path, winvm)
    # The emulator's cmd.exe is /bin/sh in the drive root: the check sees the command's work.
    work, check = "echo made > done.txt", "test -f done.txt"
    flags = ["--idempotent", "--idempotent-check", check]
    code, out, err = exec_vm(capsys, config, *flags, "--", work)
    assert (code, out) == (0, ""), err
    assert (winvm.home / "done.txt").read_text() == "made\n"
    first = user_calls(winvm)
    assert first[0]["kind"] == "powershell"
    assert "LogonUI" in first[0]["script"]  # the desktop-locked check comes first
    assert [(c["command"], c["exit"]) for c in first[1:]] == [(check, 1), (work, 0)]

    code, out, err = exec_vm(capsys, config, *flags, "--", work)
    assert (code, out) == (0, "")
    assert error_lines(err) == ["state=skipped (the idempotent check exited 0)"]
    code, out, _ = exec_vm(capsys, config, "--json", *flags, "--", work)
    assert code == 0
    data = json.loads(out)
    assert (data["state"], data["exit_code"], data["check_exit_code"]) == ("skipped", None, 0)
    # Three runs, one piece of work: the command itself reached the VM once.
    commands = [c["command"] for c in user_calls(winvm)]
    assert commands.count(work) == 1
    assert commands.count(check) == 3


def test_idempotent_on_a_locked_desktop_is_blocked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    config = write_config(tmp_path, winvm)
    winvm.set_locked()
    code, out, err = exec_vm(
        capsys, config, "--idempotent-check", "test -f done.txt", "--", "touch done.txt"
    )
    assert (code, out) == (ExitCode.FAILURE, "")
    assert error_lines(err) == ["error: the Windows desktop is locked; nothing ran (state=blocked)"]
    [call] = user_calls(winvm)  # only the locked check: neither the check nor the command
    assert call["kind"] == "powershell"
    assert "LogonUI" in call["script"]
    assert not (winvm.home / "done.txt").exists()


# -- 4. timeout ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "command", "marker"),
    [
        pytest.param([], "sleep 30.125", "sleep 30.125", id="cmd"),
        pytest.param(["--powershell"], "Start-Sleep 30.375", "sleep 30.375", id="powershell"),
    ],
)
def test_timeout_is_exit_4_and_the_remote_command_is_gone(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    winvm: WinVm,
    flags: list[str],
    command: str,
    marker: str,
) -> None:
    config = write_config(tmp_path, winvm)
    code, out, err = exec_vm(capsys, config, "--timeout", "1s", *flags, "--", command)
    assert code == ExitCode.TIMEOUT, err
    assert out == ""
    [line] = error_lines(err)
    assert line.startswith(f"error: ssh {winvm.user}@{winvm.host}:{winvm.port}: ")
    assert line.endswith("timed out after 1s (remote command killed)")
    calls = user_calls(winvm)
    slept = next(c for c in calls if command in (c["script"] or c["command"]))
    killer = next(c for c in calls if c.get("handler") == "kill_script")
    assert slept["exit"] is None  # killed: it never wrote its end record
    assert (killer["exit"], killer["stdout"].strip()) == (0, str(slept["pid"]))
    uid = os.stat(winvm.home).st_uid  # the login user owns the VM's drive
    deadline = time.monotonic() + GONE_DEADLINE_S
    while (left := login_user_pids(marker, uid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
    assert winvm.running() == []


# -- 5. unreachable ------------------------------------------------------------------------


def test_unreachable_vm_is_exit_3_with_one_line_naming_it(
    tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    port = free_port()  # bound and released: nothing listens there
    config = write_config(tmp_path, winvm, ssh_port=port)
    done = subprocess.run(
        [str(WIN_AUTOMATION), "--config", config, "windows", "exec", "--", "echo x"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=CLI_DEADLINE_S,
        check=False,
        env={**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)},
    )
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert done.stdout == ""
    [line] = error_lines(done.stderr)
    assert line.startswith("error: ")
    assert f"{winvm.host}:{port}" in line
    assert winvm.calls() == []


# -- 6. hostile flags and values -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(["--", ""], "no command given", id="empty-command"),
        pytest.param(["--powershell", "--", " "], "no command given", id="blank-powershell"),
        pytest.param(["--timeout", "", "--", "echo x"], "--timeout", id="timeout-empty"),
        pytest.param(["--timeout", "-1", "--", "echo x"], "--timeout", id="timeout-negative"),
        pytest.param(["--timeout", "abc", "--", "echo x"], "--timeout", id="timeout-word"),
        pytest.param(["--timeout", "0s", "--", "echo x"], "--timeout", id="timeout-zero"),
        pytest.param(["--", "echo", "a\0b"], "NUL", id="nul-cmd"),
        pytest.param(["--powershell", "--", "'a\0b'"], "NUL", id="nul-powershell"),
        pytest.param(["--", "echo", "a\necho b"], "multi-line", id="newline-cmd"),
        pytest.param(["--", "echo a\rb"], "multi-line", id="cr-cmd"),
        pytest.param(["--idempotent", "", "--", "echo x"], "--idempotent needs", id="idem-empty"),
        pytest.param(["--idempotent", "--", "echo x"], "--idempotent needs", id="idem-alone"),
        pytest.param(["--idempotent-check", "", "--", "echo x"], "check script is empty", id="ck"),
        pytest.param(
            ["--idempotent-check", "a\nb", "--", "echo x"], "multi-line", id="check-newline"
        ),
        pytest.param(["--", "x" * 8192], "Windows allows 8191", id="too-long"),
    ],
)
def test_hostile_input_is_one_line_exit_2_and_nothing_sent(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    winvm: WinVm,
    args: list[str],
    match: str,
) -> None:
    config = write_config(tmp_path, winvm)
    code, out, err = exec_vm(capsys, config, *args)
    assert code == ExitCode.USAGE, err
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("error: ")
    assert match in line
    assert winvm.calls() == []  # not even a login


# -- 7. logs and stdin ---------------------------------------------------------------------


def test_debug_logs_no_key_and_no_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    config = write_config(
        tmp_path, winvm, hatchet={"token": HATCHET_TOKEN}, playwright={"ws_path": WS_PATH}
    )
    key_lines = [
        line
        for line in winvm.identity_file.read_text().splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    try:
        code, out, err = run_win(
            capsys,
            "--debug",
            "--config",
            config,
            "windows",
            "exec",
            "--",
            f"echo {HATCHET_TOKEN} {WS_PATH}",
        )
    finally:
        hlog.clear_secrets()  # registered process-wide by loading the config
    # Remote output is the user's data and passes untouched; log lines are masked.
    assert (code, out) == (0, f"{HATCHET_TOKEN} {WS_PATH}\n"), err
    logs = [line for line in err.splitlines() if line.startswith("ts=")]
    assert any("level=debug" in line for line in logs)
    finished = [line for line in logs if 'msg="command finished"' in line]
    assert len(finished) == 1
    assert 'command="echo *** ***"' in finished[0]
    assert HATCHET_TOKEN not in err
    assert WS_PATH not in err
    assert key_lines
    for secret_line in key_lines:
        assert secret_line not in err
        assert secret_line not in out
    [call] = user_calls(winvm)
    assert call["command"] == f"echo {HATCHET_TOKEN} {WS_PATH}"


def test_local_stdin_is_not_sent_and_a_reading_command_ends(
    tmp_path: Path, state_dir: Path, winvm: WinVm
) -> None:
    # exec has no stdin option (the issue asks for none): the remote command reads EOF at
    # once rather than our terminal, so `cat` ends and prints nothing of ours.
    config = write_config(tmp_path, winvm)
    done = subprocess.run(
        [str(WIN_AUTOMATION), "--config", config, "windows", "exec", "--", "cat; echo done"],
        input="local-stdin-line\n",
        capture_output=True,
        text=True,
        timeout=CLI_DEADLINE_S,
        check=False,
        env={**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)},
    )
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
    assert "local-stdin-line" not in done.stderr
    [call] = user_calls(winvm)
    assert (call["command"], call["exit"]) == ("cat; echo done", 0)
