"""``max_memory`` in a cgroup: a budget the kernel enforces.

Where the caller may make child groups of its *own* memory cgroup -- a
cgroup v2 group with ``memory`` enabled for its children and delegated to
it, or (a hybrid host) a cgroup v1 memory group of its own, writable --
each run with ``memory_mechanism="cgroup"`` gets a child group of that
group, and only of that one: nothing is made anywhere else, nothing of the
host's setup is changed.  The two versions share everything but file names
(:class:`_Files`):

- made: ``mkdir``, the limit written (v1 ``memory.limit_in_bytes`` and,
  where swap is accounted, ``memory.memsw.limit_in_bytes`` to the same;
  v2 ``memory.max``, ``memory.swap.max`` 0 and ``memory.oom.group`` 1),
  and ``cgroup.procs`` opened for the child;
- entered: the child writes "0" to that fd in its ``rlimit`` step, its last
  before ``execve`` (``csrc/spawn.c``, ``set_rlimits``): nothing of the
  command runs outside, and all it starts is born inside.  The move waits
  for an RCU grace period when no move ran just before (5-13 ms here, the
  caller's loop waiting with it): why the cgroup is opt-in (docs/limits.md);
- over the budget: the kernel reclaims what it can, then the OOM killer
  kills inside the group (v2: all of it, ``memory.oom.group``).  v1 kills
  one process: an eventfd on ``memory.oom_control`` (``cgroup.event_control``)
  is watched by the event loop, and the sandbox is stopped when it fires.
  The reason is read back at the reap (v1 ``oom_kill`` in
  ``memory.oom_control``, v2 in ``memory.events``): MEMORY_LIMIT;
- removed: after the reap (``rmdir``; retried while killed members are
  still on their way out).  A caller killed by SIGKILL cannot remove its
  groups: the reaper kills their processes (``_reaper.py``) and the empty
  groups are left, named after their owner (``asl-<pid>-<start>-<n>``), for
  the next caller to sweep (:func:`sweep`, at its first group; a group
  younger than :data:`SWEEP_AFTER` is left).

Which of v2 and v1 is used, and why neither, :func:`memory_backend` says
(read once per process).  ``probe_cgroup_v2`` is the v2 half of it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import anyio

from ._exceptions import PolicyError
from ._fd import close_fd
from ._standby import Watcher, loop_watcher
from ._types import ExitReason, Protection, Subsystem

#: The controllers a cgroup v2 backend of every watched limit would need
#: enabled for the children (``max_cpu`` would take ``cpu.max``).
CONTROLLERS = ("memory", "cpu")

#: ``memory_mechanism`` values: the watcher (``_watch.py``), or a cgroup
#: where one can be made (else the watcher, reported ``SAMPLED``).
MECHANISMS = ("sampled", "cgroup")

#: The prefix of the groups made here, and how long a removal is retried
#: (seconds) while killed members are still leaving.
PREFIX = "asl-"
REMOVE_FOR = 2.0
#: A dead owner's group younger than this (seconds) is not swept: its pid
#: may name a caller in another pid namespace sharing our group, whose
#: child has yet to enter it.
SWEEP_AFTER = 60.0


class CgroupV2(NamedTuple):
    """What :func:`probe_cgroup_v2` found."""

    #: The group a sandbox's child group would be made in; None if there is none.
    directory: str | None
    #: Why there is none ("" when there is one).
    reason: str


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def _mounts(fstype: str, option: str | None = None) -> list[tuple[str, str]]:
    """(root in the hierarchy, mount point) of each ``fstype`` mount (with
    super option ``option`` if given) in /proc/self/mountinfo."""
    found = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        fields, _, tail = line.partition(" - ")
        # Before " - ": id, parent, dev, root, mount point...; after it:
        # type, source, super options.
        head, rest = fields.split(), tail.split()
        if rest[:1] == [fstype] and (option is None or option in rest[2].split(",")):
            found.append((head[3], head[4]))
    return found


def _own_path(controller: str) -> str | None:
    """This process's group path in the hierarchy of ``controller`` ("" for
    the cgroup v2 one), from /proc/self/cgroup."""
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, names, path = line.split(":", 2)
        if names.split(",") == [""] if not controller else controller in names.split(","):
            return path
    return None


def _join(mount: tuple[str, str], path: str) -> str | None:
    """``path`` (in the hierarchy) under ``mount`` (root, mount point)."""
    root, point = mount
    if root != "/" and not (path == root or path.startswith(root + "/")):
        return None  # the mount shows a part of the hierarchy we are not in
    rel = path[len(root):] if root != "/" else path
    return os.path.normpath(os.path.join(point, rel.lstrip("/")))


def _own_group() -> CgroupV2:
    """The directory of this process's cgroup v2 group, whatever it enables."""
    if _read("/proc/self/mountinfo") is None or _read("/proc/self/cgroup") is None:
        return CgroupV2(None, "/proc/self/mountinfo or /proc/self/cgroup cannot be read")
    roots = _mounts("cgroup2")
    if not roots:
        return CgroupV2(None, "no cgroup2 file system is mounted (a cgroup v1 host)")
    path = _own_path("")
    if path is None:
        return CgroupV2(None, "this process is in no cgroup v2 group")
    # Field 5 is the mount point (the first cgroup2 mount, as before).
    return CgroupV2(os.path.normpath(os.path.join(roots[0][1], path.lstrip("/"))), "")


def probe_cgroup_v2(controllers: tuple[str, ...] = CONTROLLERS) -> CgroupV2:
    """The cgroup v2 group of this process, if it has ``controllers``
    enabled for its children and this process may make groups in it.
    Reads only: nothing is created, moved or written."""
    found = _own_group()
    directory = found.directory
    if directory is None:
        return found
    available = (_read(os.path.join(directory, "cgroup.controllers")) or "").split()
    enabled = (_read(os.path.join(directory, "cgroup.subtree_control")) or "").split()
    if missing := [name for name in controllers if name not in enabled]:
        names = ", ".join(missing)
        if any(name not in available for name in missing):
            return CgroupV2(None, f"the {names} controllers are not on the cgroup v2 hierarchy "
                                  f"at {directory} (a hybrid host has them on cgroup v1)")
        return CgroupV2(None, f"{directory} does not enable {names} for its children "
                              "(cgroup.subtree_control)")
    if not os.access(directory, os.W_OK):
        return CgroupV2(None, f"{directory} is not delegated to this process (not writable)")
    return found


def probe_cgroup_v1_memory() -> CgroupV2:
    """This process's own cgroup v1 memory group, if it may make groups in
    it.  The root group is the host's, never ours.  Reads only."""
    mounts = _mounts("cgroup", "memory")
    if not mounts:
        return CgroupV2(None, "no cgroup v1 memory hierarchy is mounted")
    path = _own_path("memory")
    if path is None:
        return CgroupV2(None, "this process is in no cgroup v1 memory group")
    if path == "/":
        return CgroupV2(None, "this process is in the root cgroup v1 memory group (the "
                              "host's, not its own)")
    directory = next((d for d in (_join(m, path) for m in mounts) if d and os.path.isdir(d)),
                     None)
    if directory is None:
        return CgroupV2(None, f"its cgroup v1 memory group {path} is not visible here")
    if not os.access(directory, os.W_OK) or not os.access(
            os.path.join(directory, "cgroup.procs"), os.W_OK):
        return CgroupV2(None, f"{directory} is not writable by this process")
    return CgroupV2(directory, "")


@dataclass(frozen=True, slots=True)
class _Files:
    """What v1 and v2 call the same things."""

    version: int
    limit: str
    #: The swap limit, or None; and its value (v1: memory and swap together).
    swap: str | None
    swap_is_total: bool
    #: Where the OOM kills are counted (a line ``oom_kill N``).
    events: str
    peak: str
    #: v2: written "1" (the whole group is killed together).
    group_kill: str | None


_V1 = _Files(1, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", True,
             "memory.oom_control", "memory.max_usage_in_bytes", None)
_V2 = _Files(2, "memory.max", "memory.swap.max", False, "memory.events", "memory.peak",
             "memory.oom.group")


class MemoryBackend(NamedTuple):
    """Where groups are made (None: nowhere), with which files, and why not."""

    directory: str | None
    files: _Files | None
    reason: str


@functools.cache
def memory_backend() -> MemoryBackend:
    """The cgroup ``max_memory`` is enforced in here: the caller's own v2
    group with ``memory`` delegated, else its own v1 memory group, else
    none (both reasons).  Read once per process."""
    v2 = probe_cgroup_v2(("memory",))
    if v2.directory is not None:
        return MemoryBackend(v2.directory, _V2, "")
    v1 = probe_cgroup_v1_memory()
    if v1.directory is not None:
        return MemoryBackend(v1.directory, _V1, "")
    return MemoryBackend(None, None, f"cgroup v2: {v2.reason}; cgroup v1: {v1.reason}")


def check_memory_mechanism(value: object) -> str:
    """``memory_mechanism`` validated."""
    if value not in MECHANISMS:
        raise PolicyError("memory_mechanism", f"{value!r} must be one of "
                                              f"{', '.join(map(repr, MECHANISMS))}")
    return str(value)


def kernel_memory(max_memory: object, mechanism: str) -> bool:
    """Whether a run of such a policy has its ``max_memory`` in a cgroup
    (unless making the group fails: :func:`limits_protection_of_run`)."""
    return (max_memory is not None and mechanism == "cgroup"
            and memory_backend().directory is not None)


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (ticks after boot): with the pid, a
    name no other process will have."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat.rpartition(")")[2].split()[19]


_serial = itertools.count()
#: Our own groups whose removal failed: tried again by :func:`sweep`.
_left: set[str] = set()
#: The directories swept of dead owners' groups (once per process).
_swept: set[str] = set()


def _owner_alive(name: str) -> bool:
    """Whether the process that made group ``name`` (``asl-<pid>-<start>-<n>``)
    still runs."""
    parts = name[len(PREFIX):].split("-")
    if len(parts) != 3 or not parts[0].isdigit():
        return True  # not one of ours: never touched
    return _start_time(int(parts[0])) == parts[1]


def _remove(path: str) -> bool:
    """rmdir ``path``; False while processes are in it."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.EAGAIN):
            return False
        raise
    return True


def sweep(directory: str) -> None:
    """Remove the groups that callers killed before they could (their owner
    is dead), and ours left busy earlier.  A group still holding processes
    stays (rmdir refuses it) until a later sweep."""
    if directory not in _swept:
        _swept.add(directory)
        with contextlib.suppress(OSError):
            old = time.time() - SWEEP_AFTER
            for entry in os.scandir(directory):
                if entry.name.startswith(PREFIX) and not _owner_alive(entry.name):
                    with contextlib.suppress(OSError):
                        if entry.stat().st_mtime < old:
                            _remove(entry.path)
    for path in list(_left):
        with contextlib.suppress(OSError):
            if _remove(path):
                _left.discard(path)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class MemoryGroup:
    """One run's memory cgroup, from :meth:`make` until :meth:`aclose`."""

    __slots__ = ("files", "notify", "path", "procs", "watcher")

    def __init__(self, path: str, files: _Files) -> None:
        self.path = path
        self.files = files
        #: Our fd of its cgroup.procs, for the child (-1 once closed).
        self.procs = -1
        #: v1: the eventfd told of OOM (-1: none); what watches it.
        self.notify = -1
        self.watcher: Watcher | None = None

    @classmethod
    def make(cls, limit: int) -> MemoryGroup | None:
        """A new group under the backend's with a budget of ``limit`` bytes,
        or None where none can be made (the watcher then enforces it).

        Short non-blocking writes on cgroupfs, on the loop (~0.1 ms in all
        here: mkdir 70 us, rmdir 40 us; docs/limits.md)."""
        backend = memory_backend()
        if backend.directory is None or backend.files is None:
            return None
        sweep(backend.directory)
        files = backend.files
        path = os.path.join(backend.directory, f"{PREFIX}{os.getpid()}-"
                                               f"{_start_time(os.getpid())}-{next(_serial)}")
        try:
            os.mkdir(path, 0o755)
        except OSError:
            return None  # refused (a limit on groups, a read-only mount): sampled
        group = cls(path, files)
        try:
            group._configure(limit)
        except OSError:
            group.discard()
            return None
        return group

    def _configure(self, limit: int) -> None:
        files = self.files
        _write(os.path.join(self.path, files.limit), str(limit))
        swap = os.path.join(self.path, files.swap) if files.swap else None
        # v1: memory and swap together, so the same figure leaves no swap.
        # Absent where swap is not accounted (nothing to limit then).
        if swap is not None and os.path.exists(swap):
            _write(swap, str(limit) if files.swap_is_total else "0")
        if files.group_kill is not None:
            _write(os.path.join(self.path, files.group_kill), "1")
        if files.version == 1:
            self.notify = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            control = os.open(os.path.join(self.path, files.events), os.O_RDONLY | os.O_CLOEXEC)
            try:
                # The registration holds what it needs of both: the file
                # may be closed at once; it ends with the eventfd or the group.
                _write(os.path.join(self.path, "cgroup.event_control"),
                       f"{self.notify} {control}")
            finally:
                os.close(control)
        self.procs = os.open(os.path.join(self.path, "cgroup.procs"),
                             os.O_WRONLY | os.O_CLOEXEC)

    def watch(self, alive: Callable[[], bool], stop: Callable[[ExitReason], None]) -> None:
        """v1: stop the sandbox when the OOM killer has struck inside (it
        kills one process, not the sandbox).  v2 needs nothing: the group
        is killed whole, and the reap reads the reason."""
        if self.notify < 0:
            return
        watcher = self.watcher = loop_watcher()

        def fired() -> None:
            self.unwatch()
            if alive():
                stop(ExitReason.MEMORY_LIMIT)
        watcher.add_reader(self.notify, fired)

    def unwatch(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.remove_reader(self.notify)

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in the group."""
        text = _read(os.path.join(self.path, self.files.events)) or ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak(self) -> int | None:
        """The most the group held at once, in bytes (None: not told)."""
        text = _read(os.path.join(self.path, self.files.peak))
        return None if text is None else int(text)

    def discard(self) -> None:
        """Close our fds and remove the group, now; one still holding
        processes is left to :func:`sweep`."""
        self.unwatch()
        procs, self.procs = self.procs, -1
        close_fd(procs, watched=False)  # never waited on
        try:
            if not _remove(self.path):
                _left.add(self.path)
        except OSError:
            pass  # not ours to fix (a removed mount, say): left as it is
        finally:
            # After the rmdir: the registration signals the eventfd as the
            # group goes, and nothing reads it any more.
            notify, self.notify = self.notify, -1
            close_fd(notify, watched=False)  # no longer watched: unwatch() above

    async def aclose(self) -> None:
        """Remove the group once the sandbox's processes have left it: they
        were SIGKILLed before the reap, and the last may still be exiting."""
        self.unwatch()
        deadline = anyio.current_time() + REMOVE_FOR
        delay = 0.0005
        while True:
            try:
                if _remove(self.path):
                    break
            except OSError:
                break  # not ours to fix: closed below, left as it is
            if anyio.current_time() >= deadline:
                _left.add(self.path)  # stuck (uninterruptible): a later sweep
                break
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.discard()


def reason_at_reap(group: MemoryGroup, reason: ExitReason | None) -> ExitReason | None:
    """The run's reason once reaped: MEMORY_LIMIT where the OOM killer
    struck in its group and nothing else had stopped it first."""
    if reason is None and group.oom_kills() > 0:
        return ExitReason.MEMORY_LIMIT
    return reason


def memory_group(max_memory: object, mechanism: str) -> tuple[MemoryGroup | None, bool]:
    """A run's group, made before its spawn, and whether it was to have
    one (one that did and got none is sampled: :func:`run_protections`)."""
    if not kernel_memory(max_memory, mechanism):
        return None, False
    assert isinstance(max_memory, int)
    return MemoryGroup.make(max_memory), True


def run_protections(protections: Mapping[Subsystem, Protection], group: MemoryGroup | None,
                    expected: bool) -> Mapping[Subsystem, Protection]:
    """A run that was to have a group (``expected``) and got none is
    sampled by the watcher instead, and says so."""
    if expected and group is None and protections.get(Subsystem.RESOURCE_LIMITS) is \
            Protection.ACTIVE:
        protections = {**protections, Subsystem.RESOURCE_LIMITS: Protection.SAMPLED}
    return protections

