"""core/ssh/oneshot.py: commands through OpenSSH's ssh and a persisted master, against a real
sshd on 127.0.0.1 (tests/fixtures/sshd.py).

Every test gets its own state dir, so its own control socket and master; the master is
stopped (``ssh -O exit``) when the test ends.
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from homeops.core.errors import (
    ExitCode,
    HomeopsTimeout,
    HostKeyError,
    OperationalError,
    SshAuthError,
    SshUnavailable,
)
from homeops.core.ssh.oneshot import (
    OneShotSsh,
    connect_failure,
    parse_mux_log,
    socket_name,
)
from tests.fixtures.common import free_port
from tests.fixtures.sshd import SshdHandle, generate_key, kill_leftovers, wait_gone, wait_started

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class SleepRecorder:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def oneshot(
    tmp_path: Path, sshd: SshdHandle, sleeps: SleepRecorder
) -> AsyncIterator[OneShotSsh]:
    runner = OneShotSsh(state_dir=tmp_path / "state", sleep=sleeps)
    try:
        yield runner
    finally:
        await runner.close()
        await runner.stop_master(sshd.target())


def _logins(sshd: SshdHandle) -> int:
    return sshd.log_text().count("Accepted publickey")


# -- pure parts ----------------------------------------------------------------------------------


def test_mux_log_tells_opened_and_exit_status() -> None:
    text = (
        "debug1: mux_client_hello_exchange: master version 4\n"
        "debug2: mux_client_request_session: master session id: 3\n"
        "debug2: Received exit status from master 255\n"
    )
    mux = parse_mux_log(text)
    assert mux.reached and mux.opened and mux.exit_status == 255 and mux.messages == ()
    never = parse_mux_log("Control socket connect(/x): Connection refused\n")
    assert not never.reached and not never.opened and never.exit_status is None
    assert never.messages == ("Control socket connect(/x): Connection refused",)


@pytest.mark.parametrize(
    ("log", "kind", "transient"),
    [
        ("ssh: connect to host 127.0.0.1 port 1: Connection refused", SshUnavailable, True),
        ("homeops-test@127.0.0.1: Permission denied (publickey).", SshAuthError, False),
        ("Host key verification failed.", HostKeyError, False),
        ("something else entirely", SshUnavailable, False),
    ],
)
def test_connect_failure_classifies_ssh_messages(
    sshd: SshdHandle, log: str, kind: type[Exception], transient: bool
) -> None:
    failure = connect_failure(sshd.target(), log, 255)
    assert isinstance(failure.error, kind) and failure.transient is transient
    assert sshd.host in str(failure.error)


def test_socket_name_differs_per_credentials(sshd: SshdHandle, tmp_path: Path) -> None:
    other_key = tmp_path / "other"
    generate_key(other_key)
    assert socket_name(sshd.target()) == socket_name(sshd.target())
    assert socket_name(sshd.target()) != socket_name(sshd.target(identity_file=other_key))
    assert socket_name(sshd.target()) != socket_name(sshd.target(user="root"))


# -- against sshd -------------------------------------------------------------------------------


async def test_commands_share_one_login_and_the_master_outlives_the_runner(
    oneshot: OneShotSsh, sshd: SshdHandle, tmp_path: Path
) -> None:
    before = _logins(sshd)
    first = await oneshot.run(sshd.target(), "echo one; echo err >&2", timeout=20)
    assert (first.exit_status, first.stdout, first.stderr) == (0, b"one\n", b"err\n")
    # A second runner (another CLI process) on the same state dir uses the same master.
    again = OneShotSsh(state_dir=tmp_path / "state")
    second = await again.run(sshd.target(), "echo two", timeout=20)
    await again.close()
    assert second.stdout == b"two\n"
    assert _logins(sshd) - before == 1
    assert await oneshot.master_pid(sshd.target()) is not None
    path = oneshot.control_path(sshd.target())
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    # The clients' and the master's -E logs are deleted after each call. (Only those: a
    # loaded machine has shown a second socket there, OpenSSH's own temporary name for a
    # control socket it is about to link into place.)
    left = sorted(p.name for p in path.parent.iterdir())
    assert path.name in left
    assert [n for n in left if n.endswith((".log", ".master"))] == [], left


async def test_exit_status_stdin_and_check(oneshot: OneShotSsh, sshd: SshdHandle) -> None:
    done = await oneshot.run(sshd.target(), "exit 7", timeout=20)
    assert done.exit_status == 7 and not done.ok
    # 255 from the command itself is its status, not a transport failure.
    assert (await oneshot.run(sshd.target(), "exit 255", timeout=20)).exit_status == 255
    fed = await oneshot.run(sshd.target(), "cat", stdin=b"in\x00put", timeout=20)
    assert fed.stdout == b"in\x00put"
    with pytest.raises(OperationalError, match=r"exit 3: boom") as info:
        await oneshot.run(sshd.target(), "echo boom >&2; exit 3", timeout=20, check=True)
    assert info.value.exit_code == ExitCode.FAILURE


async def test_sinks_get_output_as_it_arrives_and_caps_apply(
    oneshot: OneShotSsh, sshd: SshdHandle
) -> None:
    chunks: list[bytes] = []
    done = await oneshot.run(
        sshd.target(), "printf abc; printf def", timeout=20, stdout=chunks.append
    )
    assert b"".join(chunks) == b"abcdef" and done.stdout == b""
    capped = await oneshot.run(sshd.target(), "head -c 5000 /dev/zero", timeout=20, max_output=100)
    assert len(capped.stdout) == 100 and capped.stdout_truncated


async def test_concurrent_commands_on_one_master(oneshot: OneShotSsh, sshd: SshdHandle) -> None:
    before = _logins(sshd)
    results = await asyncio.gather(
        *(oneshot.run(sshd.target(), f"echo {i}", timeout=30) for i in range(6))
    )
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(6)]
    # Concurrent first calls may each start a master; the losers exit. At most one per call.
    assert 1 <= _logins(sshd) - before <= 6


async def test_timeout_kills_the_remote_command(oneshot: OneShotSsh, sshd: SshdHandle) -> None:
    marker = f"homeops-oneshot-{uuid.uuid4().hex}"
    try:
        with pytest.raises(HomeopsTimeout, match=r"timed out after 1s") as info:
            await oneshot.run(sshd.target(), f"sleep 30; echo {marker}", timeout=1)
        assert info.value.exit_code == ExitCode.TIMEOUT
        assert await wait_gone(marker) == []
        # The master survives the kill and serves the next command.
        assert (await oneshot.run(sshd.target(), "echo after", timeout=20)).stdout == b"after\n"
    finally:
        kill_leftovers(marker)


async def test_cancellation_kills_the_remote_command(oneshot: OneShotSsh, sshd: SshdHandle) -> None:
    marker = f"homeops-oneshot-{uuid.uuid4().hex}"
    task = asyncio.create_task(oneshot.run(sshd.target(), f"sleep 30; echo {marker}", timeout=30))
    try:
        await wait_started(marker)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_gone(marker) == []
    finally:
        kill_leftovers(marker)


async def test_a_stopped_master_is_replaced(oneshot: OneShotSsh, sshd: SshdHandle) -> None:
    await oneshot.run(sshd.target(), "true", timeout=20)
    assert await oneshot.stop_master(sshd.target())
    assert await oneshot.master_pid(sshd.target()) is None
    assert (await oneshot.run(sshd.target(), "echo back", timeout=20)).stdout == b"back\n"


async def test_refused_port_is_retried_then_unavailable(
    oneshot: OneShotSsh, sshd: SshdHandle, sleeps: SleepRecorder
) -> None:
    target = sshd.target(port=free_port())
    with pytest.raises(SshUnavailable, match=r"cannot connect after 3 attempts") as info:
        await oneshot.run(target, "true", timeout=30)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert "Connection refused" in str(info.value)
    assert len(sleeps.calls) == 2


async def test_wrong_key_is_an_auth_error_not_retried(
    oneshot: OneShotSsh, sshd: SshdHandle, sleeps: SleepRecorder, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    generate_key(stranger)
    with pytest.raises(SshAuthError, match="authentication failed"):
        await oneshot.run(sshd.target(identity_file=stranger), "true", timeout=20)
    assert sleeps.calls == []


async def test_unknown_host_key_is_refused(
    oneshot: OneShotSsh, sshd: SshdHandle, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError, match="host key not trusted") as info:
        await oneshot.run(sshd.target(known_hosts=empty), "true", timeout=20)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
