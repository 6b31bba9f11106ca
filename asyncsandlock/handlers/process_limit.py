"""``max_processes`` and ``max_threads``: refuse fork/clone once the sandbox
has that many processes, or its processes that many threads together.

The sandbox is one process group that nothing inside can leave, so the count
is the number of live processes in that group, and of their threads.  A
thread (clone with CLONE_THREAD) is not a process: only ``max_threads``
counts it; a new process is a new thread too, so both count it.  clone3,
whose flags BPF cannot read, is ENOSYS inside the sandbox, so every thread
and process is made by a clone, fork or vfork trapped here; under
``max_processes`` alone the filter lets a thread's clone (CLONE_THREAD)
through untrapped (:func:`sees_threads`).  RLIMIT_NPROC would not do: it
counts tasks, threads included, of the uid in its user namespace, and
nothing for kuid 0 (docs/limits.md, "Forks and signals").

A trapped call waits for our answer; the listener's WAIT_KILLABLE_RECV
(``_spawn.py``) keeps a signal from ending that wait with EINTR once the
notification is received, which fork never returns.  Before the receive a
signal still ends it, with ERESTARTSYS: the kernel restarts the fork if the
signal's handler has SA_RESTART, and fails it with EINTR if not.  The
signal that comes is nearly always SIGCHLD, from a child that has just
exited (dash forks the next stage of a pipeline as the last one ends), so
the filter also sends us every new SIGCHLD action (``rt_sigaction``, rare:
the other signals and queries pass unseen), and a handler without
SA_RESTART gets it (:meth:`ProcessLimit._restarting`).  The difference
the program can see: a call the kernel restarts (read or write of a pipe,
wait4...) is restarted after its SIGCHLD handler has run, not failed with
EINTR, as with glibc's ``signal()`` and bash's own SIGCHLD handler; Python
retries those itself anyway (PEP 475).  A fork interrupted by another
signal with a handler without SA_RESTART can still fail with EINTR.

The count is read when the notification is handled, before the fork it
allows has happened: forks issued at the same instant from several threads
of the sandbox may each be allowed, overshooting the limit by at most the
number of such threads; every later fork sees the true count again.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import ClassVar

from .._core import ffi, lib
from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction

_CLONE_THREAD = 0x00010000
#: SIGCHLD handlers get SA_RESTART (:meth:`ProcessLimit._restarting`); the
#: benchmark turns it off to show what it prevents.
RESTART_SIGCHLD = True
_SIGCHLD = 17
_SIG_DFL, _SIG_IGN = 0, 1
_SA_RESTART = 0x10000000
_HANDLER_AND_FLAGS = struct.Struct("=QQ")
_FLAGS = struct.Struct("=Q")


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


def sees_threads(chain: tuple[Handler, ...]) -> bool:
    """Whether a handler of the ``clone`` chain ``chain`` must see the clones
    that make a thread: any but a ProcessLimit without ``max_threads``,
    which lets them pass.  When none must, the filter lets them through
    untrapped (``FilterSpec.self_trapped``): no round trip per thread
    (docs/limits.md, "Forks and signals")."""
    return any(not isinstance(handler, ProcessLimit) or handler.threads is not None
               for handler in chain)


def sees_every_sigaction(chain: tuple[Handler, ...]) -> bool:
    """Whether a handler of the ``rt_sigaction`` chain ``chain`` must see
    every call, not only the new SIGCHLD actions the filter sends a
    ProcessLimit (``_bpf._rt_sigaction``)."""
    return any(not isinstance(handler, ProcessLimit) for handler in chain)


class ProcessLimit(Handler):
    """Deny process creation (EAGAIN, as the kernel does for RLIMIT_NPROC)
    once ``limit`` processes of the sandbox are alive, and thread or process
    creation once its processes run ``threads`` threads (None: no limit)."""

    syscalls: ClassVar[tuple[str, ...]] = ("fork", "vfork", "clone", "rt_sigaction")
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __init__(self, limit: int | None, threads: int | None = None) -> None:
        self.limit = limit
        self.threads = threads

    def __repr__(self) -> str:
        return f"<ProcessLimit {self.limit} threads={self.threads}>"

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        if ctx.syscall == "rt_sigaction":
            return await self._restarting(ctx)
        thread = ctx.syscall == "clone" and bool(ctx.args[0] & _CLONE_THREAD)
        if thread and self.threads is None:
            return NotifAction.continue_()
        pgid = os.getpgid(ctx.pid)
        if not ctx.is_valid():
            return NotifAction.continue_()
        processes, threads = count_group(pgid)
        if (not thread and self.limit is not None and processes >= self.limit) or (
                self.threads is not None and threads >= self.threads):
            return NotifAction.errno(errno.EAGAIN)
        return NotifAction.continue_()

    @staticmethod
    async def _restarting(ctx: HandlerCtx) -> NotifAction:
        """A new SIGCHLD action (``rt_sigaction(SIGCHLD, act, ...)``): give
        a handler SA_RESTART before the kernel copies ``act``, so that a
        fork this signal interrupts before we received it restarts instead
        of failing with EINTR (see the module's essay).  ``sa_flags`` is
        the second word of the kernel's ``struct sigaction`` on every arch
        of the table.  The write goes through ``/proc/PID/mem``, checked to
        be the target's (``HandlerCtx.write``), and reaches a ``const``
        struct too, as a debugger's would; what the program does to
        ``act`` meanwhile is its own affair.  Anything unreadable is left
        to the kernel, which answers it as before."""
        signum, act = ctx.args[0] & 0xFFFFFFFF, ctx.args[1]
        if signum != _SIGCHLD or not act or not RESTART_SIGCHLD:
            return NotifAction.continue_()
        try:
            handler, flags = _HANDLER_AND_FLAGS.unpack(await ctx.read(act, _HANDLER_AND_FLAGS.size))
            if handler not in (_SIG_DFL, _SIG_IGN) and not flags & _SA_RESTART:
                await ctx.write(act + 8, _FLAGS.pack(flags | _SA_RESTART))
        except OSError:
            pass
        return NotifAction.continue_()
