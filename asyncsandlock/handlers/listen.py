"""``listen()`` only on a socket bound where the policy allows.

``listen()`` on an unbound TCP socket binds it to an ephemeral port on every
address first, and Landlock's bind hook never sees that bind: the child
would accept connections from anywhere although it may bind nothing.
:class:`ListenGuard` takes a copy of the child's socket (``pidfd_getfd``:
the same socket) and listens on it itself, only if its port is one that
``net_allow_bind`` grants, or it is listening already.

Why the port must be a granted one, not merely non-zero
--------------------------------------------------------
``getsockname`` does not tell a bound socket from an unbound one: a socket
that ``connect()`` bound implicitly keeps reporting that port after the child
disconnects it (``connect(AF_UNSPEC)``), although the port went back to the
kernel and ``listen()`` would autobind a new one.  Nor can any check be
made atomic with our ``listen()``: another thread of the child may
connect and disconnect the socket between the two.  So the guard asks for
something that makes the outcome safe whatever happens in between:

- before: the port is one the policy lets the child bind (or the socket is
  already listening, on a port someone bound for it);
- after: the port is unchanged.  If ``listen()`` autobound a different port,
  the socket is shut down at once, which empties its accept queue, and the
  call fails with EPERM.  If the autobind happened to pick the very same
  port, the child listens on a port it could have bound and listened on
  anyway (Landlock restricts bind ports, not addresses).

What remains is the few microseconds between such an autobind and the
shutdown, during which the socket listens on an unknown ephemeral port.
Unix sockets (and other families) are not checked: they have no ports.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from typing import ClassVar, Final

from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction
from .._kernel._sys import syscall
from .._objects import Target, int_arg

_INET: Final = (socket.AF_INET, socket.AF_INET6)
_TCP_LISTEN: Final = 10  # tcpi_state of a listening socket


def _inet_state(fd: int) -> tuple[int, bool] | None:
    """(local port, listening) of the inet socket ``fd``; None for any other
    family.  Raises ENOTSOCK for anything but a socket."""
    sock = socket.socket(fileno=fd)
    try:
        if sock.family not in _INET:
            return None
        port = int(sock.getsockname()[1])
        try:
            listening = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_LISTEN
        except OSError:  # not TCP: listen() will say EOPNOTSUPP
            listening = False
        return port, listening
    finally:
        sock.detach()  # the fd stays ours to close, once


class ListenGuard(Handler):
    """``listen`` on inet sockets bound to one of ``ports`` (or listening
    already), and on sockets of other families."""

    syscalls: ClassVar[tuple[str, ...]] = ("listen",)
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __init__(self, ports: Iterable[int] | None = ()) -> None:
        # None ("*"), or 0 (an ephemeral port): any port.  listen()'s autobind
        # takes an ephemeral port, which bind(port 0) may take anyway, and
        # every other port got through Landlock's bind check.
        self.every_port = ports is None or 0 in ports
        self.ports = frozenset(ports or ())

    def __repr__(self) -> str:
        shown = "*" if self.every_port else sorted(self.ports)
        return f"<ListenGuard ports={shown}>"

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        try:
            with Target(ctx) as target:
                sock = target.fd(int_arg(ctx.args[0]))
                target.confirm()
                before = _inet_state(sock)
                if self.every_port:
                    before = None
                if before is not None and before[0] not in self.ports and not before[1]:
                    return NotifAction.errno(errno.EPERM)
                syscall("listen", sock, int_arg(ctx.args[1]))
                after = _inet_state(sock)
                if before is not None and (after is None or after[0] != before[0]):
                    with contextlib.suppress(OSError):
                        syscall("shutdown", sock, socket.SHUT_RDWR)
                    return NotifAction.errno(errno.EPERM)
        except OSError as exc:
            return NotifAction.errno(exc.errno or errno.EPERM)
        return NotifAction.return_value(0)
