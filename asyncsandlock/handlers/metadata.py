"""File metadata only inside ``fs_writable``: mode, owner, times, user xattrs.

Landlock (up to ABI 7) does not govern ``chmod``, ``chown``, ``utimes`` or
``setxattr``: file permissions alone decide, and a child started by root is
the owner of every root-owned file (``chmod 4777`` on a binary under
``fs_readable`` would hand every local user a setuid-root program).  The
filter sends these calls here; :class:`MetadataGuard` resolves the object
once (``_objects.py``), refuses it unless it lies in a writable tree, and
performs the call on that object itself, so no path is resolved twice and
a swapped symlink changes nothing.

The supervisor may be root with every capability; the child has none.  So
the permission checks the kernel would have made for the child are made
here, from its ``/proc/TID/status``, before our call:

- mode: only the owner, and never a set-user-ID or set-group-ID bit (the
  filter refuses those already; this is the second line);
- owner: only the owner, keeping the uid, giving the file one of its own
  groups (what an unprivileged ``chown`` can do);
- times: the owner; "now" also whoever may write the file;
- xattrs: only the ``user.`` namespace, only the owner (``security.capability``
  would grant file capabilities, ``system.posix_acl_*`` permissions).

Objects outside ``fs_writable``, and objects with no path at all (pipes,
sockets, memfds named by fd), get EPERM.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

from .._core import ffi
from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction
from .._kernel._overlay import LIVE_OVERLAYS, LIVE_SNAPSHOTS, mount_id
from .._kernel._sys import syscall
from .._objects import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    Creds,
    Target,
    int_arg,
    object_path,
    proc_fd,
    real_roots,
    within,
)

_SET_ID_BITS: Final = stat.S_ISUID | stat.S_ISGID
_UNCHANGED: Final = 0xFFFFFFFF  # (uid_t)-1 / (gid_t)-1
_UTIME_NOW: Final = (1 << 30) - 1
_UTIME_OMIT: Final = (1 << 30) - 2
_TWO_LONGS: Final = struct.Struct("=2q")
_TWO_PAIRS: Final = struct.Struct("=4q")
_XATTR_NAME_MAX: Final = 255
_XATTR_SIZE_MAX: Final = 65536
_XATTR_ARGS: Final = struct.Struct("=QII")  # struct xattr_args: value, size, flags
_USER_XATTR: Final = b"user."
_XATTR_FLAGS: Final = 0x3  # XATTR_CREATE | XATTR_REPLACE


@dataclass(frozen=True, slots=True)
class _Form:
    """Where a syscall's object and operands are, by argument index."""

    op: str  # "mode" | "owner" | "utime" | "timeval" | "timespec" | "setxattr" | ...
    operand: int  # the first argument of the operation proper
    path: int | None = None  # None: the object is the fd in ``dirfd``
    dirfd: int | None = None  # None: AT_FDCWD
    flags: int | None = None  # AT_* flags
    follow: bool = True  # without flags: does the call follow a final symlink?


FORMS: Final[dict[str, _Form]] = {
    "chmod": _Form("mode", 1, path=0),
    "fchmod": _Form("mode", 1, dirfd=0),
    "fchmodat": _Form("mode", 2, path=1, dirfd=0),
    "fchmodat2": _Form("mode", 2, path=1, dirfd=0, flags=3),
    "chown": _Form("owner", 1, path=0),
    "lchown": _Form("owner", 1, path=0, follow=False),
    "fchown": _Form("owner", 1, dirfd=0),
    "fchownat": _Form("owner", 2, path=1, dirfd=0, flags=4),
    "utime": _Form("utime", 1, path=0),
    "utimes": _Form("timeval", 1, path=0),
    "futimesat": _Form("timeval", 2, path=1, dirfd=0),
    "utimensat": _Form("timespec", 2, path=1, dirfd=0, flags=3),
    "setxattr": _Form("setxattr", 1, path=0),
    "lsetxattr": _Form("setxattr", 1, path=0, follow=False),
    "fsetxattr": _Form("setxattr", 1, dirfd=0),
    "setxattrat": _Form("setxattrat", 3, path=1, dirfd=0, flags=2),
    "removexattr": _Form("removexattr", 1, path=0),
    "lremovexattr": _Form("removexattr", 1, path=0, follow=False),
    "fremovexattr": _Form("removexattr", 1, dirfd=0),
    "removexattrat": _Form("removexattr", 3, path=1, dirfd=0, flags=2),
}

#: The calls whose NULL path names the dirfd itself (``futimens`` is
#: ``utimensat(fd, NULL, ...)`` in libc).
_NULL_PATH_IS_FD: Final = frozenset({"utimensat", "futimesat"})


def _refused(code: int) -> OSError:
    """The call fails with ``code``, before anything was done."""
    return OSError(code, os.strerror(code))


class MetadataGuard(Handler):
    """Metadata calls on objects inside ``writable`` only, with the child's
    own permissions, performed by the supervisor on the object checked."""

    syscalls: ClassVar[tuple[str, ...]] = tuple(FORMS)
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __init__(self, writable: Iterable[str], workspace: str | None = None) -> None:
        self.roots = real_roots(writable)
        #: A copy-on-write workdir: its objects are the command's to change
        #: when they are on a workspace overlay (docs/workspaces.md).
        self.workspace = real_roots([workspace]) if workspace is not None else ()

    def __repr__(self) -> str:
        return f"<MetadataGuard writable={list(self.roots)}>"

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        form = FORMS[ctx.syscall]
        try:
            with Target(ctx) as target:
                # Everything from the child's memory is read first, once.
                obj, operation = await self._read(target, form)
                creds = target.creds()
                target.confirm()
                st = os.fstat(obj)
                where = object_path(obj)
                in_workspace = within(where, self.workspace)
                on_overlay = in_workspace and mount_id(obj) in LIVE_OVERLAYS
                # A snapshot workspace: the run's own copy, at another path.
                copy = LIVE_SNAPSHOTS.get(target.ctx._listener)
                on_overlay = on_overlay or (copy is not None and within(where, (copy,)))
                # The workdir under its overlay is never the command's, even
                # where fs_writable covers it: an absolute symlink followed
                # here resolves from our root, in our mount namespace, where
                # no overlay hides the real files.
                if in_workspace and not on_overlay:
                    return NotifAction.errno(errno.EPERM)
                if not on_overlay and not within(where, self.roots):
                    return NotifAction.errno(errno.EPERM)
                return operation(obj, st, creds)
        except OSError as exc:
            return NotifAction.errno(exc.errno or errno.EPERM)

    async def _read(self, target: Target, form: _Form) -> tuple[int, _Operation]:
        """The object (an fd of ours) and the operation to perform on it."""
        args = target.ctx.args
        flags = int_arg(args[form.flags]) if form.flags is not None else 0
        if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
            raise _refused(errno.EINVAL)
        dirfd = int_arg(args[form.dirfd]) if form.dirfd is not None else AT_FDCWD
        # The operands come first: a bad one fails before any lookup, as in
        # the kernel, and nothing read later can depend on the object.
        operation = await _OPERATIONS[form.op](target.ctx, form.operand)
        if form.path is None:
            return _fd_object(target, dirfd), operation
        addr = args[form.path]
        if addr == 0 and target.ctx.syscall in _NULL_PATH_IS_FD:
            if dirfd == AT_FDCWD:
                raise _refused(errno.EFAULT)
            if flags & AT_SYMLINK_NOFOLLOW:
                raise _refused(errno.EINVAL)
            return _fd_object(target, dirfd), operation
        path = b"" if addr == 0 and flags & AT_EMPTY_PATH else await target.read_path(addr)
        follow = form.follow and not flags & AT_SYMLINK_NOFOLLOW
        return target.resolve(dirfd, path, follow=follow,
                              empty_path=bool(flags & AT_EMPTY_PATH)), operation


def _fd_object(target: Target, fd: int) -> int:
    """The object of an fd-form call (``fchmod`` & co): the kernel refuses
    those on an ``O_PATH`` fd."""
    obj = target.fd(fd)
    if fcntl.fcntl(obj, fcntl.F_GETFL) & os.O_PATH:
        raise _refused(errno.EBADF)
    return obj


# An operation is read from the child (the coroutine), then performed on the
# object: (our fd, its stat, the child's credentials) -> the answer.
class _Operation:
    def __call__(self, obj: int, st: os.stat_result, creds: Creds) -> NotifAction:
        raise NotImplementedError


class _Mode(_Operation):
    def __init__(self, mode: int) -> None:
        self.mode = mode

    def __call__(self, obj: int, st: os.stat_result, creds: Creds) -> NotifAction:
        if self.mode & _SET_ID_BITS or not creds.owns(st):
            return NotifAction.errno(errno.EPERM)
        os.chmod(proc_fd(obj), self.mode)
        return NotifAction.return_value(0)


class _Owner(_Operation):
    def __init__(self, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid

    def __call__(self, obj: int, st: os.stat_result, creds: Creds) -> NotifAction:
        # What chown allows without CAP_CHOWN: the owner keeps the uid and
        # may give the file one of its own groups.
        if self.uid != _UNCHANGED and not (creds.owns(st) and self.uid == st.st_uid):
            return NotifAction.errno(errno.EPERM)
        if self.gid != _UNCHANGED and not (
                creds.owns(st) and (self.gid == st.st_gid or creds.in_group(self.gid))):
            return NotifAction.errno(errno.EPERM)
        os.chown(proc_fd(obj), _id(self.uid), _id(self.gid))
        return NotifAction.return_value(0)


def _id(value: int) -> int:
    return -1 if value == _UNCHANGED else value


class _Times(_Operation):
    """Times as ``utimensat`` takes them: None is "both now"."""

    def __init__(self, times: tuple[int, int, int, int] | None) -> None:
        if times is not None and times[1] == times[3] == _UTIME_NOW:
            times = None
        self.times = times

    def __call__(self, obj: int, st: os.stat_result, creds: Creds) -> NotifAction:
        times = self.times
        if times is not None and times[1] == times[3] == _UTIME_OMIT:
            return NotifAction.return_value(0)  # nothing to change: the kernel's answer too
        if not creds.owns(st):
            # Setting explicit times is the owner's; "now" anyone's who may write.
            if times is not None:
                return NotifAction.errno(errno.EPERM)
            if not creds.may(st, 2):
                return NotifAction.errno(errno.EACCES)
        ctimes = ffi.NULL if times is None else ffi.new("int64_t[4]", list(times))
        syscall("utimensat", AT_FDCWD, ffi.new("char[]", proc_fd(obj).encode()), ctimes, 0)
        return NotifAction.return_value(0)


class _SetXattr(_Operation):
    def __init__(self, name: bytes, value: bytes, flags: int) -> None:
        if flags & ~_XATTR_FLAGS:
            raise _refused(errno.EINVAL)
        self.name, self.value, self.flags = name, value, flags

    def __call__(self, obj: int, st: os.stat_result, creds: Creds) -> NotifAction:
        if not self.name.startswith(_USER_XATTR) or not creds.owns(st):
            return NotifAction.errno(errno.EPERM)
        os.setxattr(proc_fd(obj), self.name, self.value, self.flags)
        return NotifAction.return_value(0)


class _RemoveXattr(_Operation):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def __call__(self, obj: int, st: os.stat_result, creds: Creds) -> NotifAction:
        if not self.name.startswith(_USER_XATTR) or not creds.owns(st):
            return NotifAction.errno(errno.EPERM)
        os.removexattr(proc_fd(obj), self.name)
        return NotifAction.return_value(0)


async def _read_mode(ctx: HandlerCtx, at: int) -> _Operation:
    return _Mode(ctx.args[at] & 0o7777)  # umode_t: the kernel keeps 16 bits, then these


async def _read_owner(ctx: HandlerCtx, at: int) -> _Operation:
    return _Owner(ctx.args[at] & 0xFFFFFFFF, ctx.args[at + 1] & 0xFFFFFFFF)


async def _read_utime(ctx: HandlerCtx, at: int) -> _Operation:
    if not ctx.args[at]:
        return _Times(None)
    actime, modtime = _TWO_LONGS.unpack(await ctx.read(ctx.args[at], _TWO_LONGS.size))
    return _Times((actime, 0, modtime, 0))


async def _read_timeval(ctx: HandlerCtx, at: int) -> _Operation:
    if not ctx.args[at]:
        return _Times(None)
    sec0, usec0, sec1, usec1 = _TWO_PAIRS.unpack(await ctx.read(ctx.args[at], _TWO_PAIRS.size))
    if not (0 <= usec0 < 1_000_000 and 0 <= usec1 < 1_000_000):
        raise _refused(errno.EINVAL)
    return _Times((sec0, usec0 * 1000, sec1, usec1 * 1000))


async def _read_timespec(ctx: HandlerCtx, at: int) -> _Operation:
    if not ctx.args[at]:
        return _Times(None)
    times = _TWO_PAIRS.unpack(await ctx.read(ctx.args[at], _TWO_PAIRS.size))
    for nsec in times[1::2]:
        if not (0 <= nsec < 1_000_000_000 or nsec in (_UTIME_NOW, _UTIME_OMIT)):
            raise _refused(errno.EINVAL)
    return _Times(times)


async def _read_name(ctx: HandlerCtx, addr: int) -> bytes:
    name = await ctx.read_cstr(addr, _XATTR_NAME_MAX + 1)
    if not name or len(name) > _XATTR_NAME_MAX:
        raise _refused(errno.ERANGE)
    return name


async def _read_value(ctx: HandlerCtx, addr: int, size: int) -> bytes:
    if size > _XATTR_SIZE_MAX:
        raise _refused(errno.E2BIG)
    return await ctx.read(addr, size) if size else b""


async def _read_setxattr(ctx: HandlerCtx, at: int) -> _Operation:
    name = await _read_name(ctx, ctx.args[at])
    value = await _read_value(ctx, ctx.args[at + 1], ctx.args[at + 2])
    return _SetXattr(name, value, int_arg(ctx.args[at + 3]))


async def _read_setxattrat(ctx: HandlerCtx, at: int) -> _Operation:
    name = await _read_name(ctx, ctx.args[at])
    size = ctx.args[at + 2]
    if size < _XATTR_ARGS.size:
        raise _refused(errno.EINVAL)
    if size > 4096:
        raise _refused(errno.E2BIG)
    raw = await ctx.read(ctx.args[at + 1], size)
    if any(raw[_XATTR_ARGS.size:]):  # a newer struct's fields we do not know
        raise _refused(errno.E2BIG)
    value_addr, value_size, flags = _XATTR_ARGS.unpack_from(raw)
    return _SetXattr(name, await _read_value(ctx, value_addr, value_size), flags)


async def _read_removexattr(ctx: HandlerCtx, at: int) -> _Operation:
    return _RemoveXattr(await _read_name(ctx, ctx.args[at]))


_OPERATIONS: Final = {
    "mode": _read_mode,
    "owner": _read_owner,
    "utime": _read_utime,
    "timeval": _read_timeval,
    "timespec": _read_timespec,
    "setxattr": _read_setxattr,
    "setxattrat": _read_setxattrat,
    "removexattr": _read_removexattr,
}
