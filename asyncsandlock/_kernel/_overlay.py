"""Detached mounts for copy-on-write workspaces: a size-bounded tmpfs and an
overlay, built by the parent with the new mount API.

Why detached mounts, made by the parent
---------------------------------------
``fsopen``/``fsconfig``/``fsmount`` give a mount that is attached nowhere: no
namespace sees it, and it lives exactly as long as an fd refers to it.  The
parent builds the whole overlay this way; the child only attaches it over
the workspace's path inside a mount namespace of its own (``move_mount``,
csrc/spawn.c ``mount_workspace``).  The host's mount table never changes,
and when the last fd and the child's namespace are gone, so is the mount:
nothing to unmount, nothing left behind by a caller that dies.

The same trick holds the layer: the upper and work directories live on a
detached tmpfs (with ``size=`` for ``max_disk``, so the child's writes
beyond it fail with ENOSPC from the kernel itself).  The parent keeps the
tmpfs's fd after the child's namespace has died and reads (and commits)
the layer through it; a tmpfs mounted *inside* the child's namespace would
vanish with the namespace, before anyone could read it.

A caller without CAP_SYS_ADMIN cannot make these: its child makes the same
two mounts in a user namespace of its own (csrc/spawn.c ``build_workspace``,
with ``userxattr``) and sends both fds back before exec, so that the tmpfs
still outlives the namespace, held by our fd.

Options
-------
``metacopy=off``: a metadata-only copy-up would leave the data in the lower
layer, and the upper dir would no longer say what the file holds.
``redirect_dir=off``: a renamed lower directory is then copied (rename(2)
answers EXDEV and ``mv`` falls back to copying), so every upper directory is
at the path it describes.  ``index=off``, ``xino=off``: nothing outside the
one layer pair.  ``volatile``: no sync of the upper file system,
which overlayfs otherwise makes on every syncfs and at unmount; the layer
is thrown away if the machine crashes anyway.  Layers are handed over as
fds where the kernel takes them (``FSCONFIG_SET_FD``, Linux 6.13+), so
paths with ``:`` or ``,`` need no escaping; otherwise as paths.
"""

from __future__ import annotations

import errno
import os

from .._core import ffi
from ._sys import syscall

_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_SET_FD = 5
_FSCONFIG_CMD_CREATE = 6

#: The xattrs that mark an upper directory opaque (it hides the lower one):
#: ``trusted.`` for a mount made with privileges, ``user.`` with ``userxattr``.
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def _cstr(text: str) -> object:
    return ffi.new("char[]", os.fsencode(text))


def _set(context: int, key: str, value: str) -> None:
    syscall("fsconfig", context, _FSCONFIG_SET_STRING, _cstr(key), _cstr(value), 0)


def _set_layer(context: int, key: str, fd: int, path: str) -> None:
    """``key`` = the directory open as ``fd`` (at ``path``)."""
    try:
        syscall("fsconfig", context, _FSCONFIG_SET_FD, _cstr(key), ffi.NULL, fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        # An older kernel takes layers only as paths ("lowerdir+" since 6.8
        # needs no escaping; below that, lowerdir with ':' and ',' escaped).
        if key == "lowerdir+":
            try:
                _set(context, key, path)
                return
            except OSError:
                key = "lowerdir"
                path = path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")
        _set(context, key, path)


def _mount(context: int) -> int:
    """Create the superblock of an fs context and return a detached mount of it."""
    syscall("fsconfig", context, _FSCONFIG_CMD_CREATE, ffi.NULL, ffi.NULL, 0)
    return syscall("fsmount", context, _FSMOUNT_CLOEXEC, 0)


def _context(fstype: str) -> int:
    return syscall("fsopen", _cstr(fstype), _FSOPEN_CLOEXEC)


def detached_tmpfs(size: int | None) -> int:
    """A detached tmpfs of ``size`` bytes (None: tmpfs's default, half of
    the RAM), mode 0700; returns its mount fd."""
    context = _context("tmpfs")
    try:
        if size is not None:
            _set(context, "size", str(size))
        _set(context, "mode", "0700")
        return _mount(context)
    finally:
        os.close(context)


def detached_overlay(lower: str, upper: tuple[int, str], work: tuple[int, str]) -> int:
    """A detached overlay of ``lower`` under ``upper`` (an fd of the upper dir
    and its path), with ``work`` its work dir; returns its mount fd."""
    context = _context("overlay")
    try:
        lower_fd = os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _set_layer(context, "lowerdir+", lower_fd, lower)
        finally:
            os.close(lower_fd)
        _set_layer(context, "upperdir", *upper)
        _set_layer(context, "workdir", *work)
        for key in ("metacopy", "redirect_dir", "index", "xino"):
            _set(context, key, "off")
        syscall("fsconfig", context, _FSCONFIG_SET_FLAG, _cstr("volatile"), ffi.NULL, 0)
        return _mount(context)
    finally:
        os.close(context)


#: The mount ids of the workspace overlays alive in this process, for the
#: metadata guard (``handlers/metadata.py``): inside a workdir, a chmod & co
#: is the command's to make only on an object of one of these mounts (the
#: directory under the overlay has the same path, and is not).
LIVE_OVERLAYS: set[int] = set()

#: The snapshot workspaces alive (``_snapshot.py``), per run: the run's
#: listener (the object a handler's context holds) -> the snapshot's path.
#: Keyed by run, not by path: a chmod & co is the command's to make on its
#: own copy only, never on the copy of a concurrent run beside it.
LIVE_SNAPSHOTS: dict[object, str] = {}


def mount_id(fd: int) -> int:
    """The id of the mount the object of our ``fd`` is on (``/proc/self/fdinfo``);
    it survives ``move_mount``, which moves the mount rather than copy it."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOSYS, "no mnt_id in fdinfo")
