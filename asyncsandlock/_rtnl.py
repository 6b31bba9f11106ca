"""Route netlink requests on the event loop, with pyroute2 as the codec.

Why not ``pyroute2.IPRoute``
----------------------------
pyroute2 0.9's synchronous ``IPRoute`` drives an asyncio event loop of its
own with ``run_until_complete``: inside a running asyncio loop that raises
("This event loop is already running"), and under Trio it would run a
second loop on the same thread.  Its ``AsyncIPRoute`` is asyncio-only.  So
we use pyroute2 for what it is best at, encoding and decoding rtnetlink
messages (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``), and carry them ourselves
over a non-blocking ``NETLINK_ROUTE`` socket awaited with anyio: no thread,
no second loop, both backends.

Why each call is safe on the loop
---------------------------------
The kernel handles an rtnetlink request inside ``sendmsg``: the message is
parsed and applied (a veth made, an address added) under the RTNL lock and
the acknowledgement queued before ``send`` returns.  So ``send`` is a
syscall of tens to hundreds of microseconds, the answer is already there
when we read, and :meth:`Rtnl.request` only awaits (``wait_readable``) if
it is not.  The one wait that can be longer is for the RTNL lock itself,
held by another process configuring the network at that moment; deleting a
link waits for an RCU grace period (milliseconds) and is done after the
sandbox has ended, off the spawn path.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import anyio

from ._fd import close_fd

_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4


class Rtnl:
    """One non-blocking ``NETLINK_ROUTE`` socket, in the network namespace
    it was created in (the netlink socket of a namespace acts on that
    namespace, whatever the thread that uses it)."""

    __slots__ = ("_fd", "_seq", "_sock")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._sock = socket.socket(fileno=fd)
        self._sock.setblocking(False)
        self._seq = itertools.count(1)

    @classmethod
    def open(cls, groups: int = 0) -> Rtnl:
        """A socket in the caller's own network namespace, subscribed to the
        multicast ``groups`` (``RTMGRP_*``)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        if groups:
            try:
                sock.bind((0, groups))
            except BaseException:
                sock.close()
                raise
        return cls(sock.detach())

    async def wait_for(self, gone: Callable[[], bool]) -> None:
        """Wait until ``gone()`` is true, checking it again after each batch of
        notifications (this socket must be subscribed to what changes it)."""
        while not gone():
            try:
                while self._sock.recv(65536):  # drain: only the wake-up counts
                    pass
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overrun: events lost, check again
                    raise

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._sock.detach()
            close_fd(fd)

    async def request(self, msg: Any, flags: int = 0) -> list[bytes]:
        """Send ``msg`` (a pyroute2 message with its type set) and return the
        messages the kernel answered before its acknowledgement; an error
        acknowledgement raises :class:`OSError` with its errno."""
        seq = next(self._seq)
        msg["header"]["flags"] = _NLM_F_REQUEST | _NLM_F_ACK | flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        self._sock.send(bytes(msg.data))
        answers: list[bytes] = []
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, got, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise OSError(errno.EPROTO, "malformed netlink answer")
                if got == seq:
                    if kind == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                        if code:
                            raise OSError(-code, os.strerror(-code))
                        break
                    if kind == _NLMSG_DONE:
                        break
                    answers.append(data[offset:offset + length])
                offset += (length + 3) & ~3
            else:
                continue
            # Let the loop run between the pieces of a configuration.
            await anyio.lowlevel.checkpoint()
            return answers
