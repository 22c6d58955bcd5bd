"""One ``send()`` per event-loop turn for an SSH connection, however many packets it wrote.

asyncssh hands every packet to the transport on its own, and precedes each encrypted packet
with an ``SSH_MSG_IGNORE`` packet: a command on a pooled connection (channel open, exec,
EOF, close) costs nine or so ``send()`` calls. On the VMs this runs on, a loopback
``send()`` costs ~0.25 ms of CPU (the peer's wake-up is paid by the sender), which made the
system calls, not Python, the windows.exec worker's largest cost. :class:`CoalescingTransport`
collects what is written during one turn of the loop and writes it with one call at the end
of the turn (``call_soon``): the bytes and their order are unchanged, and nothing waits
longer than the rest of the current turn.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps a transport: ``write`` is buffered until the end of the loop's current turn.

    Everything else goes to the wrapped transport; ``close`` sends what is buffered first,
    ``abort`` drops it (as the wrapped transport's ``abort`` drops its own buffer).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        """Queue ``data``; the first write of a turn schedules the flush."""
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._size += len(data)

    def writelines(self, chunks: Any) -> None:  # noqa: ANN401 - the transport's signature
        """Queue each chunk."""
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Hand everything queued to the wrapped transport as one write."""
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent: ours and the wrapped transport's."""
        return self._size + self._transport.get_write_buffer_size()

    def close(self) -> None:
        """Send what is queued, then close (the wrapped transport drains its own buffer)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is queued."""
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever the transport has
        return getattr(self._transport, name)


def coalesce_writes(conn: object) -> bool:
    """Put a :class:`CoalescingTransport` under asyncssh connection ``conn``; False (nothing
    changed) if ``conn`` does not keep its transport where asyncssh 2.x does."""
    transport = getattr(conn, "_transport", None)
    if not isinstance(transport, asyncio.Transport):
        return False
    loop = asyncio.get_running_loop()
    conn._transport = CoalescingTransport(transport, loop)  # type: ignore[attr-defined]
    return True
