"""The stdio transport without threads.

The SDK's ``stdio_server()`` reads and writes the process's stdin and stdout
through ``anyio.wrap_file``, which runs every read and write in a worker
thread (``anyio.to_thread``).  It accepts stream objects of its own, so here
are two that use the event loop instead: each takes a duplicate of fd 0 or 1,
made non-blocking and served by ``wait_readable``/``wait_writable``, as the
sandbox pipes are.  Non-blocking mode belongs to the open file, which fd 0/1
share with whoever else holds it (the MCP client's pipe ends); nothing of
ours reads them another way.

Once the duplicates are taken, fd 0 is pointed at ``/dev/null`` and fd 1 at
stderr, as the SDK does, so that nothing printed by accident (and no child
that would inherit them) can reach the protocol stream.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio

from .._streams import FdReceiveStream, FdSendStream


class _Lines:
    """``async for line in ...`` over fd 0, in UTF-8 (bad bytes replaced)."""

    def __init__(self, fd: int) -> None:
        self._stream = FdReceiveStream(fd)
        self._buffer = b""
        self._eof = False

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
                return line.decode("utf-8", "replace")
            if self._eof:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode("utf-8", "replace")
                raise StopAsyncIteration
            try:
                self._buffer += await self._stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._eof = True

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Writer:
    """``write()`` and ``flush()`` of text to fd 1; each write is sent whole."""

    def __init__(self, fd: int) -> None:
        self._stream = FdSendStream(fd)

    async def write(self, text: str) -> None:
        await self._stream.send(text.encode("utf-8"))

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self._stream.aclose()


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's read and write streams over this process's stdin and stdout."""
    from mcp.server.stdio import stdio_server

    wire_in = os.dup(0)
    wire_out = os.dup(1)
    os.set_inheritable(wire_in, False)
    os.set_inheritable(wire_out, False)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    lines, writer = _Lines(wire_in), _Writer(wire_out)
    try:
        # The SDK types these as anyio.AsyncFile; it only iterates the one
        # and calls write()/flush() on the other.
        async with stdio_server(cast(Any, lines), cast(Any, writer)) as streams:
            yield streams
    finally:
        await lines.aclose()
        await writer.aclose()
