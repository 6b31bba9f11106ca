"""What a workspace's command changed: :class:`Change`, read from the
overlay's upper directory.

How overlayfs records changes (``Documentation/filesystems/overlayfs.rst``)
---------------------------------------------------------------------------
Everything the command created or wrote is in the upper directory, at its
path (the layer is mounted with ``redirect_dir=off`` and ``metacopy=off``,
see ``_kernel/_overlay.py``, so an upper entry always holds its whole data
at the path it describes).  A deletion is a *whiteout*: a character device
0/0 at the deleted path.  A directory that replaces one of the lower layer
(removed, then made anew) is *opaque* (xattr ``trusted.overlay.opaque`` =
``y``): nothing of the lower directory shows through, so every lower entry
it lacks is a deletion.  Directories are copied up only to hold a changed
entry; one is a change of its own only when it is new or its mode changed.

Whether an upper entry is ``added`` or ``modified`` is told by the lower
directory (``workdir`` itself) as it is when the diff is read, right after
the command ended; a change made to ``workdir`` meanwhile is caught as a
conflict when committing (``_workspace.py``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ._kernel._overlay import OPAQUE_XATTRS


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a workspace that its command added, modified or deleted.

    .. versionadded:: 0.2
    """

    #: Relative to the workdir, ``/``-separated.
    path: str
    #: ``"added"``, ``"modified"`` or ``"deleted"``.
    kind: str
    #: Bytes of the new content (a symlink: its target's length); 0 for a
    #: deletion and for directories.
    size: int
    #: ``st_mode`` (type and permission bits) of the new entry; for a
    #: deletion, of the entry removed.
    mode: int


def _opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


def lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def make_readable(path: str, st: os.stat_result) -> None:
    """Let us read an upper entry the command made unreadable (``chmod 000``)
    when the layer is ours without privilege (an unprivileged caller owns
    every entry of a layer built in the child's user namespace, but has no
    CAP_DAC_OVERRIDE).  Only the layer is changed, once the overlay is gone;
    the Change keeps the mode the command set, which the commit applies."""
    euid = os.geteuid()
    if euid == 0 or st.st_uid != euid or stat.S_ISLNK(st.st_mode):
        return
    need = stat.S_IRUSR | stat.S_IXUSR if stat.S_ISDIR(st.st_mode) else stat.S_IRUSR
    if st.st_mode & need != need and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        os.chmod(path, stat.S_IMODE(st.st_mode) | need)


def diff_steps(upper: str, lower: str, into: list[Change]) -> Iterator[None]:
    """Append the changes the upper directory ``upper`` makes to ``lower``
    to ``into``, sorted by path (a directory before what it holds); yields
    after every few entries, for the caller to let its event loop run."""
    pending = [""]
    seen = 0
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(upper, rel) if rel else upper) as entries:
            listing = list(entries)
        for entry in listing:
            seen += 1
            if seen % 256 == 0:
                yield
            path = f"{rel}/{entry.name}" if rel else entry.name
            new = entry.stat(follow_symlinks=False)
            make_readable(entry.path, new)
            old = lstat_or_none(os.path.join(lower, path))
            if stat.S_ISCHR(new.st_mode) and new.st_rdev == 0:  # a whiteout
                if old is not None:
                    into.append(Change(path, "deleted", 0, old.st_mode))
                continue
            if not stat.S_ISDIR(new.st_mode):
                size = new.st_size if stat.S_ISREG(new.st_mode) or stat.S_ISLNK(new.st_mode) else 0
                into.append(Change(path, "added" if old is None else "modified", size,
                                   new.st_mode))
                continue
            pending.append(path)
            if old is None:
                into.append(Change(path, "added", 0, new.st_mode))
                continue
            if not stat.S_ISDIR(old.st_mode) or old.st_mode != new.st_mode:
                into.append(Change(path, "modified", 0, new.st_mode))
            if stat.S_ISDIR(old.st_mode) and _opaque(entry.path):
                kept = set(os.listdir(entry.path))
                for name in sorted(set(os.listdir(os.path.join(lower, path))) - kept):
                    gone = lstat_or_none(os.path.join(lower, path, name))
                    if gone is not None:
                        into.append(Change(f"{path}/{name}", "deleted", 0, gone.st_mode))
    into.sort(key=lambda change: change.path.split("/"))
