"""``Sandbox.publish``: TCP forwards from the caller's loopback into a sandbox.

One listening socket per published port, on ``127.0.0.1`` at a port the
kernel picks, served by one background task on the caller's event loop
(no thread).  Each accepted connection gets a socket towards the sandbox
from ``connect_to()`` (``_netns.py``: made *inside* the sandbox's network
namespace for ``"loopback"``, where nothing outside can reach; an ordinary
socket to the sandbox's uplink address for ``"uplink"``) and two pumps that
copy bytes each way and pass a half-close on.  Everything is non-blocking
and awaited with anyio's ``wait_readable``/``wait_writable``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Mapping

import anyio

from ._fd import close_fd

#: Makes a non-blocking TCP socket towards the sandbox for sandbox port ``port``,
#: returns it and the address to connect it to.
Connector = Callable[[int], tuple[socket.socket, tuple[str, int]]]


class Forwarder:
    """The listeners of one sandbox's published ports and the task serving them."""

    __slots__ = ("_connect", "_listeners")

    def __init__(self, ports: tuple[int, ...], connect: Connector) -> None:
        self._connect = connect
        self._listeners: dict[int, socket.socket] = {}
        try:
            for port in ports:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._listeners[port] = listener
                listener.setblocking(False)
                listener.bind(("127.0.0.1", 0))
                listener.listen(64)
        except BaseException:
            self.close()
            raise

    @property
    def published(self) -> Mapping[int, tuple[str, int]]:
        """Sandbox port -> the caller-side address forwarding to it."""
        return {port: listener.getsockname() for port, listener in self._listeners.items()}

    def close(self) -> None:
        for listener in self._listeners.values():
            _close(listener)

    async def serve(self) -> None:
        """Accept and forward until cancelled; then every connection is closed."""
        async with anyio.create_task_group() as tg:
            for port, listener in self._listeners.items():
                tg.start_soon(self._accept, port, listener, tg)

    async def _accept(self, port: int, listener: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except BlockingIOError:
                await anyio.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await anyio.sleep(0.1)  # out of fds or memory: try again later
                continue
            tg.start_soon(self._forward, port, client)

    async def _forward(self, port: int, client: socket.socket) -> None:
        client.setblocking(False)
        upstream: socket.socket | None = None
        try:
            upstream, address = self._connect(port)
            try:
                upstream.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(upstream)
                code = upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code)) from None
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, client, upstream)
                tg.start_soon(_pump, upstream, client)
        except OSError:
            pass  # refused or reset: the client sees its connection closed
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)


async def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``."""
    while True:
        try:
            data = src.recv(65536)
        except BlockingIOError:
            await anyio.wait_readable(src)
            continue
        if not data:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            return
        view = memoryview(data)
        while view:
            try:
                sent = dst.send(view)
            except BlockingIOError:
                await anyio.wait_writable(dst)
                continue
            view = view[sent:]


def _close(sock: socket.socket) -> None:
    fd = sock.detach()
    close_fd(fd)  # a task may be parked on it: notify_closing first
