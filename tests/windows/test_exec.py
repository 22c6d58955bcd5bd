"""``windows exec``: the pure parts, then the command against a real loopback sshd.

The plain sshd runs the command line with /bin/sh, which reads ``echo hi`` as cmd.exe
would; PowerShell, the desktop-locked check and killing on timeout need the Windows
emulator (tests/windows/test_exec_vm.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from homeops.cli import run_console
from homeops.core.errors import UsageError
from homeops.windows.exec_flow import CMD_LINE_MAX, CrlfSink, command_line, wire_command
from tests.fixtures.common import free_port
from tests.fixtures.sshd import SshdHandle


def run_win(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = run_console("win-automation", list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def vm_config(tmp_path: Path, sshd: SshdHandle, **windows: object) -> Path:
    section = {
        "ssh_host": sshd.host,
        "ssh_port": sshd.port,
        "ssh_user": sshd.user,
        "ssh_identity_file": str(sshd.identity_file),
        "known_hosts": str(sshd.known_hosts),
        **windows,
    }
    path = tmp_path / "win.json"
    path.write_text(json.dumps({"windows": section}))
    return path


# -- pure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "line"),
    [
        pytest.param(["hostname"], "hostname", id="one-word"),
        pytest.param(["dir", "/b", "C:\\"], "dir /b C:\\", id="joined-like-ssh"),
        pytest.param(["echo a && echo b"], "echo a && echo b", id="shell-syntax-kept"),
    ],
)
def test_command_line_joins_words_as_ssh_does(words, line):
    assert command_line(words) == line


@pytest.mark.parametrize("words", [[], [""], ["  ", ""]], ids=["none", "empty", "blank"])
def test_command_line_refuses_an_empty_command(words):
    with pytest.raises(UsageError, match="no command given"):
        command_line(words)


def test_wire_command_encodes_powershell_and_shows_the_script():
    wire, shown = wire_command("Get-Date; 'a''b'", powershell=True)
    prefix, encoded = wire.rsplit(" ", 1)
    assert prefix == "powershell -NoProfile -NonInteractive -EncodedCommand"
    assert base64.b64decode(encoded).decode("utf-16-le") == "Get-Date; 'a''b'"
    assert shown == "powershell: Get-Date; 'a''b'"


@pytest.mark.parametrize(
    ("line", "powershell", "match"),
    [
        pytest.param("echo a\necho b", False, "multi-line command needs --powershell", id="lf"),
        pytest.param("echo a\rb", False, "multi-line", id="cr"),
        pytest.param("echo \0", True, "NUL", id="nul"),
        pytest.param("x" * (CMD_LINE_MAX + 1), False, "Windows allows 8191", id="too-long"),
        pytest.param("x" * 4000, True, "on the wire", id="too-long-encoded"),
    ],
)
def test_wire_command_refuses_what_windows_cannot_run(line, powershell, match):
    with pytest.raises(UsageError, match=match):
        wire_command(line, powershell=powershell)


def test_wire_command_allows_multi_line_powershell():
    wire, _ = wire_command("Get-Date\nexit 3", powershell=True)
    assert "\n" not in wire


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b"a\r\nb\r\n"], b"a\nb\n", id="whole"),
        pytest.param([b"a\r", b"\nb"], b"a\nb", id="split-crlf"),
        pytest.param([b"a\r", b"b"], b"a\rb", id="lone-cr-kept"),
        pytest.param([b"a\r"], b"a\r", id="cr-at-end-flushed"),
        pytest.param([b"\r", b"\r", b"\n"], b"\r\n", id="cr-cr-lf"),
        pytest.param([b"", b"x"], b"x", id="empty-chunk"),
    ],
)
def test_crlf_sink_translates_across_chunks(chunks, expected):
    out: list[bytes] = []
    sink = CrlfSink(out.append)
    for chunk in chunks:
        sink(chunk)
    sink.flush()
    assert b"".join(out) == expected


# -- the command against a real sshd --------------------------------------------------------


def test_exec_streams_stdout_and_stderr(capsys, tmp_path, state_dir, sshd):
    config = vm_config(tmp_path, sshd)
    code, out, err = run_win(
        capsys, "--config", str(config), "windows", "exec", "--", "echo out; echo err >&2"
    )
    assert (code, out) == (0, "out\n"), err
    assert "err\n" in err


def test_exec_remote_failure_is_exit_1_and_json_has_its_code(capsys, tmp_path, state_dir, sshd):
    config = vm_config(tmp_path, sshd)
    code, out, err = run_win(capsys, "--config", str(config), "windows", "exec", "--", "exit 3")
    assert code == 1
    assert err.strip().endswith("remote command exited with status 3 (state=failed)")
    code, out, _ = run_win(
        capsys,
        "--config",
        str(config),
        "windows",
        "exec",
        "--json",
        "--",
        "printf 'a\\r\\nb'; exit 3",
    )
    assert code == 1
    data = json.loads(out)
    assert (data["state"], data["exit_code"], data["stdout"]) == ("failed", 3, "a\nb")
    assert data["host"] == f"{sshd.user}@{sshd.host}:{sshd.port}"


def test_exec_raw_keeps_windows_line_ends(capsys, tmp_path, state_dir, sshd):
    config = vm_config(tmp_path, sshd)
    code, out, _ = run_win(
        capsys, "--config", str(config), "windows", "exec", "--raw", "--", "printf 'a\\r\\n'"
    )
    assert (code, out) == (0, "a\r\n")


def test_exec_unreachable_vm_is_exit_3(capsys, tmp_path, state_dir, sshd):
    config = vm_config(tmp_path, sshd, ssh_port=free_port())
    code, out, err = run_win(capsys, "--config", str(config), "windows", "exec", "--", "echo x")
    assert code == 3, err
    assert out == ""
    # The retries are logged (logfmt lines); the failure itself is one error line.
    errors = [ln for ln in err.splitlines() if not ln.startswith("ts=")]
    assert len(errors) == 1
    assert errors[0].startswith("error: ssh ")
    assert "cannot connect after 3 attempts" in errors[0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param([], "no command given; usage: windows exec", id="no-arguments"),
        pytest.param(["--"], "no command given", id="no-command"),
        pytest.param(["--", ""], "no command given", id="empty-command"),
        pytest.param(["--", "a\nb"], "multi-line command needs --powershell", id="multi-line"),
        pytest.param(["--idempotent", "--", "x"], "--idempotent needs", id="idempotent-alone"),
        pytest.param(["--idempotent-check", " ", "--", "x"], "check script is empty", id="blank"),
        pytest.param(["--timeout", "0s", "--", "x"], "--timeout", id="zero-timeout"),
        pytest.param(["--timeout", "soon", "--", "x"], "--timeout", id="bad-timeout"),
    ],
)
def test_exec_usage_errors_are_exit_2_before_connecting(capsys, tmp_path, state_dir, args, match):
    # Port 1 on loopback: nothing listens there, and none of these may get as far as trying.
    config = tmp_path / "win.json"
    config.write_text(json.dumps({"windows": {"ssh_host": "127.0.0.1", "ssh_port": 1}}))
    code, out, err = run_win(capsys, "--config", str(config), "windows", "exec", *args)
    assert code == 2, err
    assert match in err
    assert out == ""


def test_exec_json_unreachable_prints_one_object_and_the_error_line(
    capsys, tmp_path, state_dir, sshd
):
    config = vm_config(tmp_path, sshd, ssh_port=free_port())
    code, out, err = run_win(
        capsys, "--config", str(config), "windows", "exec", "--json", "--", "echo x"
    )
    assert code == 3, err
    data = json.loads(out)
    assert (data["ok"], data["state"], data["exit_code"]) == (False, "error", 3)
    assert data["host"].startswith(f"{sshd.user}@{sshd.host}:")
    assert "cannot connect after 3 attempts" in data["error"]
    errors = [ln for ln in err.splitlines() if not ln.startswith("ts=")]
    assert errors == [f"error: {data['error']}"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param([], "no command given", id="no-arguments"),
        pytest.param(["--", ""], "no command given", id="empty-command"),
        pytest.param(["--timeout", "soon", "--", "x"], "--timeout", id="bad-timeout"),
    ],
)
def test_exec_json_usage_errors_are_one_object_exit_2(capsys, tmp_path, state_dir, args, match):
    config = tmp_path / "win.json"
    config.write_text(json.dumps({"windows": {"ssh_host": "127.0.0.1", "ssh_port": 1}}))
    code, out, err = run_win(capsys, "--config", str(config), "windows", "exec", "--json", *args)
    assert code == 2, err
    data = json.loads(out)
    assert (data["ok"], data["exit_code"]) == (False, 2) and match in data["error"]
    assert err == f"error: {data['error']}\n"


def test_exec_json_remote_failure_says_not_ok_and_keeps_the_error_line(
    capsys, tmp_path, state_dir, sshd
):
    config = vm_config(tmp_path, sshd)
    code, out, err = run_win(
        capsys, "--config", str(config), "windows", "exec", "--json", "--", "exit 5"
    )
    assert code == 1
    data = json.loads(out)
    # exit_code stays the remote command's own (documented); ok and error say it failed.
    assert (data["ok"], data["state"], data["exit_code"]) == (False, "failed", 5)
    assert data["error"] == "remote command exited with status 5 (state=failed)"
    assert err.strip().endswith("remote command exited with status 5 (state=failed)")


def test_groups_without_a_subcommand_print_help_exit_0_as_the_core_groups_do(capsys):
    from tests.core.test_cli import run_main

    code, out, _ = run_main(capsys, "jobs")  # a core group: help on stdout, exit 0
    assert code == 0 and "Usage" in out
    for group in ("windows", "aloha", "playwright", "jobs"):
        code, out, err = run_win(capsys, group)
        assert code == 0, (group, err)
        assert "Usage" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        pytest.param(["windows", "exec"], "error: no command given; usage: ", id="exec"),
        pytest.param(["aloha", "run"], "error: --task is required", id="aloha-run"),
        pytest.param(["playwright", "run"], "error: --url is required", id="playwright-run"),
    ],
)
def test_commands_without_their_arguments_are_exit_2_not_help(
    capsys, tmp_path, state_dir, argv, says
):
    # As a script with an empty $CMD/$TASK/$URL runs them: it must not "succeed".
    config = tmp_path / "win.json"
    config.write_text(json.dumps({"windows": {"ssh_host": "127.0.0.1", "ssh_port": 1}}))
    code, out, err = run_win(capsys, "--config", str(config), *argv)
    assert code == 2
    assert out == ""
    assert err.startswith(says) and len(err.splitlines()) == 1
