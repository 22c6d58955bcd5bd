"""core/ssh against a real OpenSSH sshd on 127.0.0.1 (tests/fixtures/sshd.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from homeops.core import logging as hlog
from homeops.core.errors import (
    ExitCode,
    HomeopsTimeout,
    HostKeyError,
    OperationalError,
    SshAuthError,
    SshUnavailable,
)
from homeops.core.ssh import (
    CANCEL_KILL_BUDGET_S,
    KILL_GRACE_S,
    MAX_CHANNELS_PER_CONNECTION,
    HostKeyPolicy,
    SshPool,
)
from tests.fixtures.common import free_port
from tests.fixtures.sshd import (
    SshdHandle,
    generate_key,
    is_root,
    kill_leftovers,
    start_sshd,
    wait_gone,
    wait_started,
)

# Some valid public key that belongs to no server here.
UNRELATED_KEY = (
    "ssh-ed25519 " + "AAAAC3NzaC1lZDI1NTE5AAAAIOaG1xvIDqtNoNcAk1iZzkU3ObPaG44mo7KRE0bTq0Nq"
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Headroom for wall-clock bounds: they catch hangs, not a slow (loaded) machine.
SLACK_S = 3.0
# Every channel of a connection carries commands: fallback kills use a connection of their own.
COMMAND_CHANNELS = MAX_CHANNELS_PER_CONNECTION


class SleepRecorder:
    """An injected ``sleep`` that records the retry waits instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def pool(sleeps: SleepRecorder) -> AsyncIterator[SshPool]:
    async with SshPool(sleep=sleeps) as p:
        yield p


def timeout_kills(log_stream: io.StringIO) -> list[str]:
    """The ``kill=`` field of every "command timed out" warning logged so far."""
    return [
        line.split(" kill=", 1)[1].split()[0]
        for line in log_stream.getvalue().splitlines()
        if "command timed out" in line and " kill=" in line
    ]


def wrong_key(tmp_path: Path) -> Path:
    key = tmp_path / "not_authorized"
    generate_key(key)
    return key


async def test_run_returns_status_stdout_stderr(pool: SshPool, sshd: SshdHandle) -> None:
    result = await pool.run(sshd.target(), "echo out; echo err >&2; exit 7", timeout=10)
    assert (result.exit_status, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    assert not result.ok
    assert result.duration_ms > 0


async def test_runs_as_login_user_in_plain_sh(pool: SshPool, sshd: SshdHandle) -> None:
    result = await pool.run(sshd.target(), "id -un; echo $0", timeout=10)
    assert result.stdout_text.split() == [sshd.user, "sh"]


async def test_stdin_is_passed(pool: SshPool, sshd: SshdHandle) -> None:
    text = await pool.run(sshd.target(), "cat", stdin="line one\nline two\n", timeout=10)
    assert text.stdout == b"line one\nline two\n"
    raw = await pool.run(sshd.target(), "wc -c", stdin=b"\x00\x01\xff" * 1000, timeout=10)
    assert raw.stdout.strip() == b"3000"


async def test_no_stdin_means_eof(pool: SshPool, sshd: SshdHandle) -> None:
    # A command that reads stdin must see EOF at once, not wait for the timeout.
    result = await pool.run(sshd.target(), "cat; echo done", timeout=5)
    assert result.stdout == b"done\n"


async def test_killed_by_signal_reports_128_plus_signal(pool: SshPool, sshd: SshdHandle) -> None:
    result = await pool.run(sshd.target(), "kill -TERM $$", timeout=10)
    assert result.exit_status == 128 + signal.SIGTERM


async def test_check_raises_with_last_stderr_line(pool: SshPool, sshd: SshdHandle) -> None:
    with pytest.raises(OperationalError) as info:
        await pool.run(
            sshd.target(), "echo first >&2; echo last words >&2; exit 3", timeout=10, check=True
        )
    assert info.value.exit_code == ExitCode.FAILURE
    assert "exit 3" in str(info.value)
    assert str(info.value).endswith("last words")
    ok = await pool.run(sshd.target(), "true", timeout=10, check=True)
    assert ok.ok


async def test_one_connection_is_reused(pool: SshPool, sshd: SshdHandle) -> None:
    before = sshd.accepted_logins()
    results = [await pool.run(sshd.target(), "echo $SSH_CLIENT", timeout=10) for _ in range(5)]
    # Concurrent commands share it too (more than OpenSSH's default 10 sessions at once).
    results += await asyncio.gather(
        *(pool.run(sshd.target(), "echo $SSH_CLIENT", timeout=10) for _ in range(15))
    )
    client_ports = {r.stdout.split()[1] for r in results}
    assert len(client_ports) == 1
    assert sshd.accepted_logins() - before == 1


async def test_timed_out_command_is_killed_remotely(
    pool: SshPool, sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    marker = f"homeops-timeout-{uuid.uuid4().hex}"
    try:
        start = time.monotonic()
        with pytest.raises(HomeopsTimeout) as info:
            await pool.run(sshd.target(), f"sleep 300; echo {marker}", timeout=1)
        elapsed = time.monotonic() - start
        assert info.value.exit_code == ExitCode.TIMEOUT
        assert str(info.value).endswith("timed out after 1s (remote command killed)")
        # Wall time only catches a hang (a loaded machine is slow, never early); which kill
        # path ran is read from the log: the "signal" request, not the fallback (root only).
        assert 1.0 <= elapsed < 1 + KILL_GRACE_S + SLACK_S
        assert timeout_kills(log_stream) == ["signal"]
        assert "by process group" not in log_stream.getvalue()
        assert await wait_gone(marker) == []
        # The connection survives a killed command.
        assert (await pool.run(sshd.target(), "echo alive", timeout=10)).stdout == b"alive\n"
    finally:
        kill_leftovers(marker)


async def test_timeout_before_the_command_started_says_so(pool: SshPool, sshd: SshdHandle) -> None:
    # Every command channel of the connection busy: the next command never gets one.
    marker = f"homeops-busy-{uuid.uuid4().hex}"
    busy = [
        asyncio.create_task(pool.run(sshd.target(), f"sleep 30; echo {marker}", timeout=60))
        for _ in range(MAX_CHANNELS_PER_CONNECTION)
    ]
    try:
        await wait_started(marker, COMMAND_CHANNELS)
        with pytest.raises(HomeopsTimeout) as info:
            await pool.run(sshd.target(), "true", timeout=0.5)
        assert str(info.value).endswith("timed out after 0.5s before the command started")
    finally:
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        kill_leftovers(marker)


@pytest.fixture(scope="module")
def sshd_default_sessions() -> Iterator[SshdHandle]:
    with start_sshd(max_sessions=MAX_CHANNELS_PER_CONNECTION) as handle:
        yield handle


async def test_many_commands_fit_default_max_sessions(
    pool: SshPool, sshd_default_sessions: SshdHandle
) -> None:
    # sshd frees a closed session's slot a moment after the close: with every channel in
    # use, a new one opened right after another closed would be refused ("open failed").
    target = sshd_default_sessions.target()
    results = await asyncio.gather(*(pool.run(target, "true", timeout=30) for _ in range(120)))
    assert all(r.ok for r in results)


@pytest.fixture(scope="module")
def root_sshd() -> Iterator[SshdHandle]:
    if not is_root():
        pytest.skip("needs root: logs in as root to exercise sshd's root-session path")
    with start_sshd(login_user="root") as handle:
        yield handle


@pytest.mark.root
async def test_timed_out_root_command_is_killed_by_fallback(
    pool: SshPool, root_sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    # sshd ignores "signal" requests for root sessions; the pool must still kill the command.
    marker = f"homeops-timeout-root-{uuid.uuid4().hex}"
    try:
        with pytest.raises(HomeopsTimeout) as info:
            await pool.run(root_sshd.target(), f"sleep 300; echo {marker}", timeout=1)
        assert str(info.value).endswith("(remote command killed)")
        assert await wait_gone(marker) == []
        assert timeout_kills(log_stream) == ["process-group"]
        assert "session signalling requires privilege separation" in root_sshd.log_text()
    finally:
        kill_leftovers(marker)


@pytest.mark.root
@pytest.mark.parametrize("how", ["task-cancel", "asyncio-timeout"])
async def test_cancelled_root_command_is_killed(
    pool: SshPool, root_sshd: SshdHandle, log_stream: io.StringIO, how: str
) -> None:
    # The job worker's cancel and its per-job asyncio.timeout both arrive as a cancellation:
    # the remote command must die even where sshd ignores "signal" requests (root logins).
    marker = f"homeops-cancel-root-{uuid.uuid4().hex}"
    command = f"sleep 300; echo {marker}"
    try:
        start = time.monotonic()
        if how == "task-cancel":
            task = asyncio.create_task(pool.run(root_sshd.target(), command, timeout=60))
            await wait_started(marker)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await pool.run(root_sshd.target(), command, timeout=60)
        assert time.monotonic() - start < 1 + CANCEL_KILL_BUDGET_S + SLACK_S
        assert await wait_gone(marker) == []
        assert "by process group" in log_stream.getvalue()
        # The connection is still usable afterwards.
        assert (await pool.run(root_sshd.target(), "echo alive", timeout=10)).stdout == b"alive\n"
    finally:
        kill_leftovers(marker)


@pytest.fixture(scope="module")
def root_sshd_default_sessions() -> Iterator[SshdHandle]:
    if not is_root():
        pytest.skip("needs root: logs in as root to exercise sshd's root-session path")
    with start_sshd(login_user="root", max_sessions=MAX_CHANNELS_PER_CONNECTION) as handle:
        yield handle


@pytest.mark.root
async def test_fallback_kill_gets_a_channel_when_all_are_busy(
    pool: SshPool, root_sshd_default_sessions: SshdHandle, log_stream: io.StringIO
) -> None:
    # OpenSSH's default MaxSessions 10 and more commands than that time out at once (root:
    # only the fallback kills): every kill still needs a channel of its own.
    sshd = root_sshd_default_sessions
    marker = f"homeops-busy-root-{uuid.uuid4().hex}"
    commands = [f"sleep 300; echo {marker}-{i}" for i in range(MAX_CHANNELS_PER_CONNECTION + 2)]
    try:
        results = await asyncio.gather(
            *(pool.run(sshd.target(), command, timeout=3) for command in commands),
            return_exceptions=True,
        )
        assert all(isinstance(r, HomeopsTimeout) for r in results), results
        endings = sorted(str(r).rsplit(" after 3s ", 1)[1] for r in results)
        killed = endings.count("(remote command killed)")
        # On a loaded machine ten fallback kills at once can outlast the caller's kill budget:
        # those say so honestly and finish in the background (checked by wait_gone below).
        pending = endings.count("(kill not confirmed yet: still trying in the background)")
        started = killed + pending
        # Every command that got a channel was killed or is being killed, the rest never
        # started; how many got a channel within the timeout depends on the machine's load
        # (on a quiet one all COMMAND_CHANNELS do), never more than the server allows.
        assert killed >= 1
        assert started <= COMMAND_CHANNELS
        assert endings.count("before the command started") == len(commands) - started
        assert "fallback kill failed" not in log_stream.getvalue()
        assert await wait_gone(marker) == []
    finally:
        kill_leftovers(marker)


async def test_refused_port_retries_then_unavailable(
    pool: SshPool, sshd: SshdHandle, sleeps: SleepRecorder
) -> None:
    port = free_port()
    with pytest.raises(SshUnavailable) as info:
        await pool.run(sshd.target(port=port), "true", timeout=10)
    assert sleeps.calls == [0.5, 1.0]
    message = str(info.value)
    assert f"{sshd.user}@127.0.0.1:{port}" in message
    assert "3 attempts" in message
    assert "\n" not in message
    assert info.value.exit_code == ExitCode.UNAVAILABLE


async def test_concurrent_first_commands_share_one_connect(
    pool: SshPool, sshd: SshdHandle, sleeps: SleepRecorder, log_stream: io.StringIO
) -> None:
    # Five commands to a host that is down: one connect (3 attempts) whose failure all five
    # get, not five connects one after another.
    target = sshd.target(port=free_port())
    results = await asyncio.gather(
        *(pool.run(target, "true", timeout=10) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, SshUnavailable) for r in results), results
    assert all("after 3 attempts" in str(r) for r in results)
    assert sleeps.calls == [0.5, 1.0]
    assert log_stream.getvalue().count('msg="connection failed"') == 1
    # The failure is not remembered: the next command tries again.
    with pytest.raises(SshUnavailable):
        await pool.run(target, "true", timeout=10)
    assert sleeps.calls == [0.5, 1.0, 0.5, 1.0]


async def test_concurrent_first_commands_share_one_login(sshd: SshdHandle) -> None:
    before = sshd.accepted_logins()
    async with SshPool() as pool:
        results = await asyncio.gather(
            *(pool.run(sshd.target(), "echo $SSH_CLIENT", timeout=10) for _ in range(5))
        )
    assert len({r.stdout for r in results}) == 1
    assert sshd.accepted_logins() - before == 1


async def test_connect_timeout_is_retried(
    pool: SshPool, sshd: SshdHandle, sleeps: SleepRecorder
) -> None:
    # A peer that accepts TCP but never speaks SSH: only connect_timeout ends the attempt.
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SshUnavailable, match=r"connect timed out after 0\.3s"):
            await pool.run(sshd.target(port=port, connect_timeout=0.3), "true", timeout=10)
        assert sleeps.calls == [0.5, 1.0]
        assert len(held) == 3
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_wrong_key_is_not_retried(
    pool: SshPool, sshd: SshdHandle, sleeps: SleepRecorder, tmp_path: Path
) -> None:
    before = sshd.log_text().count("Connection from 127.0.0.1")
    with pytest.raises(SshAuthError) as info:
        await pool.run(sshd.target(identity_file=wrong_key(tmp_path)), "true", timeout=10)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert sleeps.calls == []
    assert sshd.log_text().count("Connection from 127.0.0.1") - before == 1


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(HostKeyPolicy.STRICT, id="strict"),
        pytest.param(HostKeyPolicy.ACCEPT_NEW, id="accept-new"),
    ],
)
async def test_host_key_mismatch_is_refused(
    pool: SshPool, sshd: SshdHandle, sleeps: SleepRecorder, tmp_path: Path, policy: HostKeyPolicy
) -> None:
    other = tmp_path / "other_host_key"
    other_public = generate_key(other)
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd.known_hosts_name} {other_public}\n")
    with pytest.raises(HostKeyError) as info:
        await pool.run(sshd.target(known_hosts=known, host_key_policy=policy), "true", timeout=10)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert sleeps.calls == []
    assert known.read_text() == f"{sshd.known_hosts_name} {other_public}\n"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="no-file"),
        pytest.param(
            f"[10.0.0.9]:22 {UNRELATED_KEY}\n",
            id="other-hosts-only",
        ),
    ],
)
async def test_unknown_host_is_refused_under_strict(
    pool: SshPool, sshd: SshdHandle, sleeps: SleepRecorder, tmp_path: Path, content: str | None
) -> None:
    known = tmp_path / "known_hosts"
    if content is not None:
        known.write_text(content)
    with pytest.raises(HostKeyError):
        await pool.run(sshd.target(known_hosts=known), "true", timeout=10)
    assert sleeps.calls == []
    assert known.exists() == (content is not None)


async def test_accept_new_records_unknown_host(sshd: SshdHandle, tmp_path: Path) -> None:
    known = tmp_path / "fresh" / ".ssh" / "known_hosts"
    async with SshPool() as pool:
        result = await pool.run(
            sshd.target(known_hosts=known, host_key_policy=HostKeyPolicy.ACCEPT_NEW),
            "echo hi",
            timeout=10,
        )
    assert result.stdout == b"hi\n"
    assert known.read_text() == sshd.known_hosts_line() + "\n"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700
    # The recorded key is now what STRICT trusts; a second ACCEPT_NEW adds nothing.
    async with SshPool() as pool:
        assert (await pool.run(sshd.target(known_hosts=known), "true", timeout=10)).ok
        await pool.run(
            sshd.target(known_hosts=known, host_key_policy=HostKeyPolicy.ACCEPT_NEW),
            "true",
            timeout=10,
        )
    assert known.read_text() == sshd.known_hosts_line() + "\n"


async def test_accept_new_keeps_existing_entries(sshd: SshdHandle, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    existing = f"[127.0.0.1]:1 {UNRELATED_KEY}\n"
    known.write_text(existing)
    async with SshPool() as pool:
        target = sshd.target(known_hosts=known, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
        assert (await pool.run(target, "true", timeout=10)).ok
    assert known.read_text() == existing + sshd.known_hosts_line() + "\n"


async def test_sftp_round_trip(pool: SshPool, sshd: SshdHandle, tmp_path: Path) -> None:
    payload = os.urandom(300_000) + bytes(range(256))
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    remote = f"/tmp/homeops-sftp-{uuid.uuid4().hex}.bin"
    back = tmp_path / "down.bin"
    try:
        await pool.put(sshd.target(), local, remote, timeout=30)
        size = await pool.run(sshd.target(), f"wc -c < {remote}", timeout=10)
        assert int(size.stdout) == len(payload)
        await pool.get(sshd.target(), remote, back, timeout=30)
        assert back.read_bytes() == payload
    finally:
        await pool.run(sshd.target(), f"rm -f {remote}", timeout=10)


async def test_sftp_listdir_names_files_and_dirs_and_none_when_absent(
    pool: SshPool, sshd: SshdHandle
) -> None:
    remote = f"/tmp/homeops-ls-{uuid.uuid4().hex}"
    try:
        await pool.run(
            sshd.target(), f"mkdir -p {remote}/sub && printf abc > {remote}/b.txt", timeout=10
        )
        entries = await pool.listdir(sshd.target(), remote, timeout=10)
        assert entries is not None
        assert [(e.name, e.size, e.is_file, e.is_dir) for e in entries] == [
            ("b.txt", 3, True, False),
            ("sub", entries[1].size, False, True),
        ]
        assert await pool.listdir(sshd.target(), remote + "/missing", timeout=10) is None
    finally:
        await pool.run(sshd.target(), f"rm -rf {remote}", timeout=10)


def sftp_sessions(sshd: SshdHandle) -> int:
    return sshd.log_text().count("subsystem 'sftp'")


async def test_sftp_calls_share_one_kept_session(
    pool: SshPool, sshd: SshdHandle, tmp_path: Path
) -> None:
    # Each SFTP session is a new sftp-server process on the server: a job's pull after every
    # command must not pay one per call.
    local = tmp_path / "f.txt"
    local.write_text("x")
    remote = f"/tmp/homeops-kept-{uuid.uuid4().hex}.txt"
    before = sftp_sessions(sshd)
    try:
        await asyncio.gather(*(pool.listdir(sshd.target(), "/tmp", timeout=10) for _ in range(4)))
        await pool.put(sshd.target(), local, remote, timeout=10)
        await pool.get(sshd.target(), remote, tmp_path / "back.txt", timeout=10)
        assert await pool.listdir(sshd.target(), remote + ".missing", timeout=10) is None
    finally:
        await pool.run(sshd.target(), f"rm -f {remote}", timeout=10)
    assert (tmp_path / "back.txt").read_text() == "x"
    assert sftp_sessions(sshd) - before == 1


async def test_a_kept_sftp_session_gives_its_slot_to_a_waiting_command(
    pool: SshPool, sshd: SshdHandle
) -> None:
    # With one session allowed, the kept SFTP session would starve every command until its
    # timeout; it is closed instead, and opened again by the next SFTP call.
    target = sshd.target(max_sessions=1)
    before = sftp_sessions(sshd)
    assert await pool.listdir(target, "/tmp", timeout=10) is not None
    done = await pool.run(target, "echo after", timeout=5)
    assert done.stdout == b"after\n"
    assert await pool.listdir(target, "/tmp", timeout=10) is not None
    assert sftp_sessions(sshd) - before == 2


async def test_sftp_missing_remote_file_is_operational_error(
    pool: SshPool, sshd: SshdHandle, tmp_path: Path
) -> None:
    with pytest.raises(OperationalError, match="sftp get"):
        await pool.get(sshd.target(), "/nonexistent/homeops/file", tmp_path / "x", timeout=10)


async def test_reconnects_after_server_drops_connection(
    pool: SshPool, sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    before = sshd.accepted_logins()
    first = await pool.run(sshd.target(), "echo $SSH_CLIENT", timeout=10)
    # Kill the server side of our connection (the sessions below the listening sshd).
    for pid in sshd.session_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    second = await pool.run(sshd.target(), "echo $SSH_CLIENT", timeout=10)
    assert second.stdout.split()[1] != first.stdout.split()[1]
    # And again once the loss has surely been noticed (the other code path).
    for pid in sshd.session_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.3)
    third = await pool.run(sshd.target(), "echo $SSH_CLIENT", timeout=10)
    assert third.stdout.split()[1] not in {first.stdout.split()[1], second.stdout.split()[1]}
    assert sshd.accepted_logins() - before == 3
    reconnects = [line for line in log_stream.getvalue().splitlines() if "msg=reconnected" in line]
    assert len(reconnects) == 2


async def test_logs_command_without_secrets_or_stdin(
    pool: SshPool, sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    hlog.register_secret("tok-s3cr3t-value")
    await pool.run(
        sshd.target(), "echo tok-s3cr3t-value >/dev/null", stdin="stdin-private-data", timeout=10
    )
    lines = log_stream.getvalue().splitlines()
    assert "tok-s3cr3t-value" not in log_stream.getvalue()
    assert "stdin-private-data" not in log_stream.getvalue()
    [run_line] = [line for line in lines if "op=run" in line and "command finished" in line]
    for field in (
        f"ssh_host={sshd.host}",
        f"ssh_port={sshd.port}",
        f"ssh_user={sshd.user}",
        "exit_status=0",
        "duration_ms=",
    ):
        assert field in run_line
    assert any(
        "op=connect" in line and "level=info" in line and "msg=connected" in line for line in lines
    )


async def test_retry_is_logged_as_warning(
    pool: SshPool, sshd: SshdHandle, log_stream: io.StringIO
) -> None:
    with pytest.raises(SshUnavailable):
        await pool.run(sshd.target(port=free_port()), "true", timeout=10)
    warnings = [line for line in log_stream.getvalue().splitlines() if "level=warn" in line]
    assert sum("retrying" in line for line in warnings) == 2


async def test_closed_pool_refuses_work(sshd: SshdHandle) -> None:
    pool = SshPool()
    await pool.run(sshd.target(), "true", timeout=10)
    await pool.close()
    with pytest.raises(OperationalError, match="closed"):
        await pool.run(sshd.target(), "true", timeout=10)


async def test_connection_prefers_aes_gcm(pool: SshPool, sshd: SshdHandle) -> None:
    # The cheaper AEAD for asyncssh (core/ssh/connect.py CIPHERS), both ways.
    await pool.run(sshd.target(), "true", timeout=10)
    entry, new = await pool._connection(sshd.target())
    assert not new
    ciphers = {entry.conn.get_extra_info(k) for k in ("send_cipher", "recv_cipher")}
    assert ciphers == {"aes128-gcm@openssh.com"}
