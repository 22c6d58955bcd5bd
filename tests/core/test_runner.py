"""The Runner seam: CommandResult, CommandFailed, and LocalRunner against real processes."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from homeops.core import logging as hlog
from homeops.core.errors import ExitCode, HomeopsTimeout, OperationalError, ToolMissing
from homeops.core.runner import (
    CommandFailed,
    CommandResult,
    LocalRunner,
    Runner,
    stderr_tail,
)

PY = sys.executable


def _runner() -> Runner:
    # Typed as the protocol: the test exercises only what every Runner offers.
    return LocalRunner()


async def test_exit_status_and_output_bytes_exactly() -> None:
    code = (
        "import sys; sys.stdout.buffer.write(b'\\xff\\x00out\\r\\n');"
        "sys.stderr.buffer.write(b'err\\xfe'); sys.exit(7)"
    )
    result = await _runner().run([PY, "-c", code], timeout=10)
    assert result.argv == (PY, "-c", code)
    assert result.exit_status == 7
    assert not result.ok
    assert result.stdout == b"\xff\x00out\r\n"
    assert result.stderr == b"err\xfe"
    assert result.stdout_text == "\ufffd\x00out\r\n"
    assert result.stderr_text == "err\ufffd"
    assert result.host is None
    assert 0 < result.duration < 10


async def test_stdin_bytes_and_str_reach_the_process() -> None:
    code = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"
    runner = _runner()
    assert (await runner.run([PY, "-c", code], timeout=10, stdin=b"\x00ab")).stdout == b"ba\x00"
    assert (await runner.run([PY, "-c", code], timeout=10, stdin="é")).stdout == "é".encode()[::-1]
    # No stdin: the process reads EOF at once instead of waiting for the timeout.
    assert (await runner.run([PY, "-c", code], timeout=10)).stdout == b""


async def test_cwd_and_env_apply_to_every_command(tmp_path) -> None:
    runner = LocalRunner(cwd=tmp_path, env={"HOMEOPS_X": "y", "PATH": "/usr/bin:/bin"})
    code = "import os; print(os.getcwd(), os.environ['HOMEOPS_X'], len(os.environ) < 5)"
    result = await runner.run([PY, "-c", code], timeout=10)
    assert result.lines() == [f"{tmp_path} y True"]


async def test_timeout_kills_and_is_exit_4() -> None:
    start = time.monotonic()
    with pytest.raises(HomeopsTimeout) as info:
        await _runner().run(["sleep", "30"], timeout=0.5)
    assert info.value.exit_code == ExitCode.TIMEOUT
    assert "sleep 30" in str(info.value)
    assert time.monotonic() - start < 8


async def test_check_raises_command_failed_naming_argv_status_and_stderr_tail() -> None:
    script = "for i in 1 2 3 4 5; do echo line$i >&2; done; exit 3"
    with pytest.raises(CommandFailed) as info:
        await _runner().run(["sh", "-c", script], timeout=10, check=True)
    err = info.value
    assert isinstance(err, OperationalError)
    assert err.exit_code == ExitCode.FAILURE
    assert (err.argv, err.exit_status, err.host) == (("sh", "-c", script), 3, None)
    assert err.tail == "line3 | line4 | line5"
    assert str(err) == f"sh -c {script!r}: exit 3: line3 | line4 | line5"


async def test_check_passes_a_success_through() -> None:
    result = await _runner().run(["true"], timeout=10, check=True)
    assert result.ok


async def test_check_masks_secrets_in_argv_and_stderr(log_stream) -> None:
    hlog.register_secret("tok-runner-1234")
    with pytest.raises(CommandFailed) as info:
        await _runner().run(
            ["sh", "-c", 'echo "bad $1" >&2; exit 1', "sh", "tok-runner-1234"],
            timeout=10,
            check=True,
        )
    assert "tok-runner-1234" not in str(info.value)
    assert "bad ***" in str(info.value)


async def test_missing_program_is_dependency_unavailable() -> None:
    with pytest.raises(ToolMissing):
        await _runner().run(["homeops-no-such-program"], timeout=5)


async def test_a_string_is_not_an_argv() -> None:
    with pytest.raises(TypeError):
        await _runner().run("echo hi", timeout=5)


async def test_cancel_kills_the_process(tmp_path) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(
        _runner().run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=30)
    )
    for _ in range(250):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pidfile.read_text())
    for _ in range(100):
        if not _running(pid):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the cancelled process is still running")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("stderr", "tail"),
    [
        pytest.param(b"", "no stderr", id="empty"),
        pytest.param(b"\n \n", "no stderr", id="blank-lines"),
        pytest.param(b"one\n", "one", id="one-line"),
        pytest.param(b"a\r\nb\r\n\r\nc\r\nd\r\n", "b | c | d", id="crlf-last-three"),
        pytest.param(b"x" * 1000, "…" + "x" * 400, id="long-line-cut"),
        pytest.param(b"bad \xff byte", "bad \ufffd byte", id="undecodable"),
    ],
)
def test_stderr_tail(stderr: bytes, tail: str) -> None:
    assert stderr_tail(stderr) == tail


def test_result_helpers_and_check() -> None:
    ok = CommandResult(("a",), 0, "é\r\nz\n".encode("cp1252"), b"", 0.1, "u@h:22")
    assert ok.check() is ok
    assert ok.text("cp1252") == "é\r\nz\n"
    assert ok.lines() == ["\ufffd", "z"]
    failed = CommandResult(("a", "b c"), 2, b"", b"oops\n", 0.1, "u@h:22")
    with pytest.raises(CommandFailed, match=r"^ssh u@h:22: a 'b c': exit 2: oops$"):
        failed.check()
    with pytest.raises(AttributeError):
        ok.exit_status = 1  # type: ignore[misc]


def test_importing_the_seam_does_not_import_asyncssh() -> None:
    import subprocess

    code = (
        "import sys, homeops.core.runner, homeops.core.ssh;"
        "sys.exit(1 if 'asyncssh' in sys.modules else 0)"
    )
    done = subprocess.run([PY, "-c", code], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("argv", "timeout", "message"),
    [
        pytest.param(["echo", "a\0b"], 5.0, "argument 1 of the command contains a NUL", id="nul"),
        pytest.param(["true"], float("nan"), "timeout must be a finite number", id="nan"),
        pytest.param(["true"], float("inf"), "timeout must be a finite number", id="inf"),
        pytest.param(["true"], 0.0, "timeout must be a finite number", id="zero"),
    ],
)
async def test_local_runner_refuses_calls_it_cannot_make(argv, timeout, message):
    from homeops.core.errors import UsageError
    from homeops.core.runner import LocalRunner

    with pytest.raises(UsageError, match=message):
        await LocalRunner().run(argv, timeout=timeout)
