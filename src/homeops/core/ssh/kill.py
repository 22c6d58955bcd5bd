"""Ending a remote command that ran too long: outcomes and the fallback killer script."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

# After a timeout the remote command gets SIGTERM, then this long before SIGKILL.
KILL_GRACE_S: Final = 2.0
# run() waits this long after its deadline for the kill to be confirmed, then raises saying
# it is not (the kill goes on in the background; the pool's close() waits for it). Room for
# the grace, SIGKILL and a fallback kill over a new connection.
KILL_BUDGET_S: Final = KILL_GRACE_S + 1.5
# A cancelled run() (job cancel, per-job timeout) gives the command this SIGTERM grace, and
# waits at most CANCEL_KILL_BUDGET_S for the kill before it lets the cancellation go on.
CANCEL_GRACE_S: Final = 0.5
CANCEL_KILL_BUDGET_S: Final = 3.0
# How long the server gets to report the exit after a SIGKILL "signal" request.
SIGKILL_WAIT_S: Final = 0.2
# The whole fallback kill (connect, open, script) in its background task.
FALLBACK_BUDGET_S: Final = 5.0


class Kill(StrEnum):
    """How a timed-out or cancelled command ended (the ``kill=`` log field)."""

    NONE = "none"  # no channel had opened: the command never started
    EXITED = "exited"  # it had already exited when the kill began
    SIGNAL = "signal"  # the "signal" channel request (sshd's killpg) ended it
    PROCESS_GROUP = "process-group"  # the fallback killer SIGKILLed its process group
    GONE = "gone"  # the channel died, and the fallback found nothing of it left running
    UNCONFIRMED = "unconfirmed"  # no exit seen and no kill confirmed: it may still be running
    PENDING = "pending"  # still being killed in the background (run() stopped waiting)

    @property
    def ended(self) -> bool:
        return self in (Kill.EXITED, Kill.SIGNAL, Kill.PROCESS_GROUP, Kill.GONE)


class Fallback(StrEnum):
    """What the fallback killer script reported."""

    KILLED = "killed"  # exit 0: it SIGKILLed the command's process group
    NONE_LEFT = "none-left"  # exit 3: no session of that connection is running
    AMBIGUOUS = "ambiguous"  # exit 4: sessions of that connection, none the command
    UNIDENTIFIABLE = "unidentifiable"  # exit 5: the server sees other addresses (NAT)
    FAILED = "failed"  # it could not run (no connection, not a POSIX/Linux host, ...)


def fallback_outcome(status: int) -> Fallback:
    return {0: Fallback.KILLED, 3: Fallback.NONE_LEFT, 4: Fallback.AMBIGUOUS}.get(
        status, Fallback.UNIDENTIFIABLE if status == 5 else Fallback.FAILED
    )


# The fallback killer, run by the login shell over a separate connection (POSIX sh, GNU grep,
# Linux /proc). sshd runs each session's command as a session leader (setsid) whose
# environment holds SSH_CONNECTION "client-ip client-port server-ip server-port" of the
# connection it came in on; that survives the connection (and its sshd) dying. Stdin: the
# timed-out connection's SSH_CONNECTION, this connection's as the client sees it (if the
# server sees another, addresses are translated and nothing can be matched: exit 5), then the
# command text, matched against the candidates' ``sh -c`` argument; if nothing matches (the
# shell exec'd a simple command) but exactly one session of that connection is left, it is
# that one. SIGKILLs their process groups and prints them; exit 3 when no session of that
# connection is left, 4 when none is the command. Per candidate only shell builtins and one
# ``tr``: the environment scan is one grep for all processes.
KILL_SCRIPT: Final = r"""IFS= read -r conn; IFS= read -r own; want=$(cat); me=$$; n=0; only=; hit=
[ "$SSH_CONNECTION" = "$own" ] || exit 5
for f in $(grep -lsFxz "SSH_CONNECTION=$conn" /proc/[0-9]*/environ); do
  d=${f%/environ}; c=${d#/proc/}; [ "$c" = "$me" ] && continue
  { read -r st <"$d/stat"; } 2>/dev/null || continue
  set -- ${st##*) }; [ "$4" = "$c" ] || continue
  n=$((n+1)); only=$c
  [ "$(tr '\0' '\n' <"$d/cmdline" 2>/dev/null | sed '1,2d')" = "$want" ] && hit="$hit $c"
done
[ "$n" = 0 ] && exit 3
[ -n "$hit" ] || { [ "$n" = 1 ] && hit=$only; }
[ -n "$hit" ] || exit 4
for c in $hit; do kill -s KILL -- "-$c" 2>/dev/null || kill -s KILL "$c"; done
echo $hit"""


def _address(addr: object) -> tuple[str, int] | None:
    # An IPv4 socket gives (host, port), an IPv6 one (host, port, flowinfo, scope).
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        # sshd prints an IPv4-mapped IPv6 address as plain IPv4.
        if host.startswith("::ffff:") and "." in host:
            host = host.removeprefix("::ffff:")
        return host, int(addr[1])
    return None


def connection_identity(conn: SSHClientConnection) -> str | None:
    """The connection's ``SSH_CONNECTION`` as sshd sets it when no address is translated."""
    local = _address(conn.get_extra_info("sockname"))
    peer = _address(conn.get_extra_info("peername"))
    if local is None or peer is None:
        return None
    return f"{local[0]} {local[1]} {peer[0]} {peer[1]}"


def kill_script_input(conn_identity: str, own_identity: str, command: str) -> bytes:
    return f"{conn_identity}\n{own_identity}\n{command}".encode()
