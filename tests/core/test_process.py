import asyncio
import os
import sys
import time

import pytest

from homeops.core import logging as hlog
from homeops.core import process
from homeops.core.errors import ExitCode, HomeopsTimeout, OperationalError, ToolMissing


async def test_captures_output_and_exit_code():
    result = await process.run(
        [
            sys.executable,
            "-c",
            "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)",
        ],
        timeout=10,
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert result.argv[0] == sys.executable


async def test_stdin_and_env(tmp_path):
    result = await process.run(
        [sys.executable, "-c", "import os,sys; print(sys.stdin.read() + os.environ['X'])"],
        timeout=10,
        stdin="hello ",
        env={**os.environ, "X": "world"},
        cwd=tmp_path,
    )
    assert result.stdout == "hello world\n"


async def test_line_streaming_and_utf8_split_across_reads():
    lines: list[str] = []
    code = "import sys\nfor i in range(3): print(f'l{i} é', flush=True)\nsys.stdout.write('tail')"
    result = await process.run(
        [sys.executable, "-c", code], timeout=10, on_stdout_line=lines.append
    )
    assert lines == ["l0 é", "l1 é", "l2 é", "tail"]
    assert result.stdout == "l0 é\nl1 é\nl2 é\ntail"


async def test_long_line_is_not_a_problem():
    result = await process.run([sys.executable, "-c", "print('x' * 300000)"], timeout=10)
    assert len(result.stdout) == 300001


async def test_missing_tool_is_dependency_unavailable():
    with pytest.raises(ToolMissing) as info:
        await process.run(["definitely-not-a-tool-xyz"], timeout=5)
    assert info.value.exit_code == ExitCode.UNAVAILABLE


async def test_check_raises_with_stderr_tail():
    with pytest.raises(OperationalError, match=r"exit 2: boom$"):
        await process.run(
            ["sh", "-c", "echo first >&2; echo boom >&2; exit 2"], timeout=5, check=True
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_timeout_kills_whole_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # The shell starts a background grandchild that ignores SIGTERM, then waits.
    script = f"(trap '' TERM; sleep 300) & echo $! > {pidfile}; wait"
    start = time.monotonic()
    with pytest.raises(HomeopsTimeout) as info:
        await process.run(["sh", "-c", script], timeout=2)
    assert info.value.exit_code == ExitCode.TIMEOUT
    assert time.monotonic() - start < 10
    grandchild = int(pidfile.read_text())
    assert await _wait_gone(grandchild), "grandchild survived the timeout"


async def test_cancel_kills_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    task = asyncio.create_task(
        process.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout=60)
    )
    for _ in range(250):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.02)
    assert pidfile.exists(), "the child never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_gone(int(pidfile.read_text()))


async def test_argv_logged_with_secrets_masked(log_stream):
    hlog.register_secret("tok-123456")
    await process.run(["echo", "--token", "tok-123456"], timeout=5)
    out = log_stream.getvalue()
    assert "op=spawn" in out
    assert "tok-123456" not in out
    assert "***" in out


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        pytest.param(["nix", "build", ".#x"], "nix build .#x", id="plain"),
        pytest.param(["sh", "-c", "a b"], "sh -c 'a b'", id="quoted"),
        pytest.param(["x", ""], "x ''", id="empty-arg"),
        pytest.param(["curl", "-H", "tok-98765"], "curl -H ***", id="secret-masked"),
    ],
)
def test_display_argv(argv, want, log_stream):
    hlog.register_secret("tok-98765")
    assert process.display_argv(argv) == want


async def test_check_error_masks_secrets_and_counts_signals(log_stream):
    hlog.register_secret("tok-55555")
    with pytest.raises(OperationalError) as info:
        await process.run(["sh", "-c", "exit 1", "sh", "--tok", "tok-55555"], timeout=5, check=True)
    assert "tok-55555" not in str(info.value)
    # A child killed by a signal (negative returncode) is a failure too.
    with pytest.raises(OperationalError, match="exit -15"):
        await process.run(["sh", "-c", "kill -TERM $$"], timeout=5, check=True)


async def test_background_child_holding_pipes_does_not_hang(tmp_path):
    pidfile = tmp_path / "bg.pid"
    start = time.monotonic()
    result = await process.run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo hi"], timeout=20)
    assert result.ok
    assert result.stdout == "hi\n"
    assert time.monotonic() - start < 15
    # The stray background process was killed with its group, not left running.
    assert await _wait_gone(int(pidfile.read_text()))


@pytest.mark.parametrize(
    ("argv", "kwargs", "exc", "match"),
    [
        pytest.param(["/tmp"], {}, ToolMissing, "not an executable file", id="directory"),
        pytest.param([__file__], {}, ToolMissing, "not an executable file", id="not-exec"),
        pytest.param(
            ["true"], {"cwd": "/nonexistent-dir"}, OperationalError, "cannot start", id="bad-cwd"
        ),
    ],
)
async def test_spawn_errors_are_translated(argv, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        await process.run(argv, timeout=5, **kwargs)


async def test_pipes_held_outside_the_group_do_not_turn_success_into_timeout(tmp_path):
    pidfile = tmp_path / "daemon.pid"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' & echo hi"
    start = time.monotonic()
    try:
        result = await process.run(["sh", "-c", script], timeout=20)
        assert result.ok
        assert result.stdout == "hi\n"
        assert time.monotonic() - start < 10
    finally:
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.02)
        os.kill(int(pidfile.read_text()), 9)


async def test_keep_bounds_each_stream_to_its_tail():
    """``keep``: a process that writes 20 MB keeps only the last bytes of each stream (and
    says how many were cut), while the line callback still sees every line."""
    lines: list[str] = []
    script = (
        "import sys\n"
        "for n in range(200_000): sys.stdout.write(f'line {n:06d} ' + 'x' * 90 + '\\n')\n"
        "sys.stderr.write('é' * 10)\n"  # 20 bytes: the cut lands inside a character
    )
    result = await process.run(
        [sys.executable, "-c", script], timeout=60, keep=15, on_stdout_line=lines.append
    )
    assert len(lines) == 200_000
    total = 200_000 * 103
    assert result.stdout_dropped == total - 15
    assert result.stdout == "x" * 14 + "\n"
    # 20 bytes of 'é', the first 5 cut: the tail starts at the next whole character, and
    # the half character counts as cut.
    assert result.stderr_dropped == 6 and result.stderr == "é" * 7
    whole = await process.run([sys.executable, "-c", script], timeout=60)
    assert (whole.stdout_dropped, len(whole.stdout)) == (0, total)


async def test_a_timeout_keeps_what_was_written():
    script = "import sys, time; print('working on it', flush=True); time.sleep(30)"
    with pytest.raises(process.ProcessTimedOut) as caught:
        await process.run([sys.executable, "-c", script], timeout=1.0)
    assert caught.value.exit_code == ExitCode.TIMEOUT
    assert process.decoded(caught.value.partial).stdout == "working on it\n"


async def test_a_chatty_process_killed_at_its_timeout_is_not_waited_for_the_grace(monkeypatch):
    """Killed while it writes (``yes``), a process dies on SIGTERM; its pipes are read to
    the end, so its exit is seen at once instead of after the whole kill grace period (a
    full, unread pipe kept proc.wait() waiting)."""
    monkeypatch.setattr(process, "KILL_GRACE_S", 10.0)
    started = time.monotonic()
    with pytest.raises(process.ProcessTimedOut) as caught:
        await process.run(["bash", "-c", "yes"], timeout=1.0, keep=100)
    assert time.monotonic() - started < 6.0  # not 1 s + the 10 s grace
    assert caught.value.partial.stdout == b"y\n" * 50
