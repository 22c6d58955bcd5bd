"""Ending a remote command that ran too long: outcomes, the fallback killers, the killer.

:class:`Killer` runs every kill of one pool in tasks of its own (so they outlive their
caller's cancellation), over a connection of its own per host. How a command is killed
depends on the target's ``remote_shell``: a POSIX host gets "signal" requests and then
:data:`KILL_SCRIPT`; a Windows (PowerShell) host gets :func:`powershell_kill_command`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from homeops.core.errors import HomeopsError
from homeops.core.logging import get_logger
from homeops.core.ssh.channel import (
    REFUSED_OPEN_PAUSES_S,
    Collector,
    Conn,
    OutputStream,
    SessionSlots,
    Slot,
    after_refusal,
    open_channel,
    slots_for,
    wait_any,
)
from homeops.core.ssh.errors import one_line
from homeops.core.ssh.model import ConnectionKey, SshTarget, connection_key, log_fields
from homeops.core.ssh.shell import encode_powershell, powershell_literal

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

_log = get_logger("core.ssh")

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
# Output of the fallback killer kept (it prints process group ids).
_SCRIPT_OUTPUT_CAP: Final = 4096
# How much of the command's end the PowerShell killer matches command lines against (as a
# quoted literal): the encoded kill must stay under cmd.exe's 8191-character command line.
PS_KILL_MATCH_CHARS: Final = 600


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
    """What the killer's exit status says (the same codes for the POSIX and PowerShell one)."""
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
    """The POSIX killer's stdin: both connections' SSH_CONNECTION, then the command."""
    return f"{conn_identity}\n{own_identity}\n{command}".encode()


# The fallback killer for Windows OpenSSH, as a PowerShell script (the POSIX one needs /proc).
# Windows cannot read another process's environment without native calls, so the session is
# found by its TCP connection instead: Get-NetTCPConnection names the sshd process that owns
# the timed-out connection (server end = its SSH_CONNECTION's server address and port), and
# the command is the process below it whose command line ends with the command text (sshd
# starts "cmd.exe /c <command>", or the DefaultShell). If this connection's SSH_CONNECTION is
# not what the client sees (a QEMU user-mode forward translates addresses: the usual way to a
# Windows VM), the connection cannot be found; then the command line alone decides, among
# processes below any sshd, and only if exactly one matches (trailing quotes and spaces are
# ignored on both sides: whether sshd quotes the command for cmd.exe is not documented).
# taskkill /T /F ends the match and its whole tree. Exit codes as the POSIX killer: 0 killed
# (pids printed), 3 nothing of that connection left, 4 several or no candidates, 5 is never
# used, 6 the connection is not visible (proves nothing). Built as a string and tested as one:
# no Windows runs here.
_PS_KILL_BODY: Final = r"""$ErrorActionPreference = 'Stop'
$procs = @(Get-CimInstance Win32_Process |
  Select-Object ProcessId, ParentProcessId, Name, CommandLine)
$byId = @{}; foreach ($p in $procs) { $byId[[int]$p.ProcessId] = $p }
$mine = @{}; $i = $PID
while ($byId.ContainsKey($i) -and -not $mine.ContainsKey($i)) {
  $mine[$i] = 1; $i = [int]$byId[$i].ParentProcessId
}
function Below([int[]]$roots) {
  $seen = @{}; $todo = [System.Collections.Generic.Queue[int]]::new()
  foreach ($r in $roots) { $todo.Enqueue($r) }
  while ($todo.Count) {
    $r = $todo.Dequeue()
    foreach ($p in $procs) {
      $c = [int]$p.ProcessId
      if ([int]$p.ParentProcessId -eq $r -and $c -ne $r -and -not $seen.ContainsKey($c)) {
        $seen[$c] = 1; $todo.Enqueue($c)
      }
    }
  }
  @($procs | Where-Object {
    $seen.ContainsKey([int]$_.ProcessId) -and -not $mine.ContainsKey([int]$_.ProcessId) })
}
function Ends($p) {
  $t = $want.TrimEnd([char]34, [char]32)
  "$($p.CommandLine)".TrimEnd([char]34, [char]32).EndsWith($t, [StringComparison]::Ordinal)
}
function Top($set) {
  $ids = @{}; foreach ($p in $set) { $ids[[int]$p.ProcessId] = 1 }
  @($set | Where-Object { -not $ids.ContainsKey([int]$_.ParentProcessId) })
}
$hits = @()
if ($env:SSH_CONNECTION -eq $own) {
  $c = $conn.Split(' ')
  $tcp = @(Get-NetTCPConnection -RemoteAddress $c[0] -RemotePort $c[1] `
    -LocalAddress $c[2] -LocalPort $c[3] -ErrorAction SilentlyContinue)
  if (-not $tcp.Count) { exit 6 }
  $below = Below @($tcp | ForEach-Object { [int]$_.OwningProcess } | Sort-Object -Unique)
  $cmds = @($below | Where-Object { $_.Name -notlike 'sshd*' -and $_.Name -ne 'conhost.exe' })
  if (-not $cmds.Count) { exit 3 }
  $hits = Top @($cmds | Where-Object { Ends $_ })
  if (-not $hits.Count) { $tops = Top $cmds; if ($tops.Count -eq 1) { $hits = $tops } }
  if (-not $hits.Count) { exit 4 }
} else {
  $sshd = @($procs | Where-Object { $_.Name -like 'sshd*' } | ForEach-Object { [int]$_.ProcessId })
  $hits = Top @(Below $sshd | Where-Object { $_.Name -notlike 'sshd*' -and (Ends $_) })
  if (-not $hits.Count) { exit 3 }
  if ($hits.Count -ne 1) { exit 4 }
}
foreach ($h in $hits) { & taskkill.exe /PID ([int]$h.ProcessId) /T /F | Out-Null }
($hits | ForEach-Object { $_.ProcessId }) -join ' '
exit 0
"""


def powershell_kill_script(conn_identity: str, own_identity: str, command: str) -> str:
    """The PowerShell fallback killer for ``command`` on the connection ``conn_identity``.

    The inputs are written into the script as single-quoted literals (an encoded command
    has no convenient stdin); only the end of ``command`` is matched (at most
    :data:`PS_KILL_MATCH_CHARS` characters once quoted), so the script stays short enough
    for cmd.exe.
    """
    want = command[-PS_KILL_MATCH_CHARS:]
    # Doubled quotes lengthen the literal: drop characters from the front until it fits.
    while len(powershell_literal(want)) > PS_KILL_MATCH_CHARS + 2:
        want = want[1:]
    # Indentation is for readers of this file; the encoded script is 8/3 of its length.
    body = "\n".join(line.lstrip() for line in _PS_KILL_BODY.splitlines()) + "\n"
    return (
        f"$conn = {powershell_literal(conn_identity)}\n"
        f"$own = {powershell_literal(own_identity)}\n"
        f"$want = {powershell_literal(want)}\n" + body
    )


def powershell_kill_command(conn_identity: str, own_identity: str, command: str) -> str:
    """:func:`powershell_kill_script` as a command line for Windows OpenSSH."""
    return encode_powershell(powershell_kill_script(conn_identity, own_identity, command))


@dataclass
class _Shared:
    """A connection several kills use at once; closed when the last of them is done."""

    task: asyncio.Task[Conn]
    users: int = 0


def _close_late(task: asyncio.Task[Conn]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().conn.close()


def log_stopped(what: str, how: Kill, start: float, display: str, target: SshTarget) -> None:
    """Log how a command that was stopped (timeout, cancel, failed sink) ended."""
    # A timeout is worth a warning; a cancellation only when the command may live on.
    if what != "command cancelled" or (not how.ended and how is not Kill.NONE):
        log = _log.warn
    else:
        log = _log.debug if how is Kill.NONE else _log.info
    log(
        "run",
        what,
        kill=str(how),
        duration_ms=(time.monotonic() - start) * 1000,
        command=display,
        **log_fields(target),
    )


class Killer:
    """Every kill of one pool: started in tasks of their own, confirmed or reported unconfirmed.

    ``new_conn`` opens a fresh connection (never the commands' one) for fallback kills.
    """

    def __init__(self, new_conn: Callable[[SshTarget], Coroutine[Any, Any, Conn]]) -> None:
        self._new_conn = new_conn
        self._slots: dict[ConnectionKey, SessionSlots] = {}
        self._conns: dict[ConnectionKey, _Shared] = {}
        # Kills running in tasks of their own, so they outlive their caller's cancellation.
        self._tasks: set[asyncio.Task[Kill]] = set()

    def start(
        self,
        target: SshTarget,
        tried: list[tuple[Collector, Conn]],
        command: str,
        grace: float,
        slot: Slot,
    ) -> asyncio.Task[Kill] | None:
        """Start killing the command ``run`` started; None if no channel had opened.

        The kill runs in a task of its own, so cancelling the caller (again), or the caller
        giving up waiting, does not stop the kill; the caller's channel slot is handed to
        that task, which releases it when the kill is over.
        """
        session, entry = tried[-1] if tried else (None, None)
        if session is None or entry is None or session.chan is None:
            return None
        if session.kill is None:
            session.kill = task = asyncio.create_task(
                self._kill(target, entry, session, command, grace)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            handed = Slot(slot.slots)
            handed.held, slot.held = slot.held, False
            task.add_done_callback(lambda _: handed.release())
        return session.kill

    async def outcome(
        self,
        target: SshTarget,
        display: str,
        kill: asyncio.Task[Kill] | None,
        wait_s: float | None,
    ) -> Kill:
        """Wait up to ``wait_s`` seconds (None: until done) for ``kill``; how it ended."""
        if kill is None:
            return Kill.NONE
        # asyncio.wait never cancels what it waits for: the kill outlives this wait.
        await asyncio.wait({kill}, timeout=wait_s)
        if not kill.done():
            kill.add_done_callback(functools.partial(self._log_late_kill, target, display))
            return Kill.PENDING
        return self._kill_result(target, kill)

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the kills still running."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def close(self) -> list[asyncio.Task[Conn]]:
        """Close the kill connections once they are up; return the ones still connecting."""
        connecting = [s.task for s in self._conns.values()]
        for shared in self._conns.values():
            shared.task.add_done_callback(_close_late)
        self._conns.clear()
        return connecting

    def _kill_result(self, target: SshTarget, kill: asyncio.Task[Kill]) -> Kill:
        if kill.cancelled():
            return Kill.UNCONFIRMED
        exc = kill.exception()
        if exc is not None:  # a failed kill must not hide the timeout or cancellation
            _log.warn("run", "kill failed", err=one_line(exc), **log_fields(target))
            return Kill.UNCONFIRMED
        return kill.result()

    def _log_late_kill(self, target: SshTarget, display: str, kill: asyncio.Task[Kill]) -> None:
        how = self._kill_result(target, kill)
        (_log.info if how.ended else _log.warn)(
            "run", "kill finished", kill=str(how), command=display, **log_fields(target)
        )

    async def _kill(
        self,
        target: SshTarget,
        entry: Conn,
        session: Collector,
        command: str,
        grace: float,
    ) -> Kill:
        """End a started remote command: SIGTERM, ``grace`` seconds, SIGKILL, fallback.

        First a "signal" channel request: OpenSSH's sshd turns it into killpg() of the
        session's process group, so the shell and its children die. sshd silently refuses it
        for root logins (no privilege-separated child: "session signalling requires privilege
        separation") and for ForceCommand sessions; and a channel that went away without an
        exit status (its connection or sshd died) proves nothing either. In those cases a
        separate connection SIGKILLs the command's process group (:data:`KILL_SCRIPT`).
        Closing the channel alone would not do: sshd leaves a no-pty command running.
        Windows OpenSSH has no process groups to signal: there the fallback
        (:func:`powershell_kill_command`) is the only kill, tried at once.
        Only an exit status or signal from the server, or the fallback's own report, counts
        as confirmation.
        """
        chan = session.chan
        assert chan is not None
        try:
            if session.ended.is_set():
                return Kill.EXITED
            signals = (("TERM", grace), ("KILL", SIGKILL_WAIT_S))
            for sig, wait_s in signals if target.remote_shell == "posix" else ():
                if session.done.is_set():
                    break
                with contextlib.suppress(OSError):  # OSError: the channel closed meanwhile
                    chan.send_signal(sig)
                await wait_any(wait_s, session.ended, session.done)
                if session.ended.is_set():
                    return Kill.SIGNAL
            found = await self._kill_by_script(target, entry, command)
            if found is Fallback.KILLED:
                # Its report is the confirmation: waiting for an exit status would only wait
                # out a stopped or dead sshd.
                return Kill.PROCESS_GROUP
            if session.ended.is_set():
                return Kill.SIGNAL
            # Nothing of the connection runs; but a command whose start was never confirmed
            # may still be started by an sshd that was only stopped.
            return (
                Kill.GONE if found is Fallback.NONE_LEFT and session.started else Kill.UNCONFIRMED
            )
        finally:
            chan.close()

    @contextlib.asynccontextmanager
    async def _kill_connection(self, target: SshTarget) -> AsyncIterator[Conn]:
        """A connection of its own for fallback kills, shared by the kills running at once.

        Never the commands' connection: that one may be dead, or served by an sshd that is
        stopped, or full; a new login also proves the host answers.
        """
        key = connection_key(target)
        shared = self._conns.get(key)
        if shared is None:
            task = asyncio.create_task(self._new_conn(target))
            shared = self._conns[key] = _Shared(task)
        shared.users += 1
        try:
            yield await asyncio.shield(shared.task)
        finally:
            shared.users -= 1
            if shared.users == 0:
                if self._conns.get(key) is shared:
                    del self._conns[key]
                shared.task.add_done_callback(_close_late)
                shared.task.cancel()

    async def _kill_by_script(self, target: SshTarget, entry: Conn, command: str) -> Fallback:
        """Kill ``command``'s session's processes from a separate connection."""
        import asyncssh

        if entry.identity is None:
            _log.warn("run", "fallback kill impossible: connection address unknown")
            return Fallback.FAILED
        streams = (OutputStream(None, _SCRIPT_OUTPUT_CAP), OutputStream(None, _SCRIPT_OUTPUT_CAP))
        slot = Slot(slots_for(self._slots, connection_key(target), target))
        try:
            async with asyncio.timeout(FALLBACK_BUDGET_S), self._kill_connection(target) as conn:
                if conn.identity is None:
                    return Fallback.FAILED
                if target.remote_shell == "posix":
                    script = KILL_SCRIPT
                    data = kill_script_input(entry.identity, conn.identity, command)
                else:
                    script = powershell_kill_command(entry.identity, conn.identity, command)
                    data = b""
                await slot.acquire()
                pauses = iter(REFUSED_OPEN_PAUSES_S)
                while True:
                    session = Collector(*streams, conn.count, slot.slots.seen_open)
                    try:
                        chan = await open_channel(conn.conn, session, script)
                        break
                    except asyncssh.ChannelOpenError as exc:
                        if conn.conn.is_closed():
                            raise
                        what = "session for the fallback kill"
                        if await after_refusal(target, conn, slot, pauses, what, exc):
                            pauses = iter(REFUSED_OPEN_PAUSES_S)
                if data:
                    chan.write(data)
                chan.write_eof()
                await session.done.wait()
        except (TimeoutError, OSError, asyncssh.Error, HomeopsError) as exc:
            _log.warn("run", "fallback kill failed", err=one_line(exc), **log_fields(target))
            return Fallback.FAILED
        finally:
            slot.release()
        found = fallback_outcome(session.status())
        fields = {"exit_status": session.status(), **log_fields(target)}
        if found is Fallback.KILLED:
            pgids = streams[0].value().decode(errors="replace").strip()
            _log.info("run", "killed command by process group", pgids=pgids, **fields)
        else:
            _log.warn("run", "fallback kill found no process to kill", found=str(found), **fields)
        return found
