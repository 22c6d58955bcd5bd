"""SshRunner against a real sshd on 127.0.0.1: the Runner contract, argv quoting, run_raw."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from homeops.core import logging as hlog
from homeops.core.errors import ExitCode, HomeopsTimeout, SshUnavailable
from homeops.core.runner import CommandFailed, RawRunner, SshRunner
from homeops.core.ssh import SshPool, powershell_command, powershell_script
from homeops.core.ssh.shell import decode_powershell
from tests.fixtures.common import free_port
from tests.fixtures.sshd import SshdHandle, kill_leftovers, start_sshd, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Prints the argv the remote process received, as JSON: the proof that quoting held.
ECHO_ARGV = ["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]

HOSTILE = [
    pytest.param(["plain"], id="plain"),
    pytest.param([""], id="empty-string"),
    pytest.param(["", "", "x"], id="several-empty"),
    pytest.param(["a b", "  lead", "trail  "], id="spaces"),
    pytest.param(["it's", "'", "''", '"', '"\'"'], id="quotes"),
    pytest.param(["$(touch /tmp/homeops-pwned)", "`id`", "$HOME", "${PATH}"], id="expansions"),
    pytest.param(["a;b", "a&&b", "a|b", "a>b", "<b", "(x)", "{y}", "!"], id="operators"),
    pytest.param(["*", "?", "[a]", "~", "~root", "#c"], id="globs-tilde-comment"),
    pytest.param(["line1\nline2", "\n", "\r\n", "\t"], id="newlines-tabs"),
    pytest.param(["back\\slash", "\\", "\\'", "\\n"], id="backslashes"),
    pytest.param(["é", "日本語", "emoji 🚀", "\u2018smart\u2019"], id="unicode"),
    pytest.param(["-n", "--", "-e", "--help"], id="dash-words"),
]


@pytest.fixture
async def runner(sshd: SshdHandle) -> AsyncIterator[SshRunner]:
    async with SshPool() as pool:
        yield SshRunner(pool, sshd.target())


@pytest.mark.parametrize("args", HOSTILE)
async def test_argv_arrives_exactly(runner: SshRunner, args: list[str]) -> None:
    result = await runner.run([*ECHO_ARGV, *args], timeout=20, check=True)
    assert json.loads(result.stdout) == args
    assert result.argv == (*ECHO_ARGV, *args)


async def test_all_hostile_words_in_one_argv(runner: SshRunner) -> None:
    words = [w for p in HOSTILE for w in p.values[0]]
    result = await runner.run([*ECHO_ARGV, *words], timeout=20, check=True)
    assert json.loads(result.stdout) == words


async def test_exit_status_and_output_bytes(runner: SshRunner, sshd: SshdHandle) -> None:
    code = (
        "import sys; sys.stdout.buffer.write(b'\\xff\\x00out\\r\\n');"
        "sys.stderr.buffer.write(b'err\\xfe'); sys.exit(7)"
    )
    result = await runner.run(["python3", "-c", code], timeout=20)
    assert (result.exit_status, result.stdout, result.stderr) == (7, b"\xff\x00out\r\n", b"err\xfe")
    assert result.host == sshd.target().destination
    assert 0 < result.duration < 20


async def test_stdin_is_sent_and_closed(runner: SshRunner) -> None:
    code = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"
    assert (await runner.run(["python3", "-c", code], timeout=20, stdin=b"\x00ab")).stdout == (
        b"ba\x00"
    )
    assert (await runner.run(["python3", "-c", code], timeout=20, stdin="é")).stdout == (
        "é".encode()[::-1]
    )
    assert (await runner.run(["python3", "-c", code], timeout=20)).stdout == b""


async def test_check_raises_command_failed_naming_host_argv_and_tail(
    runner: SshRunner, sshd: SshdHandle
) -> None:
    with pytest.raises(CommandFailed) as info:
        await runner.run(["sh", "-c", "echo one >&2; echo two >&2; exit 5"], timeout=20, check=True)
    err = info.value
    assert err.exit_code == ExitCode.FAILURE
    assert (err.exit_status, err.tail, err.host) == (5, "one | two", sshd.target().destination)
    assert str(err).startswith(f"ssh {sshd.target().destination}: sh -c ")


async def test_timeout_is_exit_4_and_kills_the_command(runner: SshRunner) -> None:
    marker = f"homeops-runner-{time.monotonic_ns()}"
    try:
        start = time.monotonic()
        with pytest.raises(HomeopsTimeout) as info:
            await runner.run(["sh", "-c", f"exec sleep 30 # {marker}", "x"], timeout=1)
        assert info.value.exit_code == ExitCode.TIMEOUT
        # The message shows the argv as the caller gave it, not the quoted command line.
        assert f"sh -c 'exec sleep 30 # {marker}' x" in str(info.value)
        assert time.monotonic() - start < 10
        assert await wait_gone(marker) == []
    finally:
        kill_leftovers(marker)


async def test_run_raw_sends_the_line_unchanged(runner: SshRunner) -> None:
    result = await runner.run_raw("echo $((1+2)) | tr 3 x; echo 'a  b'", timeout=20)
    assert result.stdout == b"x\na  b\n"
    assert result.argv == ("echo $((1+2)) | tr 3 x; echo 'a  b'",)
    with pytest.raises(CommandFailed, match="exit 4: no stderr"):
        await runner.run_raw("exit 4", timeout=20, check=True)
    with pytest.raises(ValueError, match="empty"):
        await runner.run_raw("  ", timeout=20)


async def test_argv_secret_is_masked_in_errors(runner: SshRunner, log_stream) -> None:
    hlog.register_secret("tok-sshrunner-99")
    with pytest.raises(CommandFailed) as info:
        await runner.run(["sh", "-c", "exit 1", "sh", "tok-sshrunner-99"], timeout=20, check=True)
    assert "tok-sshrunner-99" not in str(info.value)
    assert "tok-sshrunner-99" not in log_stream.getvalue()


async def test_a_string_is_not_an_argv(runner: SshRunner) -> None:
    with pytest.raises(TypeError, match="run_raw"):
        await runner.run("echo hi", timeout=5)  # type: ignore[arg-type]


async def test_unreachable_host_is_dependency_unavailable(sshd: SshdHandle) -> None:
    async with SshPool(sleep=_no_sleep) as pool:
        runner: RawRunner = SshRunner(pool, sshd.target(port=free_port("127.0.0.1")))
        with pytest.raises(SshUnavailable) as info:
            await runner.run(["true"], timeout=20)
    assert info.value.exit_code == ExitCode.UNAVAILABLE


async def _no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture
def recorder() -> Iterator[tuple[Path, Path]]:
    """A ForceCommand script that writes the command the client sent to a file, exits 9."""
    # Not tmp_path: as root, pytest's tmp dirs are closed to the login user, who runs this.
    folder = Path(tempfile.mkdtemp(prefix="homeops-recorder-"))
    folder.chmod(0o777)
    record = folder / "received"
    script = folder / "recorder.sh"
    script.write_text(f'#!/bin/sh\nprintf %s "$SSH_ORIGINAL_COMMAND" > {record}\nexit 9\n')
    script.chmod(0o755)
    yield script, record
    shutil.rmtree(folder, ignore_errors=True)


async def test_powershell_target_sends_the_encoded_script_unchanged(
    recorder: tuple[Path, Path],
) -> None:
    # No Windows here: an sshd whose ForceCommand records what the client sent stands in
    # for Windows OpenSSH, so this proves the line crosses SSH intact (not how Windows runs it).
    script, record = recorder
    argv = ["Get-ChildItem", "C:\\Program Files", "it's $(x) `y`", ""]
    with start_sshd(force_command=str(script)) as server:
        async with SshPool() as pool:
            runner = SshRunner(pool, server.target(remote_shell="powershell"))
            result = await runner.run(argv, timeout=20)
    assert result.exit_status == 9
    assert result.argv == tuple(argv)
    received = record.read_text()
    assert received == powershell_command(argv)
    assert decode_powershell(received) == powershell_script(argv)
