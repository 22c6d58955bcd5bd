"""Issue 5 regressions of core/ssh against a real OpenSSH sshd on 127.0.0.1.

Binary output, sinks and caps; kills reported only when they happened; no channel left
behind by an early timeout; a server's MaxSessions learned or set; the caller's timeout
bounding the whole call; SFTP never leaving a partial destination; dead servers noticed by
the default keepalive. Servers are "stopped" with SIGSTOP of their per-connection sshd
processes, as a frozen VM would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from homeops.core.errors import HomeopsTimeout, SshUnavailable
from homeops.core.ssh import KILL_GRACE_S, SshPool
from tests.fixtures.sshd import (
    SshdHandle,
    is_root,
    kill_leftovers,
    remote_pids,
    start_sshd,
    stopped,
    wait_gone,
    wait_started,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# Headroom for wall-clock bounds: they catch hangs, not a slow (loaded) machine.
SLACK_S = 3.0
MIB = 1024 * 1024


class NoSleep:
    """An injected retry ``sleep`` that does not wait (connect retries stay fast)."""

    async def __call__(self, seconds: float) -> None:
        pass


@pytest.fixture
async def pool() -> AsyncIterator[SshPool]:
    async with SshPool(sleep=NoSleep()) as p:
        yield p


@pytest.fixture(scope="module")
def lone_sshd() -> Iterator[SshdHandle]:
    """A server of this module's own: its per-connection processes are this test's only."""
    with start_sshd(max_sessions=10) as handle:
        yield handle


@pytest.fixture(scope="module")
def root_lone_sshd() -> Iterator[SshdHandle]:
    if not is_root():
        pytest.skip("needs root: logs in as root to exercise sshd's root-session path")
    with start_sshd(login_user="root", max_sessions=10) as handle:
        yield handle


@pytest.fixture(scope="module")
def two_session_sshd() -> Iterator[SshdHandle]:
    with start_sshd(max_sessions=2) as handle:
        yield handle


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the login user can write to (sshd runs on this machine)."""
    path = Path(tempfile.mkdtemp(prefix="homeops-sftp-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unique_sleep() -> str:
    """A ``sleep`` argument no other process on the machine carries."""
    return f"{random.randint(600, 900)}.{random.randint(10**8, 10**9 - 1)}"


def random_bytes_command(size: int) -> str:
    """A remote command printing ``size`` random bytes on stdout and their sha256 on stderr."""
    return (
        f'f=$(mktemp) && head -c {size} /dev/urandom >"$f" && sha256sum <"$f" >&2'
        f' && cat "$f"; rm -f "$f"'
    )


def sent_digest(stderr: bytes) -> str:
    return stderr.split()[0].decode()


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS; return that RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset peak RSS here: {exc}")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


# -- 1. binary output, sinks, caps ---------------------------------------------------------


async def test_binary_output_round_trips_exactly(pool: SshPool, sshd: SshdHandle) -> None:
    result = await pool.run(sshd.target(), random_bytes_command(3 * MIB), timeout=30)
    assert len(result.stdout) == 3 * MIB
    assert hashlib.sha256(result.stdout).hexdigest() == sent_digest(result.stderr)
    assert not result.stdout_truncated
    # Non-UTF-8 on stderr too: bytes as sent; decoding is the caller's choice.
    mixed = await pool.run(sshd.target(), r"printf 'caf\351\n' >&2; printf '\377'", timeout=10)
    assert (mixed.stdout, mixed.stderr) == (b"\xff", b"caf\xe9\n")
    assert mixed.stderr_text == "caf\ufffd\n"
    assert mixed.text("latin-1") == "\xff"


async def test_sinks_get_every_byte_with_bounded_memory(
    pool: SshPool, sshd: SshdHandle, tmp_path: Path
) -> None:
    size = 64 * MIB
    digest = hashlib.sha256()
    seen = 0

    async def sink(chunk: bytes) -> None:
        nonlocal seen
        digest.update(chunk)
        seen += len(chunk)
        await asyncio.sleep(0)  # a sink that yields: reading must pause, not pile up

    base = reset_peak_rss()
    result = await pool.run(sshd.target(), random_bytes_command(size), timeout=60, stdout=sink)
    growth = peak_rss() - base
    assert seen == size
    assert digest.hexdigest() == sent_digest(result.stderr)
    assert (result.stdout, result.stdout_dropped) == (b"", 0)
    # Capturing would hold all 64 MiB (and a copy); streaming holds about one SSH window.
    assert growth < 16 * MIB, f"peak RSS grew {growth / MIB:.1f} MiB for {size / MIB:.0f} MiB"

    # A binary file is a sink too.
    out = tmp_path / "out.bin"
    with out.open("wb") as file:
        result = await pool.run(sshd.target(), random_bytes_command(MIB), timeout=30, stdout=file)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sent_digest(result.stderr)


async def test_capture_cap_cuts_and_says_so(pool: SshPool, sshd: SshdHandle) -> None:
    result = await pool.run(
        sshd.target(), "head -c 100000 /dev/zero; echo err >&2", timeout=10, max_output=1000
    )
    assert result.stdout == b"\0" * 1000
    assert (result.stdout_truncated, result.stdout_dropped) == (True, 99_000)
    assert (result.stderr, result.stderr_truncated, result.stderr_dropped) == (b"err\n", False, 0)
    whole = await pool.run(sshd.target(), "head -c 100000 /dev/zero", timeout=10)
    assert (len(whole.stdout), whole.stdout_truncated) == (100_000, False)


async def test_failing_sink_stops_the_command(pool: SshPool, sshd: SshdHandle) -> None:
    marker = unique_sleep()

    def sink(chunk: bytes) -> None:
        raise ValueError("disk full")

    try:
        with pytest.raises(ValueError, match="disk full"):
            await pool.run(
                sshd.target(), f"echo start; sleep {marker}; echo never", timeout=30, stdout=sink
            )
        assert await wait_gone(f"sleep {marker}") == []
    finally:
        kill_leftovers(f"sleep {marker}")


# -- 2. a kill is reported only when it happened -------------------------------------------


async def test_kill_after_the_servers_connection_processes_died(
    pool: SshPool, lone_sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    # The command ignores SIGTERM; its sshd processes are killed during the SIGTERM grace:
    # the channel closes without an exit status, and that proves nothing about the command.
    marker = f"sleep {unique_sleep()}"
    start = time.monotonic()
    task = asyncio.create_task(pool.run(lone_sshd.target(), f"trap '' TERM; {marker}", timeout=1))
    try:
        await wait_started(marker)
        await asyncio.sleep(max(0.0, start + 1.5 - time.monotonic()))  # mid-grace
        assert not task.done()
        for pid in lone_sshd.connection_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        with pytest.raises(HomeopsTimeout) as info:
            await task
        message = str(info.value)
        if "(remote command killed)" not in message:
            assert "kill not confirmed" in message
        await pool.close()  # waits for a kill still running in the background
        # Really gone: sshd dying orphaned the command, it did not end it.
        assert remote_pids(marker) == []
        assert "killed command by process group" in log_stream.getvalue()
    finally:
        kill_leftovers(marker)


@pytest.mark.root
async def test_root_command_is_killed_while_its_sshd_is_stopped(
    pool: SshPool, root_lone_sshd: SshdHandle
) -> None:
    # Root logins ignore "signal" requests; with the connection's sshd stopped, the fallback
    # cannot run on that connection either: it must use a new one.
    marker = f"sleep {unique_sleep()}"
    try:
        task = asyncio.create_task(pool.run(root_lone_sshd.target(), f"{marker}; true", timeout=1))
        await wait_started(marker)
        with stopped(root_lone_sshd.connection_pids()):
            with pytest.raises(HomeopsTimeout) as info:
                await task
            message = str(info.value)
            assert message.endswith(
                (
                    "(remote command killed)",
                    "(kill not confirmed yet: still trying in the background)",
                )
            ), message
            await pool.close()
            assert remote_pids(marker) == []
    finally:
        kill_leftovers(marker)


# -- 3. no channel left open by a timeout before the command started ----------------------


async def test_early_timeouts_leave_no_channel_open(
    pool: SshPool, lone_sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    target = lone_sshd.target()
    assert (await pool.run(target, "true", timeout=10)).ok
    # The server answers channel opens only after the callers gave up on them.
    with stopped(lone_sshd.connection_pids()):
        early = await asyncio.gather(
            *(pool.run(target, "true", timeout=0.3) for _ in range(5)), return_exceptions=True
        )
    assert all(isinstance(r, HomeopsTimeout) for r in early), early
    assert all(str(r).endswith("before the command started") for r in early)
    await asyncio.sleep(0.5)  # the late confirmations arrive (and must be closed)
    # All of the server's 10 sessions are free again: nine commands at once fit (a leaked
    # channel would hold a session until the connection closed, and a command lasting longer
    # than the pauses between retries of a refused open would find none).
    results = await asyncio.gather(*(pool.run(target, "sleep 1", timeout=30) for _ in range(9)))
    assert all(r.ok for r in results)
    assert "server allows fewer sessions" not in log_stream.getvalue()


# -- 4. MaxSessions learned from refusals, or set per host --------------------------------


async def test_commands_queue_to_a_learned_max_sessions(
    pool: SshPool, two_session_sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    target = two_session_sshd.target()
    results = await asyncio.gather(*(pool.run(target, "sleep 0.3", timeout=60) for _ in range(12)))
    assert all(r.ok for r in results)
    learned = [line for line in log_stream.getvalue().splitlines() if "fewer sessions" in line]
    assert learned and all("max_sessions=2" in line for line in learned), learned


async def test_max_sessions_setting_queues_without_refusals(
    pool: SshPool, two_session_sshd: SshdHandle, log_stream: io.StringIO, shared_dir: Path
) -> None:
    target = two_session_sshd.target(max_sessions=2)
    log = shared_dir / "sessions.log"
    # Each command logs its start and end: the log tells how many ran at once.
    command = f"echo start >>{log}; sleep 0.2; echo end >>{log}"
    results = await asyncio.gather(*(pool.run(target, command, timeout=60) for _ in range(8)))
    assert all(r.ok for r in results)
    # Refused only in sshd's moment between a close and freeing its slot, never for being
    # full: a refusal with both sessions of ours open would mean the limit was not kept.
    lines = log_stream.getvalue().splitlines()
    assert not [line for line in lines if "refused a channel" in line and "open_channels=2" in line]
    assert "fewer sessions" not in log_stream.getvalue()
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 2


# -- 5. the caller's timeout bounds the whole call -----------------------------------------


async def test_timeout_bounds_connect_and_its_retries(pool: SshPool, sshd: SshdHandle) -> None:
    # A peer that accepts TCP but never speaks SSH: each attempt would wait connect_timeout.
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = sshd.target(port=port, connect_timeout=10)
    try:
        start = time.monotonic()
        with pytest.raises(HomeopsTimeout) as info:
            await pool.run(target, "true", timeout=1)
        assert str(info.value).endswith("before the command started (still connecting)")
        with pytest.raises(HomeopsTimeout):
            await pool.put(target, Path(__file__), "/tmp/never", timeout=1)
        # Three attempts of 10 s each were allowed; the two calls had 1 s each.
        assert time.monotonic() - start < 2 + SLACK_S
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_timeout_bounds_the_kill_on_a_stopped_server(
    pool: SshPool, lone_sshd: SshdHandle
) -> None:
    marker = f"sleep {unique_sleep()}"
    try:
        task = asyncio.create_task(pool.run(lone_sshd.target(), f"{marker}; true", timeout=1))
        await wait_started(marker)
        start = time.monotonic()
        with stopped(lone_sshd.connection_pids()):
            with pytest.raises(HomeopsTimeout) as info:
                await task
            # The kill may take KILL_BUDGET_S (the SIGTERM grace + 1.5 s) after the deadline.
            # Before, the waits added up to 1 + 2 + 0.2 + 3 + 1 s however fast the machine.
            assert time.monotonic() - start < 1 + KILL_GRACE_S + SLACK_S
            assert str(info.value).endswith(
                (
                    "(remote command killed)",
                    "(kill not confirmed yet: still trying in the background)",
                )
            )
            assert await wait_gone(marker) == []
    finally:
        kill_leftovers(marker)


# -- 6. SFTP never leaves a partial destination --------------------------------------------


async def _stop_mid_transfer(
    sshd: SshdHandle, task: asyncio.Task[None], folder: Path, timeout: float
) -> None:
    """Once a file appears in ``folder``, stop the server until just past ``timeout``."""
    start = time.monotonic()
    while not os.listdir(folder):
        assert not task.done(), "the transfer ended before it could be stopped"
        await asyncio.sleep(0.002)
    with stopped(sshd.connection_pids()):
        await asyncio.sleep(max(0.0, start + timeout + 0.3 - time.monotonic()))
    # Running again: the timed-out transfer's clean-up can reach the server.
    with pytest.raises(HomeopsTimeout):
        await task


async def test_sftp_put_that_times_out_leaves_no_partial_file(
    pool: SshPool, lone_sshd: SshdHandle, tmp_path: Path, shared_dir: Path
) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(96 * MIB))
    remote = shared_dir / "dest.bin"
    await pool.run(lone_sshd.target(), "true", timeout=10)  # connected before the clock runs
    task = asyncio.create_task(pool.put(lone_sshd.target(), local, str(remote), timeout=2))
    await _stop_mid_transfer(lone_sshd, task, shared_dir, 2)
    assert not remote.exists()
    assert os.listdir(shared_dir) == []  # nor a temporary file


async def test_sftp_get_that_times_out_leaves_no_partial_file(
    pool: SshPool, lone_sshd: SshdHandle, tmp_path: Path, shared_dir: Path
) -> None:
    remote = shared_dir / "big.bin"
    remote.write_bytes(os.urandom(96 * MIB))
    remote.chmod(0o644)
    local_dir = tmp_path / "down"
    local_dir.mkdir()
    await pool.run(lone_sshd.target(), "true", timeout=10)
    task = asyncio.create_task(
        pool.get(lone_sshd.target(), str(remote), local_dir / "x", timeout=2)
    )
    await _stop_mid_transfer(lone_sshd, task, local_dir, 2)
    assert os.listdir(local_dir) == []


async def test_sftp_replaces_existing_files_whole(
    pool: SshPool, sshd: SshdHandle, tmp_path: Path, shared_dir: Path
) -> None:
    remote = shared_dir / "dest.bin"
    remote.write_bytes(b"old remote content")
    remote.chmod(0o666)
    payload = os.urandom(200_000)
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    await pool.put(sshd.target(), local, str(remote), timeout=30)
    assert remote.read_bytes() == payload
    back = tmp_path / "back.bin"
    back.write_bytes(b"old local content")
    await pool.get(sshd.target(), str(remote), back, timeout=30)
    assert back.read_bytes() == payload
    assert os.listdir(shared_dir) == ["dest.bin"]
    assert sorted(os.listdir(tmp_path)) == ["back.bin", "up.bin"]


# -- 7. a dead server is noticed by the default keepalive ----------------------------------


async def test_default_keepalive_notices_a_stopped_server_within_10s(
    pool: SshPool, lone_sshd: SshdHandle
) -> None:
    # Defaults: no keepalive settings on the target. A timeout of 14 s: only a keepalive that
    # gives up within ~10 s turns this into "connection lost" rather than a timeout.
    marker = f"sleep {unique_sleep()}"
    try:
        task = asyncio.create_task(pool.run(lone_sshd.target(), f"{marker}; true", timeout=14))
        await wait_started(marker)
        with stopped(lone_sshd.connection_pids()), pytest.raises(SshUnavailable) as info:
            await task
        assert "connection lost while running command" in str(info.value)
    finally:
        kill_leftovers(marker)
