"""Establishing one connection: trust (known_hosts, accept-new), keys, and the connect itself.

asyncssh is imported inside the functions, so importing the seam stays cheap.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from homeops.core.errors import ConfigError
from homeops.core.logging import get_logger
from homeops.core.retry import NO_RETRY, RetryPolicy, Sleep, retry_async
from homeops.core.ssh.coalesce import coalesce_writes
from homeops.core.ssh.errors import is_retryable_ssh_error, one_line, translate_connect_error
from homeops.core.ssh.model import DEFAULT_PORT, HostKeyPolicy, SshTarget, log_fields

if TYPE_CHECKING:
    from asyncssh import SSHClient, SSHClientConnection, SSHKey, SSHKnownHosts

_log = get_logger("core.ssh")


def load_known_hosts(target: SshTarget) -> SSHKnownHosts:
    import asyncssh

    path = target.known_hosts_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        # No file is an empty trust list: STRICT then refuses every host, ACCEPT_NEW starts it.
        text = ""
    except OSError as exc:
        raise ConfigError(str(path), "known_hosts", one_line(exc)) from exc
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise ConfigError(str(path), "known_hosts", one_line(exc)) from exc


def load_identity(path: Path) -> SSHKey:
    import asyncssh

    # Loaded once up front: a missing or encrypted key is a config error, not worth retrying.
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise ConfigError(str(path), "identity_file", one_line(exc)) from exc


def append_known_host(path: Path, name: str, key_line: str) -> None:
    """Append ``name key_line`` to known_hosts, creating it 0600 (and its dir 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as out:
        # Never glue the new entry onto a last line that lacks its newline.
        if out.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            out.write("\n")
        out.write(f"{name} {key_line}\n")


def client_factory(
    target: SshTarget, known: SSHKnownHosts, accepted: list[SSHKey]
) -> type[SSHClient]:
    """An asyncssh client class that applies ``target.host_key_policy``."""
    import asyncssh

    accept_new = target.host_key_policy is HostKeyPolicy.ACCEPT_NEW

    class _Client(asyncssh.SSHClient):
        def validate_host_public_key(self, host: str, addr: str, port: int, key: SSHKey) -> bool:
            # asyncssh asks only when known_hosts does not already trust ``key``. Like
            # OpenSSH's accept-new: trust it only if the host has no entry at all; a host with
            # any entry (another key, a CA, a revocation) presenting this key is a mismatch.
            if not accept_new:
                return False
            lookup_port = None if port == DEFAULT_PORT else port
            if any(asyncssh.match_known_hosts(known, host, addr, lookup_port)):
                return False
            accepted.append(key)
            return True

    return _Client


# AES-GCM first: asyncssh builds ChaCha20-Poly1305 (its default first choice) from several
# cipher contexts per packet in Python, where AES-GCM is one AEAD call; on a connection that
# carries a job's every command, that was ~0.7 ms of CPU per windows.exec job. Every server
# homeops talks to (OpenSSH >= 6.2, Windows' OpenSSH) offers both; ChaCha20 stays as fallback.
CIPHERS: Final = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


async def open_connection(
    target: SshTarget,
    *,
    policy: RetryPolicy,
    sleep: Sleep,
    reconnect: bool = False,
    purpose: str = "commands",
) -> SSHClientConnection:
    """Log in to ``target``, retrying transport failures under ``policy`` (commands only).

    A connection for another ``purpose`` (a fallback kill) is tried once: it runs on a budget
    of its own that retrying would only eat. Failures are translated to homeops errors.
    """
    import asyncssh

    known = load_known_hosts(target)
    keys = [load_identity(target.identity_file)] if target.identity_file else ()
    accepted: list[SSHKey] = []
    client = client_factory(target, known, accepted)
    attempts = 0

    async def attempt() -> SSHClientConnection:
        nonlocal attempts
        attempts += 1
        accepted.clear()
        return await asyncssh.connect(
            target.host,
            target.port,
            username=target.user,
            client_factory=client,
            known_hosts=known,
            # An explicit key means only that key (OpenSSH's IdentitiesOnly); otherwise
            # asyncssh's defaults: the agent and ~/.ssh/id_*.
            client_keys=keys,
            agent_path=None if target.identity_file else (),
            password_auth=False,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            # Our settings are the whole truth: no ~/.ssh/config surprises.
            config=None,
            connect_timeout=target.connect_timeout,
            keepalive_interval=target.keepalive_interval,
            keepalive_count_max=target.keepalive_count_max,
            encryption_algs=CIPHERS,
        )

    start = time.monotonic()
    extra = {} if purpose == "commands" else {"purpose": purpose}
    try:
        conn = await retry_async(
            attempt,
            policy=policy if purpose == "commands" else NO_RETRY,
            retry_if=is_retryable_ssh_error,
            op="connect",
            sleep=sleep,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = translate_connect_error(exc, target, attempts)
        _log.warn(
            "connect",
            "connection failed",
            err=error,
            attempts=attempts,
            **extra,
            **log_fields(target),
        )
        raise error from exc
    if accepted:
        _record_new_key(target, accepted[-1])
    if not coalesce_writes(conn):
        # A newer asyncssh moved its transport: commands still work, at more send() calls.
        _log.debug("connect", "cannot coalesce writes on this asyncssh", **log_fields(target))
    _log.info(
        "connect",
        "reconnected" if reconnect else "connected",
        duration_ms=(time.monotonic() - start) * 1000,
        attempts=attempts,
        **extra,
        **log_fields(target),
    )
    return conn


def _record_new_key(target: SshTarget, key: SSHKey) -> None:
    path = target.known_hosts_path()
    kind, blob, *_ = key.export_public_key("openssh").decode().split()
    append_known_host(path, target.known_hosts_name, f"{kind} {blob}")
    _log.warn(
        "connect",
        "accepted new host key (accept-new)",
        known_hosts=str(path),
        host_key=f"{kind} {key.get_fingerprint()}",
        **log_fields(target),
    )
