"""The network guard's connect, answered from the event loop in one C call.

A guarded ``connect`` through the Python path costs a notification's
dispatch (a HandlerCtx, a coroutine stepped by hand, a Target) and five
crossings into C around the work itself: more than the connect.  When a
run's ``connect`` goes to :class:`~asyncsandlock.handlers.NetGuard` first
(built-in guards come first, and it never answers "continue", so it alone
decides), the supervisor's pump calls :meth:`FastConnect.pump` instead of
receiving in Python: ``csrc/netfast.c`` receives the queued notifications
and answers every connect whose destination's verdict the guard has
memoised (``NetTargets.verdicts``), with the same checks as the guard
(see that file for the order of its looks, and why a thread already known
needs no ``ID_VALID``).  It hands Python the first
notification it cannot decide, whatever the syscall, and a blocking
connect whose handshake is not over, which :func:`finish_connect` waits
for on the loop.

The rules are read by the Python guard alone: the first connect to a
destination goes through it and leaves its verdict in the memo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from ._core import ffi, lib
from ._handler import Handler
from ._kernel._sys import SYSCALLS
from .handlers.net import NetGuard

#: What :meth:`FastConnect.pump` returns.
NONE_QUEUED: Final = 0
FOR_PYTHON: Final = 1
UNDER_WAY: Final = 2
HUNG_UP: Final = 3
_CONNECT: Final = SYSCALLS.get("connect", -1)
#: Whether the pump hands the CPU to the child after an answer when nothing
#: is queued, for its next connect (``yield_to_child`` in ``csrc/netfast.c``).
#: A module setting, read by each new :class:`FastConnect`: benchmarks turn it
#: off to compare.
YIELD_TO_CHILD = True


class FastConnect:
    """The C fast path of one listener's guarded connects."""

    __slots__ = ("_address", "_c", "_out", "_verdicts")

    def __init__(self, listener: int, guard: NetGuard) -> None:
        self._verdicts = guard.targets.verdicts  # kept alive as long as the C side uses it
        c = lib.asl_fast_new(listener, _CONNECT, self._verdicts)
        if c == ffi.NULL:
            raise MemoryError
        self._c = ffi.gc(c, lib.asl_fast_free)
        if not YIELD_TO_CHILD:
            lib.asl_fast_yield(c, 0)
        self._out = ffi.new("int[3]")
        self._address = ffi.new("char[128]")

    @classmethod
    def create(cls, listener: int, routes: Mapping[int, tuple[Handler, ...]]
               ) -> FastConnect | None:
        """The fast path for ``listener``, or None if a network guard does
        not decide its connects."""
        chain = routes.get(_CONNECT, ())
        if chain and type(chain[0]) is NetGuard:
            return cls(listener, chain[0])
        return None

    def __repr__(self) -> str:
        return f"<FastConnect verdicts={self._verdicts!r}>"

    def pump(self, buf: Any, batch: int) -> int:
        """Answer up to ``batch`` queued notifications; one of the constants
        above (``buf``: where a notification for Python is left)."""
        rc = int(lib.asl_fast_pump(self._c, buf, batch, self._out))
        if rc < 0:
            raise OSError(-rc, f"seccomp listener: {os.strerror(-rc)}")
        return rc

    @property
    def served(self) -> int:
        """How many notifications the last :meth:`pump` answered."""
        return int(self._out[0])

    def under_way(self) -> tuple[int, int, bytes]:
        """(our copy of the socket, connect's errno, the sockaddr) of a
        connect :meth:`pump` left :data:`UNDER_WAY`; the fd is the caller's."""
        length = int(lib.asl_fast_address(self._c, self._address))
        return int(self._out[1]), int(self._out[2]), ffi.buffer(self._address, length)[:]

    def close(self) -> None:
        """Close the cached pidfds (the supervisor stops)."""
        lib.asl_fast_close(self._c)
