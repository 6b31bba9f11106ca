"""inotify watches only on what the sandbox may read.

An inotify watch reports every access to the object by anyone: on a path
outside the policy it would tell the child what the caller, or other users,
do there (and Landlock does not govern ``inotify_add_watch``).
:class:`WatchGuard` resolves the path once (``_objects.py``), refuses an
object outside ``fs_readable`` and ``fs_writable``, and adds the watch
itself, to the child's own inotify instance (a ``pidfd_getfd`` copy of its
fd: the same open file), on the object it checked.  The child gets the
watch descriptor of that call.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import ClassVar, Final

from .._core import ffi
from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction
from .._kernel._sys import syscall
from .._objects import AT_FDCWD, Target, int_arg, object_path, proc_fd, real_roots, within

IN_ONLYDIR: Final = 0x01000000
IN_DONT_FOLLOW: Final = 0x02000000


class WatchGuard(Handler):
    """``inotify_add_watch`` on objects under ``roots`` only."""

    syscalls: ClassVar[tuple[str, ...]] = ("inotify_add_watch",)
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = real_roots(roots)

    def __repr__(self) -> str:
        return f"<WatchGuard roots={list(self.roots)}>"

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        mask = ctx.args[2] & 0xFFFFFFFF
        try:
            with Target(ctx) as target:
                path = await target.read_path(ctx.args[1])
                inotify = target.fd(int_arg(ctx.args[0]))
                obj = target.resolve(AT_FDCWD, path, follow=not mask & IN_DONT_FOLLOW,
                                     directory=bool(mask & IN_ONLYDIR))
                creds = target.creds()
                target.confirm()
                if not within(object_path(obj), self.roots):
                    return NotifAction.errno(errno.EPERM)
                if not creds.may(os.fstat(obj), 4):  # the kernel wants read permission
                    return NotifAction.errno(errno.EACCES)
                # Through the magic link the watch lands on the object we
                # hold; following it must not be turned off.
                wd = syscall("inotify_add_watch", inotify,
                             ffi.new("char[]", proc_fd(obj).encode()), mask & ~IN_DONT_FOLLOW)
        except OSError as exc:
            return NotifAction.errno(exc.errno or errno.EPERM)
        return NotifAction.return_value(wd)
