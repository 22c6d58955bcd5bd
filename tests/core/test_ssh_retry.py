"""Pure parts of core/ssh: the retry predicate as a table, names, results, known_hosts writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from homeops.core.errors import (
    HomeopsTimeout,
    HostKeyError,
    OperationalError,
    SshAuthError,
    SshUnavailable,
)
from homeops.core.ssh import (
    HostKeyPolicy,
    SshResult,
    SshTarget,
    append_known_host,
    is_retryable_ssh_error,
)


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        pytest.param(OSError("network unreachable"), True, id="oserror"),
        pytest.param(ConnectionRefusedError(111, "refused"), True, id="refused"),
        pytest.param(ConnectionResetError(104, "reset"), True, id="reset"),
        pytest.param(TimeoutError(), True, id="connect-timeout"),
        pytest.param(asyncssh.ConnectionLost("lost"), True, id="connection-lost"),
        pytest.param(asyncssh.DisconnectError(11, "bye"), True, id="disconnect"),
        pytest.param(asyncssh.PermissionDenied("denied"), False, id="permission-denied"),
        pytest.param(asyncssh.HostKeyNotVerifiable("bad key"), False, id="hostkey-not-verifiable"),
        pytest.param(asyncssh.KeyExchangeFailed("no alg"), False, id="kex-failed"),
        pytest.param(asyncssh.IllegalUserName("x y"), False, id="illegal-user"),
        pytest.param(asyncssh.ChannelOpenError(1, "prohibited"), False, id="channel-open"),
        pytest.param(HostKeyError("mismatch"), False, id="homeops-hostkey"),
        pytest.param(SshAuthError("denied"), False, id="homeops-auth"),
        pytest.param(SshUnavailable("gave up"), False, id="homeops-unavailable"),
        pytest.param(OperationalError("exit 1"), False, id="operational"),
        pytest.param(HomeopsTimeout("slow"), False, id="homeops-timeout"),
        pytest.param(FileNotFoundError("key"), False, id="local-file-missing"),
        pytest.param(PermissionError("key"), False, id="local-permission"),
        pytest.param(ValueError("bug"), False, id="value-error"),
    ],
)
def test_is_retryable_ssh_error(exc: BaseException, retryable: bool) -> None:
    assert is_retryable_ssh_error(exc) is retryable


@pytest.mark.parametrize(
    ("host", "port", "name", "dest"),
    [
        pytest.param("h1", 22, "h1", "root@h1:22", id="default-port"),
        pytest.param("127.0.0.1", 2222, "[127.0.0.1]:2222", "root@127.0.0.1:2222", id="port"),
        pytest.param("::1", 22, "::1", "root@[::1]:22", id="ipv6-default-port"),
        pytest.param("::1", 2200, "[::1]:2200", "root@[::1]:2200", id="ipv6-port"),
    ],
)
def test_target_names(host: str, port: int, name: str, dest: str) -> None:
    target = SshTarget(host=host, user="root", port=port)
    assert target.known_hosts_name == name
    assert target.destination == dest


def test_target_defaults_are_strict_with_home_known_hosts() -> None:
    target = SshTarget(host="h", user="u")
    assert target.host_key_policy is HostKeyPolicy.STRICT
    assert target.known_hosts_path() == Path("~/.ssh/known_hosts").expanduser()
    # A dead peer is noticed within ~10 s: 3 s keepalives, given up after 2 unanswered.
    assert (target.connect_timeout, target.keepalive_interval, target.keepalive_count_max) == (
        10.0,
        3.0,
        2,
    )
    assert target.max_sessions is None


@pytest.mark.parametrize(
    ("status", "ok"), [pytest.param(0, True, id="zero"), pytest.param(1, False, id="one")]
)
def test_result_ok(status: int, ok: bool) -> None:
    assert SshResult(status, b"", b"", 1.0).ok is ok


def test_append_known_host_creates_private_file_and_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "known_hosts"
    append_known_host(path, "[h]:2", "ssh-ed25519 AAAA")
    assert path.read_text() == "[h]:2 ssh-ed25519 AAAA\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_append_known_host_never_glues_onto_last_line(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("other ssh-ed25519 BBBB")  # no trailing newline
    append_known_host(path, "h", "ssh-ed25519 AAAA")
    assert path.read_text().splitlines() == ["other ssh-ed25519 BBBB", "h ssh-ed25519 AAAA"]


def test_importing_ssh_does_not_import_asyncssh() -> None:
    code = (
        "import sys, homeops.core.ssh as s;"
        "s.is_retryable_ssh_error(OSError());"
        "sys.exit(1 if 'asyncssh' in sys.modules else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], timeout=60, env={**os.environ}, capture_output=True
    )
    assert done.returncode == 0, done.stderr
