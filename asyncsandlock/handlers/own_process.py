"""Resource limits, priorities and CPU placement of the sandbox's own processes only.

``prlimit64``, ``setpriority``, ``sched_setaffinity``, ``sched_setscheduler``,
``sched_setparam``, ``sched_setattr`` and ``ioprio_set`` act on any process
of the same uid, and Landlock's scoping covers signals only: a child could
lower its caller's ``RLIMIT_CPU`` and have it killed by SIGXCPU.  The filter
lets the calling process itself (pid or who 0) through and refuses a whole
user (``PRIO_USER``, ``IOPRIO_WHO_USER``); what names another process or a
process group comes here.  :class:`OwnProcessGuard` lets it run only when the
target is in the sandbox's process group (nothing inside can change its own
group: ``setsid`` and ``setpgid`` are denied), which covers the child's
other threads too; a pid that does not exist gets ESRCH, any other EPERM.

The pid is a register, not memory: the kernel uses the number we checked,
so answering ``continue_()`` is sound except for one window.  Between our
look at the target's group and the kernel's own lookup of the pid, the
target may exit, be reaped and its pid be handed out again.  For that pid
to reach a process outside the sandbox, the pid allocator, which hands out
pids in increasing order, would have to go once around all of ``pid_max``
(32768 on a default kernel) inside that window of microseconds.  We accept
that; there is no way to name a target by pidfd for these calls.

A sandbox without a process group of its own (nested, with
``Subsystem.PROCESS_GROUP`` degraded) shares its group with its caller, and
then the group tells nothing: only the calling process itself is allowed.
"""

from __future__ import annotations

import errno
import os
from typing import ClassVar, Final

from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction
from .._objects import int_arg

#: Calls whose ``which`` (arg 0) says what ``who`` (arg 1) is:
#: (process, process group, user) values of ``which``.
_WHICH: Final = {
    "setpriority": (0, 1, 2),  # PRIO_PROCESS, PRIO_PGRP, PRIO_USER
    "ioprio_set": (1, 2, 3),  # IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER
}
#: Calls whose arg 0 is the pid, and the errno the kernel gives a negative one.
_PID: Final = {
    "prlimit64": errno.ESRCH,
    "sched_setaffinity": errno.EINVAL,
    "sched_setscheduler": errno.EINVAL,
    "sched_setparam": errno.EINVAL,
    "sched_setattr": errno.EINVAL,
}

_CONTINUE: Final = NotifAction.continue_()
_EPERM: Final = NotifAction.errno(errno.EPERM)


class OwnProcessGuard(Handler):
    """The calls above on the sandbox's own processes (or group) only."""

    syscalls: ClassVar[tuple[str, ...]] = (*_WHICH, *_PID)
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __repr__(self) -> str:
        return "<OwnProcessGuard>"

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        target = _target(ctx)
        if isinstance(target, NotifAction):
            return target
        who, group = target
        try:
            own = os.getpgid(ctx.pid)
            if not ctx.is_valid():
                return _EPERM  # the caller is gone; nobody reads the answer
            # Without a group of its own the sandbox shares its caller's:
            # then only pid 0 is known to be the sandbox.
            same = own != os.getpgrp() and (who if group else os.getpgid(who)) == own
        except ProcessLookupError:
            return NotifAction.errno(errno.ESRCH)
        return _CONTINUE if same else _EPERM


def _target(ctx: HandlerCtx) -> tuple[int, bool] | NotifAction:
    """(pid or process group, whether a group) the call names, or the answer
    when the registers decide alone."""
    group = False
    if ctx.syscall in _WHICH:
        process, pgrp, user = _WHICH[ctx.syscall]
        which, who = int_arg(ctx.args[0]), int_arg(ctx.args[1])
        if which == user:
            return _EPERM
        if which not in (process, pgrp):
            return NotifAction.errno(errno.EINVAL)
        group = which == pgrp
    else:
        who = int_arg(ctx.args[0])
        if who < 0:
            return NotifAction.errno(_PID[ctx.syscall])
    if who == 0:
        return _CONTINUE  # the caller itself (or its own group)
    return who, group
