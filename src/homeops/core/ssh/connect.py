"""Establishing a connection: the retry predicate, error translation, trust and keys.

asyncssh is imported inside the functions, so importing the seam stays cheap.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from homeops.core.errors import (
    ConfigError,
    HomeopsError,
    HostKeyError,
    SshAuthError,
    SshUnavailable,
)
from homeops.core.ssh.model import DEFAULT_PORT, HostKeyPolicy, SshTarget

if TYPE_CHECKING:
    from asyncssh import SSHClient, SSHKey, SSHKnownHosts


def is_retryable_ssh_error(exc: BaseException) -> bool:
    """Whether a failed connection attempt is worth another try.

    True for transport failures (refused, unreachable, reset, lost, connect timeout); false for
    authentication, host-key, protocol-negotiation errors and everything homeops raised itself.
    """
    if isinstance(exc, HomeopsError):
        return False
    # Only asyncssh raises asyncssh exceptions: if it is not loaded, do not pay to import it.
    if "asyncssh" in sys.modules:
        import asyncssh

        if isinstance(exc, asyncssh.Error):
            final = (
                asyncssh.PermissionDenied,
                asyncssh.HostKeyNotVerifiable,
                asyncssh.IllegalUserName,
                asyncssh.KeyExchangeFailed,
                asyncssh.ProtocolNotSupported,
            )
            # ConnectionLost and a bare disconnect (server restarting, MaxStartups) are
            # transient; the rest say the two sides will never agree, so trying again is noise.
            return isinstance(exc, asyncssh.DisconnectError) and not isinstance(exc, final)
    # Local file problems are OSErrors too, but no amount of waiting fixes them.
    local = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    return isinstance(exc, OSError) and not isinstance(exc, local)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text or type(exc).__name__


def translate_connect_error(exc: BaseException, target: SshTarget, attempts: int) -> HomeopsError:
    """Map what connecting raised to a homeops error (all exit 3)."""
    import asyncssh

    dest = target.destination
    match exc:
        case HomeopsError():
            return exc
        case asyncssh.PermissionDenied():
            return SshAuthError(f"ssh {dest}: authentication failed: {one_line(exc)}")
        case asyncssh.HostKeyNotVerifiable():
            return HostKeyError(
                f"ssh {dest}: host key not trusted by {target.known_hosts_path()}"
                f" ({target.host_key_policy}): {one_line(exc)}"
            )
        case TimeoutError():
            cause = f"connect timed out after {target.connect_timeout:g}s"
        case _:
            cause = one_line(exc)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return SshUnavailable(f"ssh {dest}: cannot connect{tries}: {cause}")


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
