"""Snapshot workspaces: a private copy of ``workdir`` and its diff, where an
overlay cannot be had (docs/workspaces.md, "The snapshot").

The copy
--------
``workdir`` is copied into a hidden directory beside it (on the same file
system, so that ``FICLONE`` can share the data where the file system has
reflinks, btrfs or XFS, for the copy and for a commit's copy back), or
into the temporary directory where the caller may not write beside it.
Each regular file is a reflink (``FICLONE``) where the file system takes
one, else a kernel copy (``copy_file_range``, ``sendfile`` between file
systems of different types), :data:`CHUNK` bytes per step; directories,
symbolic links and FIFOs are made anew; device nodes and sockets are left
out (a commit never carries them either).  Mode, times and, for a root
caller, owner are copied; hard links are not (each name gets a file of its
own).  A file system mounted below ``workdir`` shows as its empty mount
point, as in the overlay's lower layer.

Every step is one file-system call on one entry (or one chunk): the caller
drives them with checkpoints in between (``_workspace._drive``), so the
event loop is held for one call's latency, never for the tree's size.

What the command changed: ``ctime``
-----------------------------------
Once the copy is made, the diff needs to know which entries of it the
command touched without comparing their contents: every write, truncation,
``chmod``, ``chown``, ``utimes``, link, unlink or rename sets the ``ctime``
of the entry (and of the directory it is listed in) to the current time,
and no program can set a ``ctime`` back.  :func:`settle_instant` waits,
after the copy, until the clock the kernel stamps files with has moved
past the end of the copy: from then on, an entry whose ``ctime`` is not
older than that instant was changed by the command, and one older was not.
A directory so marked had entries made or removed, and its listing is
compared with ``workdir``'s: what the latter has and the copy lacks was
deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator

from ._changes import Change, lstat_or_none, make_readable

#: Bytes copied per step.
CHUNK = 8 << 20
#: A file copied in one call of at least this size gets a checkpoint of its own.
_HEAVY = 1 << 20
#: The hidden name's middle part: ``.NAME.asyncsandlock-snapshot-XXXXXXXX``.
TAG = ".asyncsandlock-snapshot-"
_FICLONE = 0x40049409  # _IOW(0x94, 9, int)
#: The clock file timestamps are taken from (not in the time module).
CLOCK_REALTIME_COARSE = 5
#: Devices (``st_dev``) that answered FICLONE with "not here": not asked again.
_NO_REFLINK: set[int] = set()


def place_for(workdir: str) -> str:
    """A new, unused path for a snapshot of ``workdir``: beside it where the
    caller may make entries there, else in the temporary directory."""
    head, name = os.path.split(workdir)
    home = head if os.access(head, os.W_OK | os.X_OK) else tempfile.gettempdir()
    return os.path.join(home, f".{name}{TAG}{secrets.token_hex(4)}")


def copy_data(src: int, dst: int) -> Iterator[bool]:
    """Copy ``src`` to ``dst`` in the kernel, :data:`CHUNK` bytes per step
    (yields True after each).

    copy_file_range shares extents (a reflink) where the file system can;
    between two file systems of different types it answers EXDEV, and
    sendfile copies instead."""
    copy: Callable[[int, int, int], int] = _copy_file_range
    while True:
        try:
            if not copy(src, dst, CHUNK):
                return
        except OSError as exc:
            if copy is _sendfile or exc.errno not in (errno.EXDEV, errno.EINVAL,
                                                        errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            copy = _sendfile
            continue
        yield True


def _copy_file_range(src: int, dst: int, count: int) -> int:
    return os.copy_file_range(src, dst, count)


def _sendfile(src: int, dst: int, count: int) -> int:
    return os.sendfile(dst, src, None, count)


def _clone_or_copy(src: int, dst: int, st: os.stat_result) -> Iterator[bool]:
    """``dst`` gets ``src``'s data: one FICLONE (shared extents, whatever
    the size: a metadata operation) where the file system takes it."""
    dev = st.st_dev
    if dev not in _NO_REFLINK:
        try:
            fcntl.ioctl(dst, _FICLONE, src)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                                 errno.ENOSYS, errno.EPERM):
                raise
            if exc.errno != errno.EINVAL:  # EINVAL: this file (say, inline data) only
                _NO_REFLINK.add(dev)
    if 0 < st.st_size <= CHUNK and os.copy_file_range(src, dst, st.st_size) == st.st_size:
        # One call (a file that grew meanwhile: below); a checkpoint after
        # each of 1 MiB or more, so that 64 steps never copy more than 64 MiB.
        if st.st_size >= _HEAVY:
            yield True
        return
    yield from copy_data(src, dst)


def _owner(fd_or_path: int | str, st: os.stat_result) -> None:
    """A root caller gives the copy the original's owner (ours already,
    unless it differs)."""
    if os.geteuid() != 0 or (st.st_uid, st.st_gid) == (0, os.getegid()):
        return
    try:
        if isinstance(fd_or_path, int):
            os.fchown(fd_or_path, st.st_uid, st.st_gid)
        else:
            os.chown(fd_or_path, st.st_uid, st.st_gid, follow_symlinks=False)
    except OSError as exc:
        # EINVAL: an id our user namespace does not map (it reads as the
        # overflow id): the entry stays ours.
        if exc.errno != errno.EINVAL:
            raise


def _carry(path: str, st: os.stat_result) -> None:
    """The owner (a root caller), mode and times of ``st`` onto ``path``."""
    _owner(path, st)
    if stat.S_ISLNK(st.st_mode):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_steps(source: str, target: str) -> Iterator[bool]:
    """Copy the directory ``source`` to ``target`` (which must not exist), one
    entry or one chunk per step; yields True after a chunk.  Directories
    get their own mode and times last, once filled (a directory without
    write permission for its owner is filled first)."""
    root = os.lstat(source)
    os.mkdir(target, 0o700)
    made: list[tuple[str, os.stat_result]] = [(target, root)]
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(source, rel)) as entries:
            listing = list(entries)
        for entry in listing:
            path = os.path.join(target, rel, entry.name)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(path, 0o700)
                made.append((path, st))
                if st.st_dev == root.st_dev:  # a mount point below: left empty
                    pending.append(os.path.join(rel, entry.name))
                yield False
                continue
            if stat.S_ISREG(st.st_mode):
                src = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                  0o600)
                    try:
                        yield from _clone_or_copy(src, dst, st)
                        # Through the fd: no more path walks for this file.
                        _owner(dst, st)
                        os.fchmod(dst, stat.S_IMODE(st.st_mode))
                        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
                yield False
                continue
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(entry.path), path)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(path, 0o600)
            else:
                continue  # device nodes and sockets are not carried over
            _carry(path, st)
            yield False
    for path, st in reversed(made):  # the deepest first: a parent's times stay
        _carry(path, st)
        yield False


async def settle_instant(sleep: Callable[[float], object]) -> int:
    """The instant from which a ``ctime`` is the command's (see the module's
    essay): the coarse clock once it has moved past the fine clock's
    reading now, i.e. past every ``ctime`` the copy set (a multigrain
    ``ctime`` may be finer than the coarse clock, never ahead of the fine
    one).  Waits one tick of the coarse clock, 1 to 10 ms."""
    end = time.clock_gettime_ns(time.CLOCK_REALTIME)
    while (now := time.clock_gettime_ns(CLOCK_REALTIME_COARSE)) <= end:
        await sleep(0.001)  # type: ignore[misc]
    return now


def diff_steps(copy: str, lower: str, since: int, into: list[Change]) -> Iterator[None]:
    """Append to ``into`` what the command changed in ``copy``, a snapshot of
    ``lower`` ready at ``since`` (:func:`settle_instant`), in the terms of
    ``_changes.diff_steps``; yields after every few entries."""
    pending = [""]
    seen = 0
    while pending:
        rel = pending.pop()
        here = os.path.join(copy, rel) if rel else copy
        with os.scandir(here) as entries:
            listing = list(entries)
        if os.lstat(here).st_ctime_ns >= since:  # entries made or removed in it
            old_dir = os.path.join(lower, rel)
            old_names: list[str] = []
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                old_names = os.listdir(old_dir)
            kept = {entry.name for entry in listing}
            for name in old_names:
                if name not in kept and (gone := lstat_or_none(
                        os.path.join(old_dir, name))) is not None:
                    into.append(Change(f"{rel}/{name}" if rel else name, "deleted", 0,
                                       gone.st_mode))
        for entry in listing:
            seen += 1
            if seen % 256 == 0:
                yield
            path = f"{rel}/{entry.name}" if rel else entry.name
            new = entry.stat(follow_symlinks=False)
            changed = new.st_ctime_ns >= since
            if changed:
                make_readable(entry.path, new)
            if stat.S_ISDIR(new.st_mode):
                pending.append(path)
                if not changed:
                    continue
                old = lstat_or_none(os.path.join(lower, path))
                if old is None:
                    into.append(Change(path, "added", 0, new.st_mode))
                elif not stat.S_ISDIR(old.st_mode) or old.st_mode != new.st_mode:
                    into.append(Change(path, "modified", 0, new.st_mode))
                continue
            if not changed:
                continue
            old = lstat_or_none(os.path.join(lower, path))
            size = new.st_size if stat.S_ISREG(new.st_mode) or stat.S_ISLNK(new.st_mode) else 0
            into.append(Change(path, "added" if old is None else "modified", size, new.st_mode))
    into.sort(key=lambda change: change.path.split("/"))
