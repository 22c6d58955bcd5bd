"""core/ssh/coalesce.py: one write per loop turn, same bytes in the same order."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from homeops.core.ssh import SshPool
from homeops.core.ssh.coalesce import CoalescingTransport, coalesce_writes
from tests.fixtures.sshd import SshdHandle


class RecordingTransport(asyncio.Transport):
    """A transport that records writes and how it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = ""
        self.buffered = 0

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return bool(self.closed)

    def close(self) -> None:
        self.closed = "close"

    def abort(self) -> None:
        self.closed = "abort"

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 22)}.get(name, default)


async def test_writes_of_one_turn_go_out_as_one_in_order() -> None:
    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"ignore-")
    outer.write(bytearray(b"channel-open-"))
    outer.writelines([b"exec-", b"", b"eof"])
    inner.buffered = 5
    assert inner.writes == []
    assert outer.get_write_buffer_size() == len(b"ignore-channel-open-exec-eof") + 5
    await asyncio.sleep(0)
    assert inner.writes == [b"ignore-channel-open-exec-eof"]
    outer.write(b"next turn")
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"next turn"]
    # Everything else is the wrapped transport's.
    assert outer.get_extra_info("peername") == ("127.0.0.1", 22)


async def test_close_sends_what_is_queued_and_abort_drops_it() -> None:
    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"last words")
    outer.close()
    assert (inner.writes, inner.closed) == ([b"last words"], "close")
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
    assert inner.writes == [b"last words"]

    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"dropped")
    outer.abort()
    await asyncio.sleep(0)
    assert (inner.writes, inner.closed) == ([], "abort")


async def test_a_transport_closed_meanwhile_is_not_written() -> None:
    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"too late")
    inner.closed = "peer"
    await asyncio.sleep(0)
    assert inner.writes == []


async def test_an_object_without_a_transport_is_left_alone() -> None:
    class Other:
        _transport = "not a transport"

    other = Other()
    assert coalesce_writes(other) is False
    assert other._transport == "not a transport"


@pytest.mark.integration
async def test_pooled_connections_write_through_it_and_commands_still_work(
    sshd: SshdHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends = 0
    real_send = socket.socket.send

    def counting_send(self: socket.socket, data: Any, *args: Any) -> int:
        nonlocal sends
        sends += 1
        return real_send(self, data, *args)

    async with SshPool() as pool:
        await pool.run(sshd.target(), "true", timeout=10)
        entry, _ = await pool._connection(sshd.target())
        assert isinstance(entry.conn._transport, CoalescingTransport)
        # The selector transport calls sock.send: count them over 10 concurrent commands.
        monkeypatch.setattr(socket.socket, "send", counting_send)
        commands = [f"echo {n}; echo e{n} >&2" for n in range(10)]
        results = await asyncio.gather(*(pool.run(sshd.target(), c, timeout=10) for c in commands))
    assert [(r.stdout, r.stderr) for r in results] == [
        (f"{n}\n".encode(), f"e{n}\n".encode()) for n in range(10)
    ]
    # Each command is >= 4 packets, each after an SSH_MSG_IGNORE: 80+ sends uncoalesced.
    assert 0 < sends < 40, sends
