"""anyio byte streams over pipe fds, served by the caller's event loop."""

from __future__ import annotations

import errno
import os

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from ._fd import FdHolder

#: Bytes one read of a pipe asks for.
READ_CHUNK = 65536
#: Bytes a reader takes from a pipe that is never empty before it lets the
#: event loop run: a flood (``yes``) would otherwise hold the loop forever,
#: a deadline included, as nothing in between has to wait.
YIELD_EVERY = 1 << 20


class FdReceiveStream(ByteReceiveStream):
    """The read end of a pipe from a sandboxed process."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._holder = FdHolder(fd)

    def __repr__(self) -> str:
        return f"<FdReceiveStream fd={self._holder.fd}>"

    def fileno(self) -> int:
        return self._holder.fd

    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes:
        # Cancellation is checked before anything is read, never after: bytes
        # taken from the pipe and then dropped by a Cancelled would be lost
        # for good (the output of a run that a deadline hits as it ends).
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            fd = self._holder.checked()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await self._holder.wait(fd, writable=False)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    def _close(self) -> None:
        """Close without a checkpoint (for an owner that has one of its own)."""
        self._holder.close()

    async def aclose(self) -> None:
        self._close()
        await anyio.lowlevel.checkpoint()


class FdSendStream(ByteSendStream):
    """The write end of a pipe to a sandboxed process."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._holder = FdHolder(fd)

    def __repr__(self) -> str:
        return f"<FdSendStream fd={self._holder.fd}>"

    def fileno(self) -> int:
        return self._holder.fd

    async def send(self, item: bytes) -> None:
        # Checked first, as in receive(): once written, the bytes are the peer's.
        await anyio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(item)
        while view:
            fd = self._holder.checked()
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await self._holder.wait(fd, writable=True)
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise anyio.BrokenResourceError from exc
                raise
            view = view[written:]

    def _close(self) -> None:
        """Close without a checkpoint (for an owner that has one of its own)."""
        self._holder.close()

    async def aclose(self) -> None:
        self._close()
        await anyio.lowlevel.checkpoint()


class Capture:
    """What a run keeps of one output stream: at most ``limit`` bytes (None:
    no limit); what comes beyond is counted in :attr:`dropped` and let go."""

    __slots__ = ("chunks", "dropped", "limit", "room")

    def __init__(self, limit: int | None) -> None:
        self.chunks: list[bytes] = []
        self.limit = limit
        #: Bytes that may still be kept.
        self.room = -1 if limit is None else limit
        self.dropped = 0

    def add(self, data: bytes) -> bool:
        """Keep ``data`` or what fits of it; False once anything was dropped."""
        room = self.room
        if room < 0:  # no limit
            self.chunks.append(data)
            return True
        if len(data) <= room:
            self.chunks.append(data)
            self.room = room - len(data)
            return True
        if room:
            self.chunks.append(data[:room])
            self.room = 0
        self.dropped += len(data) - room
        return False

    def value(self) -> bytes:
        return b"".join(self.chunks)
