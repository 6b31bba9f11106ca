"""The objects a trapped syscall names, opened in the supervisor for a guard.

Check the object, act on the object
-----------------------------------
A guard that decides on a path string and then answers ``continue_()``
checks one thing and allows another: the kernel resolves the string again,
and between the two resolutions another thread of the child can rewrite
the string, or swap a symlink on the way.  So a guard here reads the path
*once*, resolves it itself into an ``O_PATH`` fd of ours (:meth:`Target.resolve`),
decides on that object (its real location, its owner and mode), and then
performs the call on that same object through ``/proc/self/fd/N``: that
magic link jumps to the object the fd holds, and nothing is resolved by
name again.  The child gets the result of our call.

Resolving as the child would
----------------------------
- a relative path starts at the trapping thread's working directory
  (``/proc/TID/cwd``, opened) or at a copy of its ``dirfd``
  (``pidfd_getfd``, the same open file); an absolute one at the thread's
  root (``/proc/TID/root``): our root directory (``chroot`` is denied in a
  sandbox), but in the child's mount namespace, where a workspace's overlay
  covers its ``workdir`` (resolved at our own root, a path into the
  workdir would reach the directory under the overlay);
- ``AT_SYMLINK_NOFOLLOW`` (or the call's own no-follow form) and
  ``AT_EMPTY_PATH`` are honoured;
- magic links are not followed (``openat2`` with ``RESOLVE_NO_MAGICLINKS``):
  resolved here, ``/proc/self`` would be the supervisor, and its fds ours.
  The one form programs do use, ``/proc/self/fd/N[/...]`` (glibc emulates
  ``lchmod`` and ``fchmodat(AT_SYMLINK_NOFOLLOW)`` with it), is mapped to the
  child's own fd N.

The resolution runs with the supervisor's credentials: search permission on
the directories on the way is not the child's.  That gives the child nothing
a guard cares about: a guard only ever acts on an object inside a tree the
policy lists (and Landlock does not govern traversal either), with the
child's own permissions on that object emulated (:class:`Creds`).

Pid reuse
---------
The target is named by its thread id, and ids are recycled.  Everything
opened or read through that id (the pidfd, ``/proc/TID/cwd``,
``/proc/TID/status``) is followed by :meth:`Target.confirm`, an ID_VALID
check (see ``_kernel/_notify.py``): while the notification is pending the thread
is alive and blocked in the call, so the id was still its own, and the fds
we hold from then on stay bound to its objects whatever happens to the id.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ._core import ffi
from ._kernel._notify import HandlerCtx
from ._kernel._sys import syscall

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_EMPTY_PATH: Final = 0x1000
#: The kernel refuses longer paths (PATH_MAX counts the NUL).
PATH_MAX: Final = 4096
_PIDFD_THREAD: Final = os.O_EXCL  # pidfd_open of any thread (Linux 6.9+)
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_OPEN_HOW_SIZE: Final = 24  # struct open_how: flags, mode, resolve (u64 each)
_PROC_SELF_FD = re.compile(rb"/proc/(?:self|thread-self)/fd/([0-9]+)(/.*)?", re.DOTALL)


def int_arg(value: int) -> int:
    """A C ``int`` argument (fd, pid, flags) from its 64-bit register."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def proc_fd(fd: int) -> str:
    """The path that names the object fd ``fd`` of ours holds."""
    return f"/proc/self/fd/{fd}"


def real_roots(paths: Iterable[str]) -> tuple[str, ...]:
    """The canonical form of each policy path, to compare objects' paths with."""
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))


def within(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` (absolute, canonical) is one of ``roots`` or below one."""
    return any(root in ("/", path) or path.startswith(root + "/") for root in roots)


def object_path(fd: int) -> str:
    """Where the object held by our ``fd`` is: its canonical path at this
    moment.  An object outside our root, or without a path (a pipe, a
    socket, a memfd), gets a string that is under no policy path."""
    return os.readlink(proc_fd(fd))


@dataclass(frozen=True, slots=True)
class Creds:
    """The file-access identity of the trapping thread (``/proc/TID/status``)."""

    fsuid: int
    fsgid: int
    groups: frozenset[int]

    @classmethod
    def parse(cls, status: bytes) -> Creds:
        # Uid/Gid: real, effective, saved, filesystem.
        return cls(int(_status_field(status, b"Uid").split()[3]),
                   int(_status_field(status, b"Gid").split()[3]),
                   frozenset(map(int, _status_field(status, b"Groups").split())))

    def owns(self, st: os.stat_result) -> bool:
        return st.st_uid == self.fsuid

    def in_group(self, gid: int) -> bool:
        return gid == self.fsgid or gid in self.groups

    def may(self, st: os.stat_result, bit: int) -> bool:
        """The permission-bit test the kernel makes for ``bit`` (4 read,
        2 write) for this identity without capabilities (ACLs aside).  The
        sandbox drops every capability, so uid 0 is an ordinary owner."""
        if self.owns(st):
            shift = 6
        elif self.in_group(st.st_gid):
            shift = 3
        else:
            shift = 0
        return bool(stat.S_IMODE(st.st_mode) >> shift & bit)


class Target:
    """The trapping thread of ``ctx``, seen from the supervisor: its fds,
    its working directory and its credentials, as fds and data of ours.

    A context manager: every fd it opened is closed on exit.
    """

    __slots__ = ("_cached", "_fds", "_pidfd", "ctx")

    def __init__(self, ctx: HandlerCtx) -> None:
        self.ctx = ctx
        self._pidfd = -1
        #: Whether _pidfd is the listener's (released on exit, not closed).
        self._cached = False
        self._fds: list[int] = []

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        self._drop_pidfd()

    def _drop_pidfd(self) -> None:
        if self._cached:
            self.ctx._pidfds().release(self._pidfd)
        self._pidfd, self._cached = -1, False

    def __repr__(self) -> str:
        return f"<Target {self.ctx!r} fds={self._fds}>"

    def own(self, fd: int) -> int:
        """Close ``fd`` (ours) on exit, with the fds this Target opened."""
        self._fds.append(fd)
        return fd

    def confirm(self) -> None:
        """Raise :class:`ProcessLookupError` unless the notification is still
        pending: call it after the last look at the target by id."""
        if not self.ctx.is_valid():
            raise ProcessLookupError(errno.ESRCH, f"the target of {self.ctx!r} is gone")

    def _pid_fd(self) -> int:
        """The target's pidfd: the listener's cached one (see ``Pidfds`` in
        ``_kernel/_notify.py``), else opened now and cached."""
        if self._pidfd < 0:
            tid = self.ctx.pid
            cache = self.ctx._pidfds()
            fd = cache.acquire(tid)
            if fd < 0:
                try:
                    fd = syscall("pidfd_open", tid, _PIDFD_THREAD)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # Before Linux 6.9 only a process has a pidfd; threads of
                    # one process share their fd table, so its pidfd does.
                    fd = os.pidfd_open(_tgid(tid))
                if not cache.keep(tid, fd):
                    self.own(fd)
                    self._pidfd = fd
                    return fd
            self._pidfd, self._cached = fd, True
        return self._pidfd

    def through_pidfd(self, call: Callable[[int], int]) -> int:
        """``call(pidfd)`` with the target's pidfd; once more with a fresh
        one if the cached pidfd was a dead process's (ESRCH)."""
        try:
            return call(self._pid_fd())
        except ProcessLookupError:
            if not self._cached:
                raise  # opened now: the target itself is gone
        cache = self.ctx._pidfds()
        if cache.get(self.ctx.pid) == self._pidfd:
            cache.forget(self.ctx.pid)
        self._drop_pidfd()
        return call(self._pid_fd())

    def fd(self, number: int) -> int:
        """A copy of the target's fd ``number``: the same open file
        (``pidfd_getfd``, EBADF if it has no such fd)."""
        if number < 0:
            raise OSError(errno.EBADF, "bad file descriptor")
        return self.own(self.through_pidfd(
            lambda pidfd: syscall("pidfd_getfd", pidfd, number, 0)))

    def cwd(self) -> int:
        """The target's working directory, as an ``O_PATH`` fd."""
        return self.own(os.open(f"/proc/{self.ctx.pid}/cwd",
                                 os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))

    def root(self) -> int:
        """The target's root directory, as an ``O_PATH`` fd: ours, but in the
        target's mount namespace, which differs from ours for a run with a
        workspace (its overlay is mounted there only)."""
        return self.own(os.open(f"/proc/{self.ctx.pid}/root",
                                 os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))

    def creds(self) -> Creds:
        with open(f"/proc/{self.ctx.pid}/status", "rb") as f:
            return Creds.parse(f.read())

    async def read_path(self, addr: int) -> bytes:
        """The path at ``addr`` in the target, once; ENAMETOOLONG as the kernel."""
        path = await self.ctx.read_cstr(addr, PATH_MAX)
        if len(path) >= PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, "path too long")
        return path

    def resolve(self, dirfd: int, path: bytes, *, follow: bool, empty_path: bool = False,
                directory: bool = False) -> int:
        """``path`` relative to the target's ``dirfd``, as the kernel would
        resolve it for the target, into an ``O_PATH`` fd of ours.

        ``follow``: follow a symlink in the last component; ``empty_path``:
        an empty path names ``dirfd`` itself (``AT_EMPTY_PATH``);
        ``directory``: the object must be a directory (ENOTDIR).
        """
        if not path:
            if not empty_path:
                raise OSError(errno.ENOENT, "empty path")
            base = self.cwd() if dirfd == AT_FDCWD else self.fd(dirfd)
            if directory and not stat.S_ISDIR(os.fstat(base).st_mode):
                raise OSError(errno.ENOTDIR, "not a directory")
            return base
        magic = _PROC_SELF_FD.fullmatch(path)
        if magic is not None and (follow or magic[2]):
            base, rest = self.fd(int(magic[1])), (magic[2] or b"").lstrip(b"/")
            if not rest:
                if directory and not stat.S_ISDIR(os.fstat(base).st_mode):
                    raise OSError(errno.ENOTDIR, "not a directory")
                return base
        elif path.startswith(b"/"):
            # At the target's root, not ours: the same directory, seen
            # through the target's mount namespace (a workspace's overlay).
            base, rest = self.root(), path.lstrip(b"/") or b"."
        else:
            base = self.cwd() if dirfd == AT_FDCWD else self.fd(dirfd)
            rest = path
        flags = os.O_PATH | os.O_CLOEXEC
        if not follow:
            flags |= os.O_NOFOLLOW
        if directory:
            flags |= os.O_DIRECTORY
        how = ffi.new("uint64_t[3]", [flags, 0, _RESOLVE_NO_MAGICLINKS])
        return self.own(syscall("openat2", base, ffi.new("char[]", rest), how, _OPEN_HOW_SIZE))


def _status_field(status: bytes, key: bytes) -> bytes:
    """The value of line ``key:`` of a ``/proc/PID/status`` text."""
    start = status.index(b"\n" + key + b":") + len(key) + 2
    return status[start:status.index(b"\n", start)]


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status", "rb") as f:
        return int(_status_field(f.read(), b"Tgid"))
