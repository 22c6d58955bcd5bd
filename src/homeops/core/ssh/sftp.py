"""SFTP transfers over the pool's connections: a file is never seen half-written.

The pool's own code in a module of its own: :func:`transfer` uses the pool's connection
cache and session slots directly, so a transfer queues with commands for the same host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import stat
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

from homeops.core.errors import HomeopsTimeout, OperationalError, SshUnavailable
from homeops.core.logging import get_logger
from homeops.core.ssh.channel import REFUSED_OPEN_PAUSES_S, Conn, Slot, after_refusal
from homeops.core.ssh.errors import one_line
from homeops.core.ssh.model import SshTarget, log_fields

if TYPE_CHECKING:
    from asyncssh import SFTPClient

    from homeops.core.ssh.pool import SshPool

_log = get_logger("core.ssh")

# How long a failed or timed-out SFTP put gets to remove its temporary file.
SFTP_CLEANUP_S: Final = 2.0


def _exit_late_sftp(task: asyncio.Future[SFTPClient]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().exit()


async def _start_sftp(entry: Conn) -> SFTPClient:
    # As with commands: a timeout must not leave a late-opened SFTP channel behind.
    task = asyncio.ensure_future(entry.conn.start_sftp_client())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_exit_late_sftp)
        raise


@dataclass(frozen=True)
class RemoteEntry:
    """One entry of a remote directory listing."""

    name: str
    size: int
    is_dir: bool
    is_file: bool


async def _kept_sftp(pool: SshPool, target: SshTarget, entry: Conn) -> SFTPClient:
    """The connection's kept SFTP session, started (holding a session slot) on first use."""
    import asyncssh

    async with entry.sftp_lock:
        if entry.sftp is not None:
            return cast("SFTPClient", entry.sftp)
        slot = Slot(pool._command_slots(target))
        await slot.acquire()
        sftp: SFTPClient | None = None
        try:
            pauses = iter(REFUSED_OPEN_PAUSES_S)
            while sftp is None:
                try:
                    sftp = await _start_sftp(entry)
                except asyncssh.ChannelOpenError as exc:
                    if entry.conn.is_closed():
                        raise
                    if await after_refusal(target, entry, slot, pauses, "sftp session", exc):
                        pauses = iter(REFUSED_OPEN_PAUSES_S)
        except BaseException:
            slot.release()
            raise
        entry.sftp, entry.sftp_slot = sftp, slot
        entry.count.open += 1
        slot.slots.seen_open(entry.count.open)
        slot.slots.reclaim = entry.reclaim_sftp
        return sftp


@contextlib.asynccontextmanager
async def _session(
    pool: SshPool, target: SshTarget, what: str, timeout: float
) -> AsyncIterator[SFTPClient]:
    """The SFTP session kept on the pool's connection to ``target`` (one per connection,
    shared by concurrent calls; it takes a slot like a command while it is kept).

    ``timeout`` bounds the whole block; errors come out as the seam's: timeout (4), a lost
    or refusing connection (3), a failed file operation (1), each naming ``what``.
    """
    import asyncssh

    entry: Conn | None = None
    using = False
    try:
        async with asyncio.timeout(timeout):
            entry, _ = await pool._connection(target)
            sftp = await _kept_sftp(pool, target, entry)
            entry.sftp_users += 1
            using = True
            yield sftp
    except TimeoutError as exc:
        raise HomeopsTimeout(f"{what}: timed out after {timeout:g}s") from exc
    except (asyncssh.DisconnectError, asyncssh.SFTPConnectionLost, ConnectionError) as exc:
        if entry is not None:
            pool._drop(target, entry)
        raise SshUnavailable(f"{what}: connection lost: {one_line(exc)}") from exc
    except asyncssh.ChannelOpenError as exc:
        raise SshUnavailable(f"{what}: server refused sftp: {one_line(exc)}") from exc
    except (asyncssh.SFTPError, OSError) as exc:
        raise OperationalError(f"{what}: {one_line(exc)}") from exc
    finally:
        if using and entry is not None:
            entry.sftp_users -= 1


async def transfer(
    pool: SshPool,
    target: SshTarget,
    op: Literal["put", "get"],
    src: str,
    dst: str,
    timeout: float,
) -> None:
    """Copy ``src`` to ``dst`` through a temporary name beside ``dst``, renamed when done.

    ``dst`` is never seen half-written: a transfer that fails or times out removes its
    temporary file (remotely: if the connection still answers within a moment).
    """
    start = time.monotonic()
    what = f"ssh {target.destination}: sftp {op} {src} -> {dst}"
    async with _session(pool, target, what, timeout) as sftp:
        temp = _temp_name(dst, remote=op == "put")
        done = False
        try:
            if op == "put":
                await sftp.put(src, temp)
                await _replace_remote(sftp, temp, dst)
            else:
                await sftp.get(src, temp)
                os.replace(temp, dst)
            done = True
        finally:
            if not done:
                await _remove_temp(sftp, temp, remote=op == "put")
    _log.debug(
        "sftp",
        f"{op} done",
        duration_ms=(time.monotonic() - start) * 1000,
        src=src,
        dst=dst,
        **log_fields(target),
    )


async def listdir(
    pool: SshPool, target: SshTarget, remote: str, timeout: float
) -> list[RemoteEntry] | None:
    """The entries of directory ``remote`` (sorted by name), or None when it does not exist."""
    import asyncssh

    what = f"ssh {target.destination}: sftp list {remote}"
    async with _session(pool, target, what, timeout) as sftp:
        try:
            names = await sftp.readdir(remote)
        except asyncssh.SFTPNoSuchFile:
            return None
    out = []
    for item in names:
        if item.filename in (".", ".."):
            continue
        mode = item.attrs.permissions or 0
        name = item.filename
        out.append(
            RemoteEntry(
                name if isinstance(name, str) else name.decode("utf-8", "replace"),
                int(item.attrs.size or 0),
                stat.S_ISDIR(mode),
                stat.S_ISREG(mode),
            )
        )
    return sorted(out, key=lambda e: e.name)


def _temp_name(dst: str, *, remote: bool) -> str:
    # Beside the destination, so the final rename stays on one file system (atomic).
    split = posixpath.split if remote else os.path.split
    join = posixpath.join if remote else os.path.join
    folder, name = split(dst)
    return join(folder, f".{name}.homeops-{uuid.uuid4().hex[:12]}.part")


async def _replace_remote(sftp: SFTPClient, temp: str, dst: str) -> None:
    import asyncssh

    try:
        # OpenSSH's posix-rename@openssh.com: replaces dst atomically.
        await sftp.posix_rename(temp, dst)
    except asyncssh.SFTPOpUnsupported:
        # Plain SFTP rename refuses an existing target: a short window without dst instead.
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await sftp.remove(dst)
        await sftp.rename(temp, dst)


async def _remove_temp(sftp: SFTPClient | None, temp: str, *, remote: bool) -> None:
    import asyncssh

    if not remote:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return
    if sftp is None:
        return
    with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
        async with asyncio.timeout(SFTP_CLEANUP_S):
            await sftp.remove(temp)
