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

Where the copies live
---------------------
Every snapshot of ``workdir`` goes in one private directory,
``.NAME.asyncsandlock-snapshot-uUID`` (:func:`home_for`), as ``TOKEN``
beside its lock file ``TOKEN.lock``, and the directory is removed once
empty.  Two things follow from that one place:

- a run's Landlock ruleset holes the directory out of the policy's grants
  (``fs_denied`` machinery, ``_holes.py``) and grants the run's own copy
  only: where ``fs_readable`` covers the parent of ``workdir``, a command
  cannot read the copies of concurrent runs (``_workspace.Layer``);
- a copy's owner is known by its lock, not by a pid: the run holds an
  ``flock`` on ``TOKEN.lock`` for the life of the copy, and the kernel
  drops it when the last fd of it closes, i.e. when the caller dies,
  SIGKILL included.  The next snapshot of ``workdir`` (:func:`orphans`)
  removes every copy whose lock it can take.  A pid (even with its start
  time) could name a process of another pid namespace, or of another boot;
  a lock held is a live owner, wherever it is, and a lock free is a dead
  one.  The lock file is made before the copy and removed after it, and
  both sides check that the path still names the file they locked, so a
  copy is never without a held lock while its owner lives.

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
from collections.abc import Callable, Generator, Iterator

from ._changes import Change, lstat_or_none, make_readable
from ._exceptions import SandboxError

#: Bytes copied per step.
CHUNK = 8 << 20
#: A file copied in one call of at least this size gets a checkpoint of its own.
_HEAVY = 1 << 20
#: The private directory's middle part: ``.NAME.asyncsandlock-snapshot-uUID``.
TAG = ".asyncsandlock-snapshot-"
#: A copy ``TOKEN``'s lock file beside it: ``TOKEN.lock``.
LOCK = ".lock"
#: The private directory: anyone may pass through it to a copy (a command
#: with ``uid`` set must reach its own), nobody may list it but a caller
#: with CAP_DAC_READ_SEARCH (root): a command running as its owner (a root
#: caller's child is uid 0 without capabilities) cannot learn the names of
#: the copies beside its own (see :func:`_listing`).
_HOME_MODE = 0o311
_FICLONE = 0x40049409  # _IOW(0x94, 9, int)
#: The clock file timestamps are taken from (not in the time module).
CLOCK_REALTIME_COARSE = 5
#: Devices (``st_dev``) that answered FICLONE with "not here": not asked again.
_NO_REFLINK: set[int] = set()


def home_for(workdir: str) -> str:
    """The private directory the snapshots of ``workdir`` go in (see the
    module's essay, "Where the copies live"), made if need be: beside
    ``workdir`` where the caller may make entries there, else in the
    temporary directory.  One of another owner, or that others may write,
    is refused (SandboxError): its entries could be swapped under us."""
    head, name = os.path.split(workdir)
    place = head if os.access(head, os.W_OK | os.X_OK) else tempfile.gettempdir()
    home = os.path.join(place, f".{name}{TAG}u{os.geteuid()}")
    try:
        os.mkdir(home, _HOME_MODE)
        os.chmod(home, _HOME_MODE)  # whatever the umask took away
    except FileExistsError:
        pass
    st = os.lstat(home)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise SandboxError(f"{home}: not a directory of ours that only we may write, where "
                           "the snapshots of the workdir go: remove it")
    return home


def claim(home: str) -> tuple[str, int]:
    """A new copy's path in ``home`` and the fd of its lock, held (``flock``
    LOCK_EX) until :func:`unclaim`: the copy is ours as long as this
    process, or a fork of it, lives.  FileNotFoundError: ``home`` was just
    removed (empty) by another caller; make it again."""
    while True:
        token = secrets.token_hex(8)
        lock = os.path.join(home, token + LOCK)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # A sweeper opened it between our open and our lock: it takes
            # the file for a dead run's and unlinks it.  Another name.
            os.close(fd)
            continue
        if not _names(fd, lock):  # that sweeper has been and gone
            os.close(fd)
            continue
        return os.path.join(home, token), fd


def _listing(home: str) -> list[str]:
    """The names in ``home``.  A caller without CAP_DAC_READ_SEARCH (not
    root) may not list it either: it lets itself for the one ``scandir``
    (the owner may always chmod), a window of microseconds in which a
    command of the same uid could list it too."""
    try:
        return os.listdir(home)
    except PermissionError:
        os.chmod(home, _HOME_MODE | stat.S_IRUSR)
        try:
            return os.listdir(home)
        finally:
            os.chmod(home, _HOME_MODE)


def _names(fd: int, path: str) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    held = os.fstat(fd)
    now = lstat_or_none(path)
    return now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def unclaim(copy: str, lock: int) -> None:
    """The end of a copy (removed already): its lock file goes, then our
    lock, then ``home`` if it is empty now."""
    if lock >= 0:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(copy + LOCK)
        os.close(lock)
    # ENOTEMPTY: another run's copy is there; ENOENT: gone already.
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(copy))


def orphans(home: str) -> Generator[tuple[str, int], None, None]:
    """The copies in ``home`` whose owner is dead: each with its lock fd,
    taken (``flock`` succeeded: no process holds it any more), for the
    caller to remove the copy and then :func:`unclaim` it.  One entry per
    step.  A copy whose lock is held is a live run's, whoever and wherever
    it is (another pid namespace, a process that reused a dead one's pid):
    never touched."""
    for name in _listing(home):
        if not name.endswith(LOCK):
            continue
        lock = os.path.join(home, name)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:  # its owner has just ended
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # alive
            os.close(fd)
            continue
        if not _names(fd, lock):  # swept by another caller meanwhile
            os.close(fd)
            continue
        yield lock[:-len(LOCK)], fd


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
