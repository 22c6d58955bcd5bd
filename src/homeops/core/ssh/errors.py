"""SSH errors: which connection failures are worth retrying, and how asyncssh's are translated.

Every asyncssh exception becomes a :mod:`homeops.core.errors` class here, at the boundary;
callers never see asyncssh types. asyncssh is imported only inside the functions, and the
retry predicate does not import it at all when nothing has loaded it yet.
"""

from __future__ import annotations

import sys

from homeops.core.errors import (
    HomeopsError,
    HostKeyError,
    SshAuthError,
    SshUnavailable,
)
from homeops.core.ssh.model import SshTarget


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
    """``exc`` as one line for a message or a log field (never empty)."""
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
