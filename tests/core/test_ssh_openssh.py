"""openssh_options / nix_sshopts: a target as OpenSSH client options, proved with the real
``ssh`` client against the loopback sshd (tests/fixtures/sshd.py)."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from homeops.core.errors import UsageError
from homeops.core.ssh import HostKeyPolicy, SshTarget, nix_sshopts, openssh_options
from tests.fixtures.sshd import SshdHandle

UNRELATED_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOaG1xvIDqtNoNcAk1iZzkU3ObPaG44mo7KRE0bTq0Nq"


def _ssh(target: SshTarget, *command: str, options: list[str] | None = None):
    argv = ["ssh", *(options or openssh_options(target)), target.host, *command]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def _pairs(options: list[str]) -> dict[str, str]:
    assert options[:2] == ["-F", "none"]
    rest = options[2:]
    assert rest[::2] == ["-o"] * (len(rest) // 2)
    return dict(o.split("=", 1) for o in rest[1::2])


def test_options_table() -> None:
    target = SshTarget(
        host="h",
        user="deploy",
        port=2222,
        identity_file=Path("/k/id"),
        known_hosts=Path("/k/known_hosts"),
        connect_timeout=2.5,
        keepalive_interval=3.0,
        keepalive_count_max=2,
    )
    assert _pairs(openssh_options(target)) == {
        "BatchMode": "yes",
        "User": "deploy",
        "Port": "2222",
        "UserKnownHostsFile": "/k/known_hosts",
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "ConnectTimeout": "3",
        "ServerAliveInterval": "3",
        "ServerAliveCountMax": "2",
        "IdentityFile": "/k/id",
        "IdentitiesOnly": "yes",
    }
    accept = dataclasses.replace(target, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
    assert _pairs(openssh_options(accept))["StrictHostKeyChecking"] == "accept-new"
    # No identity: the agent and default keys, as the pool does without one.
    assert "IdentityFile" not in _pairs(openssh_options(SshTarget("h", "u")))
    assert openssh_options(target, read_config=True)[:2] == ["-o", "BatchMode=yes"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param("/a/kh", "/a/kh", id="plain"),
        pytest.param("/a b/kh", '"/a b/kh"', id="space"),
        pytest.param("/a%h/kh", "/a%%h/kh", id="percent-token"),
        pytest.param('/a"b/kh', '"/a\\"b/kh"', id="double-quote"),
    ],
)
def test_paths_are_written_for_ssh_config_parsing(path: str, value: str) -> None:
    target = SshTarget("h", "u", known_hosts=Path(path))
    assert _pairs(openssh_options(target))["UserKnownHostsFile"] == value


@pytest.mark.integration
def test_real_ssh_logs_in_with_the_options(sshd: SshdHandle) -> None:
    done = _ssh(sshd.target(), "echo", "ok")
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


@pytest.mark.integration
def test_real_ssh_with_awkward_paths(sshd: SshdHandle, tmp_path: Path) -> None:
    # A space and a % in the directory: both must reach ssh as one literal path.
    folder = tmp_path / "my keys %d"
    folder.mkdir()
    known = folder / "known_hosts"
    shutil.copy(sshd.known_hosts, known)
    key = folder / "id key"
    shutil.copy(sshd.identity_file, key)
    key.chmod(0o600)
    done = _ssh(sshd.target(known_hosts=known, identity_file=key), "true")
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_strict_refuses_a_wrong_known_hosts_entry(sshd: SshdHandle, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd.known_hosts_name} {UNRELATED_KEY}\n")
    done = _ssh(sshd.target(known_hosts=known), "echo", "ran")
    assert done.returncode == 255
    assert "ran" not in done.stdout
    assert "Host key verification failed" in done.stderr or "IDENTIFICATION" in done.stderr
    # accept-new trusts only hosts with no entry at all: a mismatch is still refused.
    accept = sshd.target(known_hosts=known, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
    assert _ssh(accept, "true").returncode == 255


@pytest.mark.integration
def test_strict_refuses_an_unknown_host_and_accept_new_records_it(
    sshd: SshdHandle, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    assert _ssh(sshd.target(known_hosts=known), "true").returncode == 255
    assert not known.exists() or sshd.host_public_key not in known.read_text()
    accept = sshd.target(known_hosts=known, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
    done = _ssh(accept, "true")
    assert done.returncode == 0, done.stderr
    # Recorded in the target's file, so the next strict login trusts it.
    assert _ssh(sshd.target(known_hosts=known), "true").returncode == 0


@pytest.mark.integration
def test_nix_sshopts_split_both_ways_logs_in(sshd: SshdHandle) -> None:
    target = sshd.target()
    value = nix_sshopts(target)
    # nixos-rebuild-ng splits with shlex, Nix at whitespace: both must give the same words.
    assert shlex.split(value) == value.split() == openssh_options(target)
    done = _ssh(target, "true", options=value.split())
    assert done.returncode == 0, done.stderr


def test_nix_sshopts_refuses_words_that_would_split_differently() -> None:
    with pytest.raises(UsageError, match="NIX_SSHOPTS"):
        nix_sshopts(SshTarget("h", "u", known_hosts=Path("/a b/known_hosts")))
