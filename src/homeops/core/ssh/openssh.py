"""A target's settings as OpenSSH client options, for tools that run ``ssh`` themselves.

``nix copy --to ssh-ng://…`` (through ``NIX_SSHOPTS``), nixos-rebuild's ``--target-host``
and restic's sftp backend start the ``ssh`` binary on their own: they must log in exactly
as the pool does: same key only, same known_hosts file and host-key policy, never a prompt.
Pure: builds strings, touches nothing.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import assert_never

from homeops.core.errors import UsageError
from homeops.core.ssh.model import HostKeyPolicy, SshTarget


def _config_value(value: str, *, tokens: bool) -> str:
    """``value`` as one word of an ssh_config line (``-o`` is parsed like one).

    OpenSSH splits a value at whitespace (UserKnownHostsFile takes several files) and honours
    double quotes with backslash escapes inside; options that expand ``%`` tokens need a
    literal ``%`` written ``%%``.
    """
    if tokens:
        value = value.replace("%", "%%")
    if value and not any(c.isspace() or c in "\"'\\#" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path(path: Path) -> str:
    # Absolute, ~ expanded: ssh would read a relative path against its own working directory
    # and expand ~ itself, neither of which the pool does.
    return _config_value(str(path.expanduser().absolute()), tokens=True)


def openssh_options(target: SshTarget, *, read_config: bool = False) -> list[str]:
    """``ssh`` arguments that log in to ``target`` the way :class:`SshPool` does.

    Port, user, the identity file (and only it, as ``IdentitiesOnly``), the known_hosts file
    with no global one, the host-key policy (``StrictHostKeyChecking=yes`` or ``accept-new``),
    connect timeout and keepalive, ``BatchMode`` (a prompt would hang a tool). Unless
    ``read_config``, ``-F none`` first: like the pool, no ``~/.ssh/config`` applies. The
    destination host is not among them: each tool takes it in its own form.
    """
    match target.host_key_policy:
        case HostKeyPolicy.STRICT:
            strict = "yes"
        case HostKeyPolicy.ACCEPT_NEW:
            strict = "accept-new"
        case _:
            assert_never(target.host_key_policy)
    options = {
        "BatchMode": "yes",
        "User": _config_value(target.user, tokens=False),
        "Port": str(target.port),
        "UserKnownHostsFile": _path(target.known_hosts_path()),
        # The pool trusts only the target's file; a system-wide entry must not widen that.
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": strict,
        "ConnectTimeout": str(max(1, math.ceil(target.connect_timeout))),
        # OpenSSH takes whole seconds; asyncssh's keepalive counts the same way.
        "ServerAliveInterval": str(max(1, math.ceil(target.keepalive_interval))),
        "ServerAliveCountMax": str(target.keepalive_count_max),
    }
    if target.identity_file is not None:
        options["IdentityFile"] = _path(target.identity_file)
        options["IdentitiesOnly"] = "yes"
    argv = [] if read_config else ["-F", "none"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return argv


def control_options(path: Path, *, master: bool, persist_s: float = 60.0) -> list[str]:
    """``ssh`` arguments that share one connection through the control socket ``path``.

    ``master``: use a live master there or become one (``ControlMaster=auto``) that stays
    ``persist_s`` seconds after its last session (``ControlPersist``, whole seconds);
    otherwise only use a live master (``ControlMaster=no``). Add them after
    :func:`openssh_options`: a session through a master logs in with the master's options.
    """
    options = ["-o", f"ControlPath={_path(path)}"]
    if not master:
        return [*options, "-o", "ControlMaster=no"]
    persist = str(max(1, math.ceil(persist_s)))
    return [*options, "-o", "ControlMaster=auto", "-o", f"ControlPersist={persist}"]


def nix_sshopts(target: SshTarget) -> str:
    """The ``NIX_SSHOPTS`` value for ``target``: :func:`openssh_options`, shell-joined.

    nixos-rebuild-ng splits NIX_SSHOPTS with ``shlex.split`` but Nix itself (before 2.24)
    at whitespace only: a word that needs quoting would reach ssh differently from the two,
    so such a word (a path with spaces or quotes) is refused instead of passed on wrongly.
    """
    options = openssh_options(target)
    for word in options:
        if shlex.quote(word) != word:
            raise UsageError(
                f"ssh {target.destination}: {word!r} cannot be passed in NIX_SSHOPTS"
                " (Nix splits it at whitespace): use paths without spaces or quotes"
            )
    return shlex.join(options)
