"""``listen()`` only on a socket that was bound where the policy allows.

``listen()`` on an unbound TCP socket binds it to an ephemeral port on every
address first, and Landlock's bind hook never sees that bind: the child
would accept connections from anywhere although it may bind nothing.
:class:`ListenGuard` takes a copy of the child's socket (``pidfd_getfd``:
the same socket), refuses an ``AF_INET``/``AF_INET6`` one whose port is 0,
and listens on it itself, so no other thread of the child can slip a bind
state change between the check and the call it answers.

One change can still come between our look and our ``listen()``: a socket
that ``connect()`` bound implicitly loses its port again when the child
disconnects it (``connect(AF_UNSPEC)``).  So the port is read again after
``listen()``; if it changed, the kernel autobound one and the socket is shut
down at once, which empties its accept queue before the child can accept
anything, and the call fails with EPERM.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import ClassVar, Final

from .._handler import ExceptionPolicy, Handler
from .._notify import HandlerCtx, NotifAction
from .._objects import Target, int_arg
from .._sys import syscall

_INET: Final = (socket.AF_INET, socket.AF_INET6)


def _port(fd: int) -> int | None:
    """The local port of the socket ``fd`` if it is an inet one, else None.

    Raises ENOTSOCK for anything else than a socket.
    """
    sock = socket.socket(fileno=fd)
    try:
        if sock.family not in _INET:
            return None
        return int(sock.getsockname()[1])
    finally:
        sock.detach()  # the fd stays ours to close, once


class ListenGuard(Handler):
    """``listen`` on bound inet sockets (and on others, e.g. unix) only."""

    syscalls: ClassVar[tuple[str, ...]] = ("listen",)
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __repr__(self) -> str:
        return "<ListenGuard>"

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        try:
            with Target(ctx) as target:
                sock = target.fd(int_arg(ctx.args[0]))
                target.confirm()
                port = _port(sock)
                if port == 0:
                    return NotifAction.errno(errno.EPERM)
                syscall("listen", sock, int_arg(ctx.args[1]))
                if port is not None and _port(sock) != port:
                    with contextlib.suppress(OSError):
                        syscall("shutdown", sock, socket.SHUT_RDWR)
                    return NotifAction.errno(errno.EPERM)
        except OSError as exc:
            return NotifAction.errno(exc.errno or errno.EPERM)
        return NotifAction.return_value(0)
