"""anyio byte streams over pipe fds, served by the caller's event loop."""

from __future__ import annotations

import errno
import os

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream


class _FdHolder:
    """One owner per fd: ``fd`` becomes -1 once closed."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            anyio.notify_closing(fd)
            os.close(fd)

    def checked(self) -> int:
        if self.fd < 0:
            raise anyio.ClosedResourceError
        return self.fd


class FdReceiveStream(ByteReceiveStream):
    """The read end of a pipe from a sandboxed process."""

    def __init__(self, fd: int) -> None:
        self._holder = _FdHolder(fd)

    def __repr__(self) -> str:
        return f"<FdReceiveStream fd={self._holder.fd}>"

    def fileno(self) -> int:
        return self._holder.fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            fd = self._holder.checked()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not data:
                raise anyio.EndOfStream
            await anyio.lowlevel.checkpoint_if_cancelled()
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
        self._holder = _FdHolder(fd)

    def __repr__(self) -> str:
        return f"<FdSendStream fd={self._holder.fd}>"

    def fileno(self) -> int:
        return self._holder.fd

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            fd = self._holder.checked()
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await anyio.wait_writable(fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise anyio.BrokenResourceError from exc
                raise
            view = view[written:]
        await anyio.lowlevel.checkpoint_if_cancelled()

    def _close(self) -> None:
        """Close without a checkpoint (for an owner that has one of its own)."""
        self._holder.close()

    async def aclose(self) -> None:
        self._close()
        await anyio.lowlevel.checkpoint()
