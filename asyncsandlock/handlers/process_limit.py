"""``max_processes``: refuse fork/clone once the sandbox has that many processes.

The sandbox is one process group that nothing inside can leave, so the count
is the number of live processes in that group.  Threads (clone with
CLONE_THREAD) are not processes and pass.

The count is read when the notification is handled, before the fork it
allows has happened: forks issued at the same instant from several threads
of the sandbox may each be allowed, overshooting the limit by at most the
number of such threads; every later fork sees the true count again.
"""

from __future__ import annotations

import errno
import os
from typing import ClassVar

from .._core import ffi, lib
from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction

_CLONE_THREAD = 0x00010000


def count_group(pgid: int) -> tuple[int, int]:
    """The live processes whose process group is ``pgid``, and their threads.

    A scan of every ``/proc/PID/stat``, in C (``csrc/group.c``): a few system
    calls per process on the host, well under a millisecond where the same
    scan in Python took several on the event loop.  A process whose first
    thread has exited while others run on is alive although its stat says
    ``Z``: it is counted (the scan in Python missed it, and a sandbox could
    fork past the limit that way).
    """
    threads = ffi.new("long *")
    count: int = lib.asl_count_group(pgid, threads)
    if count < 0:
        raise OSError(-count, f"counting the processes of group {pgid}: {os.strerror(-count)}")
    return count, int(threads[0])


class ProcessLimit(Handler):
    """Deny process creation (EAGAIN, as the kernel does for RLIMIT_NPROC)
    once ``limit`` processes of the sandbox are alive."""

    syscalls: ClassVar[tuple[str, ...]] = ("fork", "vfork", "clone")
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __repr__(self) -> str:
        return f"<ProcessLimit {self.limit}>"

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        if ctx.syscall == "clone" and ctx.args[0] & _CLONE_THREAD:
            return NotifAction.continue_()
        pgid = os.getpgid(ctx.pid)
        if not ctx.is_valid():
            return NotifAction.continue_()
        if count_group(pgid)[0] >= self.limit:
            return NotifAction.errno(errno.EAGAIN)
        return NotifAction.continue_()
