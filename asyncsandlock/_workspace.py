"""Copy-on-write workspaces: one run's private layer, its diff, and the
commit or abort of its changes (docs/workspaces.md).

The layer
---------
Each run of a Sandbox with ``workdir`` gets a :class:`Layer` of its own (so
concurrent runs on one workdir never see each other's changes): a detached
tmpfs (``max_disk`` its size; without it, tmpfs's default, half of the RAM)
holding the upper and work directories, and a detached overlay of
``workdir`` under them (``_kernel/_overlay.py``).  The child attaches the
overlay over ``workdir`` in its own mount namespace; our fds of it are
closed as soon as the child has it, so that once the sandbox is gone the
upper directory is plain files on our tmpfs, read through its fd.

Why tmpfs even without ``max_disk``: a layer in a directory on disk cost
~30 ms per run here (ext4 journalling the work directory's set-up and the
removal; the tmpfs costs ~0.4 ms), and it can be left behind by a caller
that dies; a tmpfs that only an fd holds cannot.  The price is that the
changes live in memory (swappable, and charged to the caller's memory
cgroup) until they are committed or aborted: bound them with ``max_disk``.

The snapshot
------------
Where the host refuses an overlay (``workdir_mechanism="auto"``), or where
asked (``"snapshot"``), the layer is a private copy of ``workdir`` in a
private directory beside it, and the command works there (``_snapshot.py``):
:func:`in_layer` makes the choice and falls back, :meth:`Layer.prepare`
claims a copy (its lock), sweeps the copies of dead callers (:func:`sweep`)
and copies, the run's Landlock ruleset grants the copy and holes the
private directory out of the policy's grants (``Layer._snapshot_args``), the
metadata guard knows it by the run's listener (``LIVE_SNAPSHOTS``),
``max_disk`` is sampled (:func:`watch_disk`), the diff reads ctimes, and a
commit copies files of the copy into place.  The stages of a pipeline share
one (``shared``).

File I/O on the event loop, without threads
-------------------------------------------
The diff, the commit and the removal of a layer are file-system calls on
local directories: lstat, scandir, rename, unlink, copy_file_range.  Linux
has no non-blocking mode for them, and the library creates no threads
(anyio's async file API would use a worker thread), so they run on the
event loop in small bounded steps: each step is one file-system call on one
entry, or one copy of at most :data:`CHUNK` bytes, and the loop gets a
checkpoint after every :data:`BATCH` steps and after every chunk.  A step
is then bounded by the disk's latency for one call, not by the size of the
tree; a workspace on a network file system could still stall the loop for
one call's round trip.

Commit: atomic per file, resumable
----------------------------------
Each file reaches ``workdir`` by one ``rename(2)`` over its old version,
from a copy written beside it under a hidden temporary name (by
copy_file_range, or sendfile where that cannot cross the two file systems).  A reader
sees the old file or the new one, never a half-written one.  A commit that
is cancelled stops between two files (the temporary copy of the one in
progress is removed); the files before it are in ``workdir``, the rest still
in the layer.  Calling :meth:`Workspace.commit` again goes on with the
rest; :meth:`Workspace.abort` drops them.  Directories and deletions are
not atomic as a whole: a directory tree is removed one entry at a time.

Conflicts
---------
Before it writes anything, a commit checks each path it is about to touch
in ``workdir``: one that was changed since the run started (its ``ctime``,
which no program can set back, is not older than the start), that appeared
where the command added a file, or vanished where it modified or deleted
one, is a conflict, and :class:`WorkspaceConflict` names every such path;
nothing is written.  The start is read from the coarse clock the kernel
stamps files with, so a change in the same clock tick as the start counts
as a conflict: cautious, never silent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import socket
import stat
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.lowlevel

from . import _snapshot
from ._background import Background
from ._changes import Change, diff_steps, lstat_or_none
from ._core import ffi, lib
from ._exceptions import ConfinementUnavailable, PolicyError, SandboxError, SpawnError
from ._fd import close_fd, close_fds
from ._holes import beneath, resolve
from ._kernel._landlock import (
    READ,
    WRITE,
    Recipe,
    _add_grants,
    _add_path,
    abi_version,
    build_ruleset,
)
from ._kernel._overlay import (
    LIVE_OVERLAYS,
    LIVE_SNAPSHOTS,
    detached_overlay,
    detached_tmpfs,
    mount_id,
)
from ._kernel._sys import syscall
from ._objects import proc_fd, real_roots, within
from ._plan import _LANDLOCK_PARTS, Compiled, _ruleset_spec
from ._refusal import hint_for
from ._result import Result
from ._spawn import WorkspaceSpawn
from ._types import ExitReason, Protection, Subsystem
from ._validate import show

_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
#: File-system steps between two checkpoints.
BATCH = 64
_checkpoint = anyio.lowlevel.checkpoint  # a name of ours: tests count the steps
#: A snapshot removes the copies of dead callers first (:func:`sweep`);
#: tests turn it off to show what it prevents.
SWEEP = True
#: A snapshot's ruleset holes its private directory out of the policy's
#: grants (``Layer._snapshot_args``); tests turn it off to show the leak.
HOLE = True

if TYPE_CHECKING:
    from ._policy import Sandbox
    from ._process import SandboxedProcess


class WorkspaceConflict(SandboxError):
    """A commit would overwrite changes made to ``workdir`` during the run.

    Nothing was written.  :attr:`workspace` holds the layer still: commit
    it again once the paths are sorted out, or abort it.

    .. versionadded:: 0.2
    """

    def __init__(self, paths: tuple[str, ...], workspace: Workspace) -> None:
        shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10
                                         else "")
        super().__init__(f"workdir {workspace.workdir} changed during the run at {shown}; "
                         "nothing was committed (commit again, or abort)")
        #: The conflicting paths, relative to the workdir.
        self.paths = paths
        #: The run's workspace, neither committed nor aborted.
        self.workspace = workspace
        #: The run's Result, when the commit was the one ``on_exit`` made.
        self.result: Result | None = None


def _refused_as_unavailable(make: Callable[..., int], *args: object) -> int:
    """``make(*args)``; the host refusing the mount (no privilege, no
    overlayfs, no new mount API) as :class:`ConfinementUnavailable`.  A
    workspace is never waived (``on_unavailable`` is not asked): without
    it, the command would write workdir itself."""
    try:
        return make(*args)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENODEV, errno.ENOSYS):
            raise ConfinementUnavailable(Subsystem.WORKSPACE_OVERLAY, exc.errno,
                                         hint_for(Subsystem.WORKSPACE_OVERLAY)) from exc
        raise


def _removal_steps(path: str) -> Iterator[None]:
    """Remove ``path`` (a tree or not) one entry per step.  Each directory
    is worked on through an fd of its own (``os.fwalk``, which opens the
    next one with O_NOFOLLOW and checks it is the directory it listed): a
    process of the sandbox still running (it handed an fd on, or the copy
    is a dead caller's) that swaps a directory for a symbolic link cannot
    steer the removal out of the tree."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        yield
        return
    for _top, dirs, files, fd in os.fwalk(path, topdown=False):
        for name in files:
            os.unlink(name, dir_fd=fd)
            yield
        for name in dirs:
            # fwalk lists symlinks to directories among dirs.
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=fd)
            else:
                os.rmdir(name, dir_fd=fd)
            yield
    os.rmdir(path)
    yield


def _opening_steps(path: str) -> Iterator[None]:
    """Give the owner rwx back on the directories of ``path``, one per step
    (one the command closed, ``chmod 000``, cannot be emptied otherwise).
    Each directory is reached from its parent's fd with O_NOFOLLOW and
    changed through its own fd: a directory swapped for a symbolic link
    meanwhile (see :func:`_removal_steps`) is skipped, never followed."""
    try:
        top = os.open(path, _DIR_PATH)
    except OSError:
        return
    yield from _opening_beneath(top)


_DIR_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def _opening_beneath(held: int) -> Iterator[None]:
    """:func:`_opening_steps` from the directory open as ``held`` (an
    O_PATH fd, closed here); two fds per level of depth, as ``os.fwalk``."""
    try:
        try:
            os.chmod(proc_fd(held), 0o700)  # the object held, whatever its path now
            listing = os.open(proc_fd(held), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            with os.scandir(listing) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            yield
            for name in names:
                try:
                    child = os.open(name, _DIR_PATH, dir_fd=listing)
                except OSError:  # gone, or a symbolic link now
                    continue
                yield from _opening_beneath(child)
        finally:
            os.close(listing)
    finally:
        os.close(held)


async def _drive(steps: Iterator[object]) -> None:
    """Run ``steps`` with a checkpoint every :data:`BATCH` steps (and after
    each step that yields True: a chunk copied)."""
    count = 0
    try:
        for heavy in steps:
            count += 1
            if heavy is True or count >= BATCH:
                count = 0
                await _checkpoint()
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()


def _release(fds: list[int], overlay_id: int, snapshot: str = "",
             clone_ids: list[int] | None = None, lock: int = -1) -> None:
    LIVE_OVERLAYS.discard(overlay_id)
    LIVE_OVERLAYS.difference_update(clone_ids or ())
    close_fds(fds)
    if snapshot:
        # Only for a layer dropped without aclose() (a kept Workspace never
        # committed nor aborted): removed at once, holding the loop for the
        # tree's size; aclose() removes it in bounded steps.  Its lock is
        # let go last: until then no sweeper takes the copy for a dead run's.
        shutil.rmtree(snapshot, ignore_errors=True)
        _snapshot.unclaim(snapshot, lock)


async def _remove_tree(path: str) -> None:
    """Remove ``path`` in bounded steps, opening first what the command
    closed to us (``chmod 000``) where that is what stopped it."""
    try:
        await _drive(_removal_steps(path))
    except OSError:
        await _drive(_opening_steps(path))
        with contextlib.suppress(OSError):
            await _drive(_removal_steps(path))


async def sweep(home: str) -> None:
    """Remove the copies in ``home`` whose caller died without removing them
    (killed, SIGKILL included: ``_snapshot.orphans``), in bounded steps.
    Cancelled, a copy half removed stays unlocked: the next sweep goes on.
    A failure is not the run's: what could not be removed is left."""
    if not SWEEP:
        return
    try:
        steps = _snapshot.orphans(home)
        try:
            for copy, lock in steps:
                try:
                    await _remove_tree(copy)
                finally:
                    _snapshot.unclaim(copy, lock)
                await _checkpoint()
        finally:
            steps.close()
    except OSError:  # home gone (empty, removed by its last run), or not ours to list
        pass


#: Per policy owner and Landlock parts skipped: the policy's ruleset as a
#: :class:`Recipe` (its objects' fds held), and whether fs_readable covers
#: the workdir.  A run's own ruleset is then a copy plus the overlay's root:
#: ~0.07 ms for SYSTEM_READABLE (its rules added in one call into C) where
#: building it from the paths took ~3.6 ms (a loaded host; ``Layer.spawn_args``).
_RECIPES: weakref.WeakKeyDictionary[Compiled,
                                    dict[frozenset[Subsystem], tuple[Recipe, bool, bool]]]
_RECIPES = weakref.WeakKeyDictionary()

#: "unprivileged": ``detached_tmpfs`` answered EPERM once; this process
#: builds its layers in the child (a user namespace), and need not ask again.
_HOST = {"unprivileged": False}

#: What a spawn failing at the workspace step of a layer built in a user
#: namespace means: the host refused it (user namespaces off or limited,
#: overlayfs or tmpfs not mountable there, a kernel before 5.11).
_USERNS_REFUSALS = frozenset({errno.EPERM, errno.EACCES, errno.ENOSPC, errno.EINVAL,
                              errno.ENODEV, errno.ENOSYS, errno.EOPNOTSUPP})


_FDS_SPACE = socket.CMSG_SPACE(8)


def _escaped(path: str) -> str:
    """``path`` as overlayfs's "lowerdir" option takes it."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


class Layer:
    """One run's private layer; see the module's essay.

    ``mechanism``: ``"overlay"`` (we build it with CAP_SYS_ADMIN, detached,
    and the child attaches it), ``"overlay-userns"`` (an unprivileged
    caller: the child builds it in a user namespace of its own and hands us
    its tmpfs; csrc/spawn.c ``build_workspace``) or ``"snapshot"`` (a
    private copy of workdir, ``_snapshot.py``, made by :meth:`prepare`:
    ``fallback`` when it stands in for an overlay the host refused)."""

    __slots__ = ("__weakref__", "_clone", "_clone_ids", "_finalizer", "_home", "_listeners",
                 "_lock", "_ours", "_overlay_id", "_root_mode", "_ruleset", "_size", "_snapshot",
                 "_theirs", "_tmpfs", "_watchers", "fallback", "kept", "mechanism", "mount_fd",
                 "ready_ns", "shared", "size", "start_ns", "upper", "workdir")

    def __init__(self, workdir: str, max_disk: int | None, *, snapshot: bool = False,
                 fallback: bool = False, shared: bool = False) -> None:
        self.workdir = workdir
        #: Files changed in workdir from this instant on are conflicts.
        self.start_ns = time.clock_gettime_ns(_snapshot.CLOCK_REALTIME_COARSE)
        self._tmpfs = self.mount_fd = self._ruleset = -1
        self._ours = self._theirs = -1
        self._size = self.size = max_disk
        self.mechanism = "snapshot" if snapshot else "overlay"
        self.fallback = fallback
        #: Handed to a Workspace the caller holds: not the run's to drop.
        self.kept = False
        self._overlay_id = -1
        self.upper = self._snapshot = ""
        #: A snapshot's private directory and its copy's lock (``_snapshot.py``).
        self._home, self._lock = "", -1
        #: A snapshot's: entries of the copy changed from then on are the command's.
        self.ready_ns = 0
        self._listeners: list[object] = []
        self._watchers: list[Background] = []
        #: A pipeline's: each stage attaches a clone of the overlay (the one
        #: being handed over, and the mount ids of all, for the guard).
        self.shared = shared
        self._clone = -1
        self._clone_ids: list[int] = []
        self._finalizer = weakref.finalize(self, _release, [], -1)
        if snapshot:
            return
        try:
            self._build(max_disk)
            if shared and self.mechanism != "overlay":
                # An overlay the child builds in its user namespace cannot
                # be attached by another child: a pipeline gets a snapshot.
                raise ConfinementUnavailable(
                    Subsystem.WORKSPACE_OVERLAY, errno.EPERM,
                    "a pipeline's stages share an overlay only where the caller builds it "
                    "(CAP_SYS_ADMIN)")
        except BaseException:
            self.close()
            raise

    async def prepare(self) -> None:
        """A snapshot's copy of workdir, in bounded steps (``_snapshot.py``);
        nothing for an overlay.  Cancelled or failed, the partial copy is
        removed."""
        if self.mechanism != "snapshot" or self._snapshot:
            return
        for attempt in range(3):
            self._home = _snapshot.home_for(self.workdir)
            try:
                self._snapshot, self._lock = _snapshot.claim(self._home)
                break
            except FileNotFoundError:  # another caller removed it, empty, meanwhile
                if attempt == 2:
                    raise
        self._track()
        try:
            await sweep(self._home)
            await _drive(_snapshot.copy_steps(self.workdir, self._snapshot))
            self.ready_ns = await _snapshot.settle_instant(anyio.sleep)
        except BaseException:
            await self.aclose()
            raise
        self.upper = self._snapshot

    def where(self, path: str | None) -> str | None:
        """``path`` (a cwd) as the command is to see it: inside workdir, a
        snapshot's command sees the copy (it has no mount namespace in which
        the copy could take workdir's place)."""
        if self.mechanism != "snapshot" or path is None:
            return path
        rel = os.path.relpath(path, self.workdir)
        if rel == os.curdir:
            return self._snapshot
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return path
        return os.path.join(self._snapshot, rel)

    def serve(self, listener: object) -> None:
        """The run's supervisor serves ``listener``: its metadata guard may
        change the snapshot's entries for this run (``LIVE_SNAPSHOTS``)."""
        if self._snapshot:
            self._listeners.append(listener)  # several: a pipeline's stages share it
            LIVE_SNAPSHOTS[listener] = self._snapshot

    def watch(self, alive: Callable[[], bool], stop: Callable[[ExitReason], None],
              pid: int) -> None:
        """A snapshot with ``max_disk``: sample what the command's changes
        hold while ``alive()``, and ``stop(DISK_LIMIT)`` it past the bound
        (:func:`watch_disk`)."""
        if self._snapshot and self.size is not None:
            self._watchers.append(Background.start(
                lambda: watch_disk(self, alive, stop), f"asyncsandlock max_disk {pid}"))

    async def unwatch(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            await watcher.stop()

    def unserve(self) -> None:
        for listener in self._listeners:
            LIVE_SNAPSHOTS.pop(listener, None)
        self._listeners.clear()

    async def aclose(self) -> None:
        """:meth:`close`; a snapshot's copy is removed in bounded steps, even
        when cancelled (shielded)."""
        self.unserve()
        await self.unwatch()
        if not self._finalizer.alive:  # closed already
            return
        path, self._snapshot = self._snapshot, ""
        lock, self._lock = self._lock, -1
        if path:
            self._track()  # the finalizer no longer removes it: done here
            with anyio.CancelScope(shield=True):
                try:
                    await _remove_tree(path)
                finally:
                    _snapshot.unclaim(path, lock)
        self.close()

    async def sweep(self) -> None:
        """A snapshot's commit or abort, once its own copy is gone: the
        copies of dead callers beside it go too (:func:`sweep`; not
        shielded, unlike the removal of its own)."""
        if self._home:
            await sweep(self._home)

    def _build(self, max_disk: int | None) -> None:
        lower = os.stat(self.workdir)
        self._root_mode = stat.S_IMODE(lower.st_mode)
        if not _HOST["unprivileged"]:
            try:
                self._tmpfs = detached_tmpfs(max_disk)
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    _refused_as_unavailable(_raise, exc)
                _HOST["unprivileged"] = True
        if _HOST["unprivileged"]:
            # Built by the child (csrc/spawn.c build_workspace), which sends
            # us its tmpfs and overlay over this socket (see mounted()).
            self.mechanism = "overlay-userns"
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._ours, self._theirs = ours.detach(), theirs.detach()
            self._track()
            return
        self._track()
        base = f"/proc/self/fd/{self._tmpfs}"
        upper, work = f"{base}/upper", f"{base}/work"
        os.mkdir(upper)
        os.mkdir(work, 0o700)
        # The overlay's root takes the upper root's owner and mode: the
        # workdir's, so that the command finds it as it is.
        os.chmod(upper, self._root_mode)
        if os.geteuid() == 0:
            os.chown(upper, lower.st_uid, lower.st_gid)
        up = os.open(upper, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            wk = os.open(work, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self.mount_fd = _refused_as_unavailable(detached_overlay, self.workdir,
                                                        (up, upper), (wk, work))
                self._overlay_id = mount_id(self.mount_fd)
                LIVE_OVERLAYS.add(self._overlay_id)
            finally:
                os.close(wk)
        finally:
            os.close(up)
        self._track()
        self.upper = upper

    def _track(self) -> None:
        # The finalizer closes what a Layer dropped without close() holds.
        self._finalizer.detach()
        held = [fd for fd in (self.mount_fd, self._ruleset, self._tmpfs, self._ours,
                              self._theirs, self._clone) if fd >= 0]
        self._finalizer = weakref.finalize(self, _release, held, self._overlay_id,
                                           self._snapshot, self._clone_ids, self._lock)

    def spawn_args(self, policy: Sandbox, compiled: Compiled) -> WorkspaceSpawn:
        """What ``spawn(workspace=...)`` takes for this layer (called for
        each attempt of a spawn: one the host refused is retried).

        Landlock skips the mount point when it walks up from a mount's
        root (``is_access_to_paths_allowed``: hidden mount points are
        ignored), so a rule on ``workdir`` grants nothing inside the overlay
        mounted over it: the rule must name the overlay's root itself, which
        the child adds (it has the overlay open either way) to a ruleset of
        this run's own, a copy of the policy's (:class:`Recipe`).  The
        policy's own ruleset never names workdir: the directory under the
        overlay stays out of the command's reach by any other path to it.
        """
        plan = compiled.plan
        if self.mechanism == "snapshot":
            return self._snapshot_args(policy, compiled)
        if self.mechanism == "overlay-userns" and plan.identity is not None and (
                plan.identity[2] == lib.ASL_IDENTITY_SET):
            # setresuid to an id our user namespace does not map fails.
            raise ConfinementUnavailable(
                Subsystem.WORKSPACE_OVERLAY, errno.EPERM,
                "a workspace with uid/gid set by a caller without CAP_SYS_ADMIN: "
                "its overlay needs a user namespace, which maps the caller's own id only")
        self._drain()  # what a refused attempt's child sent
        close_fd(self._ruleset, watched=False)
        self._ruleset = -1
        access = 0
        if plan.landlock_fd >= 0:
            recipe, covered, _ = _recipe(policy, compiled)
            self._ruleset = recipe.build()
            access = (WRITE | (READ if covered else 0)) & recipe.fs_mask
        self._track()
        if self.mechanism == "overlay":
            return WorkspaceSpawn(self.workdir, self._ruleset, access,
                                  overlay=self._cloned() if self.shared else self.mount_fd)
        return WorkspaceSpawn(self.workdir, self._ruleset, access,
                              lower_escaped=_escaped(self.workdir), size=self._size,
                              root_mode=self._root_mode, sock=self._theirs)

    def _snapshot_args(self, policy: Sandbox, compiled: Compiled) -> WorkspaceSpawn:
        """A snapshot's spawn: nothing for the child to mount, only a ruleset
        of the run's own, the policy's plus the copy, which Landlock alone
        keeps apart from workdir: without Landlock, or with an fs_writable
        grant over workdir, the command could write workdir itself."""
        if compiled.plan.landlock_fd < 0:
            raise ConfinementUnavailable(
                Subsystem.WORKSPACE_SNAPSHOT, errno.EPERM,
                "a snapshot workspace needs Landlock, which alone keeps the command off "
                "workdir (Landlock is unavailable or degraded here)")
        recipe, covered, written = _recipe(policy, compiled)
        if written:
            raise _writable_workdir(self.workdir)
        close_fd(self._ruleset, watched=False)
        self._ruleset = -1
        if HOLE and within(os.path.realpath(self._home), _grant_roots(policy, compiled)):
            # A grant covers the private directory (fs_readable over
            # workdir's parent, say): it is holed out (``_holes.py``), so
            # that the copies of concurrent runs beside this one's are not
            # readable, with the holed directories' listing of now (entries
            # made later fail closed): see :func:`_holed_ruleset`.
            self._ruleset = _holed_ruleset(policy, compiled, self._home)
        else:  # no grant reaches the copies: the policy's own rules will do
            self._ruleset = recipe.build()
        self._track()
        # The copy lies in the hole: a rule of its own grants it, and it
        # alone.  O_NOFOLLOW: the copy's path is ours; nothing of it may be
        # a link.
        _add_path(self._ruleset, self._snapshot, (WRITE | (READ if covered else 0))
                  & recipe.fs_mask, os.O_NOFOLLOW)
        return WorkspaceSpawn("", self._ruleset, 0)

    def _cloned(self) -> int:
        """A clone of our detached overlay for one stage of a pipeline: the
        same superblock (one upper directory, so each stage sees the others'
        writes), a mount of its own that the stage's child attaches.  Its
        mount id joins the live overlays for the metadata guard."""
        close_fd(self._clone, watched=False)
        self._clone = -1
        try:
            self._clone = syscall("open_tree", self.mount_fd, ffi.new("char[]", b""),
                                  _OPEN_TREE_CLONE | _AT_EMPTY_PATH | os.O_CLOEXEC)
        except OSError as exc:
            # Older kernels refuse to clone a detached mount (EINVAL).
            raise ConfinementUnavailable(
                Subsystem.WORKSPACE_OVERLAY, exc.errno or errno.EINVAL,
                "a pipeline's stages share an overlay through clones of a detached mount "
                f"(open_tree: {os.strerror(exc.errno or errno.EINVAL)})") from exc
        self._clone_ids.append(mount_id(self._clone))
        LIVE_OVERLAYS.add(self._clone_ids[-1])
        self._track()
        return self._clone

    def release(self) -> None:
        """A shared overlay: every stage has ended; our detached mount goes,
        and with it the overlay (its upper directory ours alone from here)."""
        if self.shared and self.mount_fd >= 0:
            close_fd(self.mount_fd, watched=False)
            self.mount_fd = -1
            self._track()

    def refused(self, exc: SpawnError) -> None:
        """Raise :class:`ConfinementUnavailable` if ``exc`` is the host
        refusing a layer built in the child."""
        if (self.mechanism == "overlay-userns" and exc.step == "workspace"
                and exc.errno in _USERNS_REFUSALS):
            raise ConfinementUnavailable(Subsystem.WORKSPACE_OVERLAY, exc.errno or errno.EPERM,
                                         hint_for(Subsystem.WORKSPACE_OVERLAY)) from exc

    def _drain(self) -> list[int]:
        """The fds the child sent (none, or its tmpfs and overlay); any
        before them, from a child that failed later on, are closed."""
        got: list[int] = []
        if self._ours < 0:
            return got
        sock = socket.socket(fileno=self._ours)  # borrowed: detached below
        try:
            while True:
                try:
                    # Non-blocking, and never waits anyway: whatever a child
                    # sends is queued before spawn() returns (before exec).
                    data, ancillary, _flags, _addr = sock.recvmsg(1, _FDS_SPACE,
                                                                  socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                close_fds(got)
                got = [int.from_bytes(cell[i:i + 4], sys.byteorder, signed=True)
                       for level, kind, cell in ancillary
                       if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                       for i in range(0, len(cell) - 3, 4)]
                if not data:
                    break
        finally:
            sock.detach()
        return got

    def mounted(self) -> None:
        """The child has the overlay (or never will): drop our fds of it.
        From here on the upper directory is ours alone: overlayfs forbids
        touching a layer while it is mounted, and once the sandbox's mount
        namespace is gone, it no longer is.  A layer the child built: take
        its tmpfs, and the overlay's mount id for the metadata guard."""
        if self.mechanism == "overlay-userns" and self._tmpfs < 0:
            got = self._drain()
            close_fds([fd for fd in (self._ours, self._theirs) if fd >= 0])
            self._ours = self._theirs = -1
            if len(got) == 2:
                self._tmpfs = got[0]
                self._overlay_id = mount_id(got[1])
                os.close(got[1])
                LIVE_OVERLAYS.add(self._overlay_id)
                self.upper = f"/proc/self/fd/{self._tmpfs}/upper"
            else:
                close_fds(got)
        if self.shared:  # the next stage attaches a clone of it: keep ours
            close_fds([fd for fd in (self._clone, self._ruleset) if fd >= 0])
            self._clone = self._ruleset = -1
        elif self.mount_fd >= 0 or self._ruleset >= 0:
            close_fds([fd for fd in (self.mount_fd, self._ruleset) if fd >= 0])
            self.mount_fd = self._ruleset = -1
        self._track()

    def close(self) -> None:
        """Drop the layer: its tmpfs goes with our last fd of it (the kernel
        frees its pages; nothing is left on any disk)."""
        self._finalizer()


def _writable_workdir(workdir: str) -> ConfinementUnavailable:
    return ConfinementUnavailable(
        Subsystem.WORKSPACE_SNAPSHOT, errno.EPERM,
        f"fs_writable covers workdir {workdir}: a snapshot workspace (no overlay over "
        "workdir) would leave workdir writable to the command")


def _raise(exc: OSError) -> int:
    raise exc


def _recipe(policy: Sandbox, compiled: Compiled) -> tuple[Recipe, bool, bool]:
    """The policy's ruleset as a :class:`Recipe`, made once per owner and
    plan (``_RECIPES``), whether fs_readable covers the workdir, and whether
    fs_writable does."""
    skipped = frozenset(compiled.plan.degraded & set(_LANDLOCK_PARTS))
    per_plan = _RECIPES.setdefault(compiled, {})
    found = per_plan.get(skipped)
    if found is None:
        spec = _ruleset_spec(policy)
        recipe = Recipe()
        os.close(build_ruleset(spec, abi_version(), skipped, recipe))
        # Executable, as a writable tree is, when fs_readable covers it.
        workdir = os.fspath(policy.workdir or "/")
        covered = within(workdir, real_roots(spec.readable))
        found = per_plan[skipped] = (recipe, covered, within(workdir, real_roots(spec.writable)))
    return found


#: Per policy owner, Landlock parts skipped and snapshots' private directory
#: (resolved): the policy's ruleset less the grants that reach the directory,
#: as a :class:`Recipe`, and those grants, readable and writable.
_RESTS: weakref.WeakKeyDictionary[
    Compiled, dict[tuple[frozenset[Subsystem], str],
                   tuple[Recipe, tuple[str, ...], tuple[str, ...]]]]
_RESTS = weakref.WeakKeyDictionary()


def _holed_ruleset(policy: Sandbox, compiled: Compiled, home: str) -> int:
    """A new ruleset fd: the policy's, with the private directory ``home``
    holed out of every grant that reaches it.

    Only what depends on the directory's surroundings is built per run:
    the grants that reach ``home`` (carved: ``_holes.layout``; each holed
    directory's siblings granted in one call into C, from its listing of
    now, so nothing kept can be stale); the policy's other rules are a
    copy of a :class:`Recipe` made once (``_RESTS``).  Built whole from the
    paths with Python adding each sibling, this was 8-17 ms for
    ``SYSTEM_READABLE`` and a parent of 200 entries (docs/performance.md).
    """
    skipped = frozenset(compiled.plan.degraded & set(_LANDLOCK_PARTS))
    where = resolve(home)
    per_plan = _RESTS.setdefault(compiled, {})
    found = per_plan.get((skipped, where))
    spec = _ruleset_spec(policy)
    if found is None:
        def near(grant: str) -> bool:
            root = resolve(grant)
            return beneath(where, root) or beneath(root, where)

        rest = replace(spec, readable=tuple(g for g in spec.readable if not near(g)),
                       writable=tuple(g for g in spec.writable if not near(g)))
        recipe = Recipe()
        os.close(build_ruleset(rest, abi_version(), skipped, recipe))
        found = per_plan[(skipped, where)] = (
            recipe, tuple(g for g in spec.readable if near(g)),
            tuple(g for g in spec.writable if near(g)))
    recipe, readable, writable = found
    fd = recipe.build()
    try:
        denied = (*spec.denied, home)
        _add_grants(fd, readable, READ & recipe.fs_mask, denied)
        _add_grants(fd, writable, WRITE & recipe.fs_mask, denied)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Per policy owner: the canonical paths of the policy's fs_readable and
#: fs_writable grants (a snapshot's private directory under one is holed).
_GRANTS: weakref.WeakKeyDictionary[Compiled, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _grant_roots(policy: Sandbox, compiled: Compiled) -> tuple[str, ...]:
    found = _GRANTS.get(compiled)
    if found is None:
        spec = _ruleset_spec(policy)
        found = _GRANTS[compiled] = real_roots((*spec.readable, *spec.writable))
    return found


class Workspace:
    """The changes of a finished run, held in its layer until :meth:`commit`
    or :meth:`abort` (``on_exit="keep"``, or in a :class:`WorkspaceConflict`).

    .. versionadded:: 0.2
    """

    __slots__ = ("_done", "_layer", "_state", "_trash", "changes", "mechanism", "workdir")

    _layer: Layer
    _done: set[str]
    _trash: list[str]
    _state: str
    workdir: str
    changes: tuple[Change, ...]
    mechanism: str

    def __init__(self) -> None:
        raise TypeError("Workspace objects are made by Sandbox.run()")

    @classmethod
    def _create(cls, layer: Layer, changes: tuple[Change, ...]) -> Workspace:
        self = object.__new__(cls)
        self._layer = layer
        self._done = set()
        #: Directories of the workdir put away by a commit, not yet removed.
        self._trash = []
        self._state = "open"
        #: The workspace's directory.
        self.workdir = layer.workdir
        #: What the command changed.
        self.changes = changes
        #: How the layer was made: ``"overlay"`` (by us, with CAP_SYS_ADMIN)
        #: or ``"overlay-userns"`` (by the child, in a user namespace).
        self.mechanism = layer.mechanism
        return self

    def __repr__(self) -> str:
        return (f"<Workspace {self.workdir} {self._state}, {len(self.changes)} changes, "
                f"{len(self._done)} committed>")

    @property
    def state(self) -> str:
        """``"open"``, ``"committed"`` or ``"aborted"``."""
        return self._state

    def _conflicts(self, pending: list[Change]) -> Iterator[str]:
        start = self._layer.start_ns
        for change in pending:
            now = lstat_or_none(os.path.join(self.workdir, change.path))
            if change.kind == "added":
                if now is not None:
                    yield change.path
            elif now is None:
                yield change.path
            elif (not stat.S_ISDIR(now.st_mode) or change.kind == "deleted") and (
                    now.st_ctime_ns >= start):
                # A directory's ctime moves with every entry made or removed
                # in it: only one about to be removed counts it.
                yield change.path

    async def commit(self) -> None:
        """Apply the changes not yet committed to the workdir; see the
        module's essay for atomicity, cancellation and conflicts.

        :raises WorkspaceConflict: a path was changed in the workdir during
            the run; nothing was written.
        """
        if self._state != "open":
            if self._state == "committed":
                return
            raise SandboxError(f"this workspace of {self.workdir} was aborted")
        if why := _over_limit(self._layer, self.changes):
            raise SandboxError(why)
        pending = [change for change in self.changes if change.path not in self._done]
        conflicts: list[str] = []
        await _drive(_collect(self._conflicts(pending), conflicts))
        if conflicts:
            raise WorkspaceConflict(tuple(conflicts), self)
        await _drive(self._apply_steps(pending))
        self._state = "committed"
        await self._layer.aclose()
        await self._layer.sweep()

    def _apply_steps(self, pending: list[Change]) -> Iterator[bool]:
        # A change is recorded as done right after its last write and before
        # the next yield: a commit closed at a yield (cancelled) has done
        # exactly the changes it recorded, and a retry goes on from there.
        for change in pending:
            target = os.path.join(self.workdir, change.path)
            if change.kind == "deleted":
                self._put_away(target)
            elif stat.S_ISDIR(change.mode):
                now = lstat_or_none(target)
                if now is not None and not stat.S_ISDIR(now.st_mode):
                    os.unlink(target)
                if now is None or not stat.S_ISDIR(now.st_mode):
                    os.mkdir(target, 0o700)
                os.chmod(target, stat.S_IMODE(change.mode) | _owner_needs(change.mode))
            else:
                now = lstat_or_none(target)
                if now is not None and stat.S_ISDIR(now.st_mode):
                    self._put_away(target)
                # Copied even from a snapshot on the same file system, never
                # renamed out of it: a process of the sandbox that outlived it
                # (no process group of its own), or one it passed an fd to,
                # may hold the copy's file open; the workdir gets a new one.
                yield from _copy_in(os.path.join(self._layer.upper, change.path), target,
                                    change.mode)
            self._done.add(change.path)
            yield False
            yield from self._empty_trash()
        # Without CAP_DAC_OVERRIDE a directory the command closed to its
        # owner (chmod 000) is filled first and closed last.
        for change in reversed(self.changes):
            if stat.S_ISDIR(change.mode) and change.kind != "deleted" and _owner_needs(
                    change.mode):
                os.chmod(os.path.join(self.workdir, change.path), stat.S_IMODE(change.mode))
                yield False

    def _put_away(self, target: str) -> None:
        """Remove ``target`` from the workdir at once: a file is unlinked, a
        directory renamed to a hidden name beside it (one atomic step) and
        removed later, entry by entry, by :meth:`_empty_trash`."""
        now = lstat_or_none(target)
        if now is None:
            return
        if not stat.S_ISDIR(now.st_mode):
            os.unlink(target)
            return
        head, name = os.path.split(target)
        hidden = os.path.join(head, f".{name}.asyncsandlock-{secrets.token_hex(4)}")
        os.rename(target, hidden)
        self._trash.append(hidden)

    def _empty_trash(self) -> Iterator[bool]:
        while self._trash:
            for _ in _removal_steps(self._trash[-1]):
                yield False
            self._trash.pop()

    async def abort(self) -> None:
        """Drop the changes not yet committed; the workdir is left as it is."""
        if self._state == "open":
            self._state = "aborted"
            with anyio.CancelScope(shield=True):
                await _drive(self._empty_trash())  # what a cancelled commit put away
                await self._layer.aclose()
            await self._layer.sweep()


def _owner_needs(mode: int) -> int:
    """The owner bits a commit without privilege adds to a directory of
    ``mode`` while it fills it (0 for root, or when it has them)."""
    return 0 if os.geteuid() == 0 else ~mode & stat.S_IRWXU


def _collect(found: Iterator[str], into: list[str]) -> Iterator[None]:
    for path in found:
        into.append(path)
        yield
    yield


def _copy_in(source: str, target: str, mode: int) -> Iterator[bool]:
    """Copy ``source`` (a file, symlink, fifo...) beside ``target`` under a
    hidden name and rename it over ``target``, with ``mode`` (the command's:
    the diff may have made ``source`` readable); yields True after each
    chunk.  Closed early (a cancellation), the copy is removed."""
    head, name = os.path.split(target)
    temp = os.path.join(head, f".{name}.asyncsandlock-{secrets.token_hex(4)}")
    st = os.lstat(source)
    done = False
    try:
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), temp)
        elif stat.S_ISREG(st.st_mode):
            src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                dst = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    yield from _snapshot.copy_data(src, dst)
                    os.fchmod(dst, stat.S_IMODE(mode))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(temp, stat.S_IMODE(mode))
        else:
            return  # device nodes and sockets are not carried over
        if os.geteuid() == 0:
            os.chown(temp, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(temp, target)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


async def diff(layer: Layer) -> tuple[Change, ...]:
    """The changes in ``layer``, sorted by path."""
    found: list[Change] = []
    if layer.mechanism == "snapshot":
        await _drive(_snapshot.diff_steps(layer.upper, layer.workdir, layer.ready_ns, found))
    else:
        await _drive(diff_steps(layer.upper, layer.workdir, found))
    return tuple(found)


#: Seconds between two samples of a snapshot's changes for ``max_disk``, at
#: least; stretched to 4 times a sample's own time (a walk of the copy).
DISK_INTERVAL = 0.25


def _held_steps(copy: str, since: int, held: list[int]) -> Iterator[None]:
    """Add to ``held[0]`` the bytes of the entries of ``copy`` changed since
    ``since`` (their blocks: what they take of the disk); entries that
    vanish under the walk (the command is running) are skipped."""
    pending, seen = [copy], 0
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                seen += 1
                if seen % 256 == 0:
                    yield
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(entry.path)
                    elif st.st_ctime_ns >= since:
                        held[0] += st.st_blocks * 512
    yield


async def watch_disk(layer: Layer, alive: Callable[[], bool],
                     stop: Callable[[ExitReason], None]) -> None:
    """``max_disk`` for a snapshot, sampled (``Protection.SAMPLED``): the
    copy lives on ``workdir``'s file system, which has no bound of its own
    an unprivileged caller could set.  Each sample walks the copy in
    bounded steps; past the bound the command is stopped with
    ``ExitReason.DISK_LIMIT``.  It may overshoot by what it writes in one
    interval; the change set is checked once more after the run."""
    assert layer.size is not None
    while alive():
        started = time.monotonic()
        held = [0]
        await _drive(_held_steps(layer.upper, layer.ready_ns, held))
        if held[0] > layer.size and alive():
            stop(ExitReason.DISK_LIMIT)
            return
        await anyio.sleep(max(DISK_INTERVAL, 4 * (time.monotonic() - started)))


def _over_limit(layer: Layer, changes: tuple[Change, ...]) -> str:
    """Why a snapshot's changes may not be committed ("" if they may): they
    hold more than ``max_disk`` (which an overlay's tmpfs would have refused
    the command with ENOSPC; a snapshot's copy is checked after the run)."""
    if layer.mechanism != "snapshot" or layer.size is None:
        return ""
    held = sum(change.size for change in changes if change.kind != "deleted")
    if held <= layer.size:
        return ""
    return (f"the workspace's changes hold {held} bytes, more than max_disk ({layer.size}): "
            "not committed (a snapshot workspace samples max_disk during the run and checks "
            "it again after)")


async def settle(layer: Layer, result: Result, on_exit: str, dry_run: bool,
                 success: bool | None = None) -> Result:
    """List the changes of a finished run and commit, abort or keep them as
    ``on_exit`` and ``dry_run`` say; returns ``result`` with them.  The
    layer is the returned workspace's (``keep``), or dropped.  ``success``:
    whether the run succeeded, if not ``result``'s (a pipeline's: every
    stage's)."""
    if success is None:
        success = result.success
    if not layer.upper:  # a child that exec'd has sent it: not expected
        raise SandboxError(f"the workspace layer of {layer.workdir} never arrived")
    layer.unserve()  # the command is gone: its guard has no more calls
    await layer.unwatch()
    layer.release()
    changes = await diff(layer)
    workspace = Workspace._create(layer, changes)
    kept: Workspace | None = None
    if dry_run or on_exit == "abort" or (on_exit == "commit" and not success):
        await workspace.abort()
    elif on_exit == "commit" and (why := _over_limit(layer, changes)):
        await workspace.abort()
        raise SandboxError(why)
    elif on_exit == "commit":
        try:
            await workspace.commit()
        except WorkspaceConflict as exc:
            layer.kept = True
            exc.result = replace(result, changes=changes, workspace=workspace)
            raise
    else:
        kept = workspace
        layer.kept = True
    return replace(result, changes=changes, workspace=kept)


def check_dry_run(workspace: bool, dry_run: object) -> None:
    """A :class:`PolicyError` for a ``dry_run`` that is not a bool, or set
    without a workdir."""
    if not isinstance(dry_run, bool):
        raise PolicyError("dry_run", f"{show(dry_run)} must be True or False")
    if dry_run and not workspace:
        raise PolicyError("dry_run", "shows a workspace's changes: it needs a workdir")


def workspace_protections(protections: Mapping[Subsystem, Protection], layer: Layer
                          ) -> Mapping[Subsystem, Protection]:
    """``protections`` of a run in ``layer``: its overlay ACTIVE, or its
    snapshot ACTIVE and the overlay NOT_REQUESTED (chosen) or DEGRADED (the
    host refused it)."""
    if layer.mechanism != "snapshot":
        return MappingProxyType({**protections, Subsystem.WORKSPACE_OVERLAY: Protection.ACTIVE})
    overlay = Protection.DEGRADED if layer.fallback else Protection.NOT_REQUESTED
    snapshot = Protection.ACTIVE if layer.size is None else Protection.SAMPLED  # max_disk
    return MappingProxyType({**protections, Subsystem.WORKSPACE_OVERLAY: overlay,
                             Subsystem.WORKSPACE_SNAPSHOT: snapshot})


_T = TypeVar("_T")


async def in_layer(policy: Sandbox, start: Callable[[Layer], Awaitable[_T]],
                   shared: bool = False) -> tuple[Layer, _T]:
    """A layer for a run of ``policy`` and ``start(layer)``'s answer (the
    spawn).  With ``workdir_mechanism="auto"``, an overlay the host refuses
    (building it here, or the child's spawn step) gives way to a snapshot,
    and the spawn is tried again in that.  Whatever fails, the layer is
    dropped (a snapshot's copy removed) before the error propagates.
    ``shared``: for the stages of a pipeline (:func:`pipeline_workspace`):
    an overlay each attaches a clone of, or a snapshot they all work in."""
    assert policy.workdir is not None
    workdir, size = os.fspath(policy.workdir), None if policy.max_disk is None else int(
        policy.max_disk)
    mechanism = policy.workdir_mechanism
    layer: Layer | None = None
    try:
        if mechanism != "snapshot":
            try:
                layer = Layer(workdir, size, shared=shared)
                return layer, await start(layer)
            except ConfinementUnavailable as exc:
                if mechanism == "overlay" or exc.subsystem is not Subsystem.WORKSPACE_OVERLAY:
                    raise
            if layer is not None:
                await layer.aclose()
        if within(workdir, real_roots(str(path) for path in policy.fs_writable)):
            raise _writable_workdir(workdir)  # before the copy (the spawn checks it too)
        layer = Layer(workdir, size, snapshot=True, fallback=mechanism == "auto", shared=shared)
        await layer.prepare()
        return layer, await start(layer)
    except BaseException:
        if layer is not None:
            await layer.aclose()
        raise


async def open_in_workspace(policy: Sandbox,
                            start: Callable[[Layer], Awaitable[SandboxedProcess]]
                            ) -> SandboxedProcess:
    """``Sandbox.open()`` with a workspace: the process of ``start`` in a
    layer of its own (:func:`in_layer`), settled when it is waited for
    (``wait()``, ``aclose()``, leaving ``async with``): its
    :attr:`~SandboxedProcess.changes` listed and ``on_exit`` applied."""
    layer, proc = await in_layer(policy, start)
    on_exit = policy.on_exit

    async def settle_process(proc: SandboxedProcess) -> None:
        try:
            result = await settle(layer, proc._result(None, None), on_exit, False)
        except WorkspaceConflict as exc:
            proc.workspace = exc.workspace
            proc.changes = exc.workspace.changes
            raise
        finally:
            if not layer.kept:
                await layer.aclose()  # a no-op once settle() dropped it
        proc.changes, proc.workspace = result.changes, result.workspace

    proc._settle = settle_process
    return proc


def pipeline_workspace(policies: list[Sandbox]) -> Sandbox | None:
    """The one workspace the stages of a pipeline share (the policy of the
    first stage with a workdir), or None.  All its stages with a workdir
    must agree on it (docs/workspaces.md, "Pipelines")."""
    found: Sandbox | None = None
    for policy in policies:
        if policy.workdir is None:
            continue
        if found is None:
            found = policy
        elif (policy.workdir, policy.on_exit, policy.max_disk, policy.workdir_mechanism) != (
                found.workdir, found.on_exit, found.max_disk, found.workdir_mechanism):
            raise PolicyError("workdir", "the stages of a pipeline share one workspace: their "
                                         "workdir, on_exit, max_disk and workdir_mechanism "
                                         "must agree")
    return found
