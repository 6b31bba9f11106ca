"""Ready handlers: deny or allow by path, audit paths, log syscalls.

They trap the whole family of calls that reach a file by name: opening
(``@open``), stat, access, readlink and exec (:data:`SYSCALL_GROUPS`), not
only the one call a program happens to use.  The path is resolved as the
kernel would for the child (relative to its working directory or its
``dirfd``; symlinks followed, see ``_objects.py``) and the decision is made
on the object's real location, so ``/etc/../etc/shadow`` or a symlink to a
denied file is the file it names.  A name that does not resolve (a file
about to be created) is judged on its normalized spelling.

What these are not: a boundary against a hostile program.  A handler that
answers "continue" lets the kernel resolve the name again, and another
thread of the child can change the name, or a symlink on the way, in
between.  Use them to audit, to shape what a cooperating program sees, or
as a second line; the boundary is the policy's ``fs_readable`` and
``fs_writable``, which Landlock enforces in the kernel.

.. versionadded:: 0.1
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable
from typing import ClassVar, Final

from .._groups import path_argument
from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction
from .._objects import AT_FDCWD, Target, int_arg, object_path, real_roots, within

#: The open, stat, access, readlink and exec families.
PATH_SYSCALLS: Final = ("@open", "@stat", "@access", "@readlink", "@exec")

_log = logging.getLogger("asyncsandlock.handlers")


async def resolved_path(ctx: HandlerCtx) -> str | None:
    """Where the file the trapped call names is (or would be): its canonical
    path if it resolves, else the normalized absolute spelling; None for an
    empty path (``AT_EMPTY_PATH``: the call is about an fd already open)."""
    index = path_argument(ctx.syscall)
    if index is None:
        raise ValueError(f"{ctx.syscall} has no path argument")
    dirfd = int_arg(ctx.args[index - 1]) if index > 0 else AT_FDCWD
    with Target(ctx) as target:
        raw = await target.read_path(ctx.args[index])
        if not raw:
            return None
        try:
            obj = target.resolve(dirfd, raw, follow=True)
            path = object_path(obj)
        except OSError:
            base = object_path(target.cwd() if dirfd == AT_FDCWD else target.fd(dirfd))
            path = _spelled(base, os.fsdecode(raw))
        target.confirm()
    return path


def _spelled(base: str, raw: str) -> str:
    # String work only: normpath and join touch no file system.
    return os.path.normpath(os.path.join(base, raw))


class _PathRule(Handler):
    syscalls: ClassVar[tuple[str, ...]] = PATH_SYSCALLS
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __init__(self, prefixes: Iterable[str | os.PathLike[str]], *,
                 error: int = errno.EACCES) -> None:
        self.prefixes = real_roots(os.fspath(p) for p in prefixes)
        self.error = error

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {list(self.prefixes)}>"

    def _allowed(self, path: str) -> bool:
        raise NotImplementedError

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        try:
            path = await resolved_path(ctx)
        except ProcessLookupError:
            return NotifAction.errno(errno.ESRCH)
        if path is None or self._allowed(path):
            return NotifAction.continue_()
        return NotifAction.errno(self.error)


class DenyPaths(_PathRule):
    """Refuse (EACCES by default) every open, stat, access, readlink and exec
    of a file under one of ``prefixes``."""

    def _allowed(self, path: str) -> bool:
        return not within(path, self.prefixes)


class AllowPaths(_PathRule):
    """Refuse every open, stat, access, readlink and exec of a file that is
    *not* under one of ``prefixes``."""

    def _allowed(self, path: str) -> bool:
        return within(path, self.prefixes)


class AuditPaths(Handler):
    """Report each file the sandbox opens, stats or executes, and let it be.

    :param report: called with (syscall, resolved path); the default logs at
        INFO on the ``asyncsandlock.handlers`` logger.
    """

    syscalls: ClassVar[tuple[str, ...]] = PATH_SYSCALLS
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.CONTINUE

    def __init__(self, report: Callable[[str, str], object] | None = None) -> None:
        self.report = report or (lambda call, path: _log.info("%s %s", call, path))

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        path = await resolved_path(ctx)
        if path is not None:
            self.report(ctx.syscall, path)
        return NotifAction.continue_()


class LogSyscalls(Handler):
    """Report each call of ``names`` (syscalls or groups) with its pid and
    raw arguments, and let it be."""

    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.CONTINUE

    def __init__(self, names: Iterable[str],
                 report: Callable[[str, int, tuple[int, ...]], object] | None = None) -> None:
        # Handler.syscalls is read per instance by the policy's checks.
        self.syscalls = tuple(names)  # type: ignore[misc]
        self.report = report or (
            lambda call, pid, args: _log.info("%s pid=%d args=%s", call, pid,
                                              [hex(a) for a in args]))

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.report(ctx.syscall, ctx.pid, tuple(ctx.args))
        return NotifAction.continue_()
