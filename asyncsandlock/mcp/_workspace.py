"""Per-session workspaces, and the file tools that stay inside one.

Each MCP session gets a directory of its own under the server's workspace
root, made on first use; its sandboxes may write there and nowhere else,
and a sandbox of another session cannot see it (Landlock lists only its own
workspace and the read-only system paths).

Confined file access without a sandbox
--------------------------------------
``read_file``, ``write_file`` and ``list_files`` run in the server, not in a
sandbox: a spawn per file listing would cost more than the listing.  Every
name the client gives is resolved with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_MAGICLINKS)`` from the workspace directory, so the kernel itself
refuses an absolute path, a ``..`` that climbs out, or a symlink (made by
sandboxed code) that points outside, at every step of the walk and with no
window between check and use.  Objects other than regular files and
directories are refused after opening with ``O_NONBLOCK``: a FIFO left in
the workspace would otherwise block the event loop on open or read.  The
reads and writes that remain are of bounded size on regular files: short
syscalls, done on the loop.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from .._core import ffi
from .._kernel._sys import syscall

_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_BENEATH: Final = 0x08
_OPEN_HOW_SIZE: Final = 24  # struct open_how: flags, mode, resolve (u64 each)
#: Entries ``list_files`` returns at most.
MAX_ENTRIES: Final = 1000


class WorkspaceError(Exception):
    """A file tool refused a path; the message is for the client."""


@dataclass(eq=False)
class Workspace:
    """One session's directory, and what its runs share."""

    key: str
    path: str
    limiter: anyio.Semaphore
    #: The policy of this session's runs (the profile's, plus this directory).
    sandbox: Any = None
    active: int = 0
    #: The session ended while calls ran: the last one to end removes it.
    ended: bool = False
    last_used: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def relative(self, path: str) -> str:
        """``path`` relative to the workspace: an absolute path inside it (as
        a sandboxed program prints it) is accepted; RESOLVE_BENEATH refuses
        any other absolute path."""
        if path == self.path:
            return "."
        if path.startswith(self.path + "/"):
            return path[len(self.path) + 1:]
        return path or "."

    def _open(self, path: str, flags: int, mode: int = 0o644) -> int:
        base = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # openat2 is strict where openat is lax: a mode without O_CREAT,
            # or a flag O_PATH does not take, is EINVAL.
            if not flags & os.O_PATH:
                flags |= os.O_NOCTTY
            how = ffi.new("uint64_t[3]", [flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                                          _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS])
            return syscall("openat2", base, ffi.new("char[]", os.fsencode(self.relative(path))),
                           how, _OPEN_HOW_SIZE)
        except OSError as exc:
            raise _refusal(path, exc) from None
        finally:
            os.close(base)

    def read(self, path: str, limit: int) -> tuple[bytes, int]:
        """The first ``limit`` bytes of a regular file, and its size."""
        fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise WorkspaceError(f"{path}: not a regular file")
            chunks: list[bytes] = []
            got = 0
            while got < limit:
                chunk = os.read(fd, min(limit - got, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks), st.st_size
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> None:
        """Create or replace a regular file; missing parent directories are made."""
        parent, _, _name = self.relative(path).rpartition("/")
        if parent:
            self._makedirs(parent)
        fd = self._open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise WorkspaceError(f"{path}: not a regular file")
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def _makedirs(self, parent: str) -> None:
        done = ""
        for part in parent.split("/"):
            if part in ("", "."):
                continue
            here = f"{done}/{part}" if done else part
            try:
                fd = self._open(here, os.O_PATH | os.O_DIRECTORY)
            except WorkspaceError:
                # mkdir of one name in a directory resolved beneath: nothing
                # is followed (an existing symlink there makes it EEXIST).
                base = self._open(done or ".", os.O_PATH | os.O_DIRECTORY)
                try:
                    os.mkdir(part, 0o755, dir_fd=base)
                except OSError as exc:
                    raise _refusal(here, exc) from None
                finally:
                    os.close(base)
            else:
                os.close(fd)
            done = here

    def listing(self, path: str) -> list[dict[str, Any]]:
        """Name, type and size of each entry of a directory (not recursive)."""
        fd = self._open(path, os.O_RDONLY | os.O_DIRECTORY)
        entries: list[dict[str, Any]] = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if len(entries) >= MAX_ENTRIES:
                        break
                    st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
                    kind = ("directory" if stat.S_ISDIR(st.st_mode) else "file"
                            if stat.S_ISREG(st.st_mode) else "symlink"
                            if stat.S_ISLNK(st.st_mode) else "other")
                    entries.append({"name": entry.name, "type": kind, "size": st.st_size})
        finally:
            os.close(fd)
        entries.sort(key=lambda e: e["name"])
        return entries


def _refusal(path: str, exc: OSError) -> WorkspaceError:
    if exc.errno == errno.EXDEV:
        return WorkspaceError(f"{path}: outside the session workspace (refused)")
    if exc.errno == errno.ELOOP:
        return WorkspaceError(f"{path}: a symlink (not followed here)")
    return WorkspaceError(f"{path}: {os.strerror(exc.errno or errno.EIO)}")
