"""The watcher: ``max_memory``, ``cpu_time`` and ``max_cpu`` of running
sandboxes, enforced from the caller's event loop.

Without a cgroup of its own (none can be had on a host whose cgroup v2
hierarchy is not delegated to us; see ``cgroup_v2_delegated``), a sandbox's
use of memory and CPU is only known by looking: one task per event loop,
started with the first sandbox that needs it and ended with the last, wakes
when the most pressing of them is due, reads what every watched sandbox uses
in one walk of ``/proc`` (``asl_scan_groups`` in ``csrc/group.c``: a
fraction of a millisecond), and acts:

- ``max_memory``: the resident pages of all the sandbox's processes together
  (``rss`` of each stat: anonymous, file and shared memory pages it has
  really touched; address space reserved and never touched counts nothing).
  Over the budget, the sandbox is killed with ``ExitReason.MEMORY_LIMIT``.
  The next look is due when a sandbox growing at :data:`GROWTH` could have
  used its headroom: rarely while it is far below, every
  :data:`MIN_INTERVAL` near the limit, so the overshoot is at most what it
  allocates in that time (measured: docs/limits.md).
- ``cpu_time``: the CPU seconds of its processes, those that ended included
  (a process's time moves into its parent's ``cutime`` when the parent reaps
  it, and the parent is a member too; one reaped by someone else -- an
  orphan, after its parent died -- is kept at what it had used when last
  seen).  Over the budget: killed with ``ExitReason.CPU_LIMIT``.
- ``max_cpu``: a token bucket of CPU time filled at the allowed share;
  when it runs dry the whole group is stopped (SIGSTOP, which no process
  can catch) until the bucket has refilled, then continued (SIGCONT).

Signals go to the process group only while the sandbox's first process is
not reaped (``alive()``): until then its pid, and so the group id, cannot
name any other process.  Everything here runs on the loop's thread between
two awaits, so that check and the signal that follows cannot be separated
by the reap.  A sandbox without a process group of its own (nested) cannot
be watched: its limits are reported unenforced (``_enforcement.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.lowlevel

from ._background import Background
from ._core import ffi, lib
from ._types import ExitReason

PAGE: Final = os.sysconf("SC_PAGE_SIZE")
HZ: Final = os.sysconf("SC_CLK_TCK")
#: The fastest a sandbox is assumed to take new memory, in bytes per second
#: (a C loop touching fresh pages here does 2-3 GiB/s on one core).
GROWTH: Final = 4 << 30
#: Bounds of the time between two looks at a sandbox, in seconds.
MIN_INTERVAL: Final = 0.005
MAX_INTERVAL: Final = 0.25
#: How often a sandbox under ``max_cpu`` is looked at while it runs: the
#: longest it can run above its share before it is stopped.
CPU_PERIOD: Final = 0.05


@dataclass(frozen=True, slots=True)
class Watched:
    """The limits of one run that the watcher enforces."""

    #: Bytes of resident memory of all the sandbox's processes together.
    memory: int | None
    #: Seconds of CPU of all its processes, the ended ones included.
    cpu_time: float | None
    #: Share of one core, as a fraction (0.25 for ``max_cpu=25``).
    cpu_share: float | None
    #: How many CPUs it may run on.
    cores: int


def _next(now: float, interval: float) -> float:
    """When a look ``interval`` seconds from ``now`` is due, brought forward
    onto a grid (5 ms times a power of two, at most the interval): sandboxes
    with like intervals fall due together and share one walk of /proc,
    rather than costing one each; a look is never later than asked."""
    interval = min(max(interval, MIN_INTERVAL), MAX_INTERVAL)
    grid = MIN_INTERVAL
    while grid * 2 <= interval:
        grid *= 2
    due = math.floor((now + interval) / grid) * grid
    return due if due > now else due + grid


class _Entry:
    """One watched sandbox."""

    __slots__ = ("alive", "cores", "cpu_due", "due", "last", "limits", "mem_due", "pgid",
                 "retired", "seen", "stop", "stopped", "ticks", "tokens")

    def __init__(self, pgid: int, limits: Watched, alive: Callable[[], bool],
                 stop: Callable[[ExitReason], None]) -> None:
        self.pgid = pgid
        self.limits = limits
        self.alive = alive
        self.stop = stop
        self.cores = limits.cores
        now = time.monotonic()
        # The first looks when the sandbox could first be over: a spawn
        # costs no walk of /proc (a short command never gets one).
        self.mem_due = math.inf if limits.memory is None else _next(now, limits.memory / GROWTH)
        self.cpu_due = math.inf
        if limits.cpu_share is not None:
            self.cpu_due = _next(now, CPU_PERIOD)
        elif limits.cpu_time is not None:
            self.cpu_due = _next(now, limits.cpu_time / self.cores)
        self.due = min(self.mem_due, self.cpu_due)
        #: pid -> (ticks, whether its parent was a member) when last seen.
        self.seen: dict[int, tuple[int, bool]] = {}
        #: Ticks of members that ended reaped by a process outside the sandbox.
        self.retired = 0
        self.ticks = 0
        self.last = now
        self.tokens = 0.0
        self.stopped = False

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)

    def update(self, members: list[Any], now: float, cpu: bool) -> None:
        """Act on what its processes use now (``members``: asl_member
        records; ``cpu``: with their CPU times, else their memory alone)."""
        limits = self.limits
        rss = sum(m.rss_pages for m in members) * PAGE
        if limits.memory is not None:
            if rss > limits.memory:
                self.finish(ExitReason.MEMORY_LIMIT)
                return
            self.mem_due = _next(now, (limits.memory - rss) / GROWTH)
        if cpu and not self.account_cpu(members, now):
            return
        self.due = min(self.mem_due, self.cpu_due)

    def account_cpu(self, members: list[Any], now: float) -> bool:
        """Account the CPU times in ``members``; False if it was stopped."""
        limits = self.limits
        live: dict[int, tuple[int, bool]] = {}
        pids = {m.pid for m in members}
        total = self.retired
        for m in members:
            total += m.ticks
            live[m.pid] = (m.ticks, m.ppid in pids)
        for pid, (ticks, parent_inside) in self.seen.items():
            # Gone: its parent, a member, reaped it and has its time in
            # cutime -- or an outsider did, and it is kept as last seen.
            if pid not in live and not parent_inside:
                self.retired += ticks
                total += ticks
        self.seen = live
        total = max(total, self.ticks)
        used = (total - self.ticks) / HZ
        elapsed = now - self.last
        self.ticks, self.last = total, now
        if limits.cpu_time is not None and total / HZ > limits.cpu_time:
            self.finish(ExitReason.CPU_LIMIT)
            return False
        interval = MAX_INTERVAL
        if limits.cpu_time is not None:
            interval = min(interval, (limits.cpu_time - total / HZ) / self.cores)
        if limits.cpu_share is not None:
            interval = min(interval, self.duty(used, elapsed))
        self.cpu_due = _next(now, interval)
        return True

    def duty(self, used: float, elapsed: float) -> float:
        """Stop or continue the group for ``max_cpu``; the time to the next look."""
        share = self.limits.cpu_share
        assert share is not None
        # At most one period's worth saved up: a sandbox idle for an hour
        # does not then get to run flat out for minutes.
        self.tokens = min(self.tokens + elapsed * share - used, CPU_PERIOD * share)
        if self.tokens < 0:
            if not self.stopped:
                self.signal(signal.SIGSTOP)
                self.stopped = True
            return -self.tokens / share
        if self.stopped:
            self.signal(signal.SIGCONT)
            self.stopped = False
        return CPU_PERIOD

    def finish(self, reason: ExitReason) -> None:
        self.stop(reason)  # SIGKILL ends stopped processes too


class _Watcher:
    """The watched sandboxes of one event loop, and its task."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.wake = anyio.Event()
        self.task: Background | None = None
        #: When the task is to wake next.
        self.until = 0.0
        self.room = 64
        self.out = ffi.new("struct asl_member[]", self.room)

    def add(self, entry: _Entry) -> None:
        self.entries.append(entry)
        if self.task is None or self.task.done:
            self.task = Background.start(self.serve, "asyncsandlock limits watcher")
        elif entry.due < self.until:
            self.wake.set()

    async def serve(self) -> None:
        while True:
            self.entries = [entry for entry in self.entries if entry.alive()]
            if not self.entries:
                return
            self.until = min(entry.due for entry in self.entries)
            delay = self.until - time.monotonic()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self.wake.wait()
                if self.wake.is_set():
                    self.wake = anyio.Event()
                    continue  # a new sandbox, due sooner than the others
            else:
                await anyio.lowlevel.checkpoint()
            try:
                self.look()
            except BaseException:
                # Fail closed: a sandbox nothing watches any more is stopped
                # rather than left to run past its limits.
                for entry in self.entries:
                    entry.finish(ExitReason.KILLED)
                raise

    def look(self) -> None:
        """Read every watched group's use (one /proc walk) and act on it."""
        now = time.monotonic()
        entries = [entry for entry in self.entries if entry.due <= now and entry.alive()]
        if not entries:
            return
        groups = sorted({entry.pgid for entry in entries})
        pgids = ffi.new("int32_t[]", groups)
        # CPU times (stat) only for those whose CPU look is due; memory
        # (statm, a third of the cost) for the others.
        cpu = {entry.pgid for entry in entries if entry.cpu_due <= now}
        want_cpu = ffi.new("uint8_t[]", [pgid in cpu for pgid in groups])
        while True:
            count = lib.asl_scan_groups(pgids, want_cpu, len(groups), self.out, self.room)
            if count < 0:
                raise OSError(-count, f"reading /proc: {os.strerror(-count)}")
            if count <= self.room:
                break
            self.room = count * 2
            self.out = ffi.new("struct asl_member[]", self.room)
        members: dict[int, list[Any]] = {pgid: [] for pgid in groups}
        for index in range(count):
            member = self.out[index]
            members[groups[member.group]].append(member)
        for entry in entries:
            entry.update(members[entry.pgid], now, entry.pgid in cpu)


def cgroup_v2_delegated() -> str | None:
    """The directory of a cgroup v2 group this process could give each
    sandbox a child of, with the ``memory`` and ``cpu`` controllers enabled
    for its children and writable by us; None where there is none (a cgroup
    v1 or hybrid host whose unified hierarchy has no controllers, or a group
    not delegated to us).  Only reads: it creates nothing.

    Not used to enforce anything yet (see docs/limits.md): it tells whether
    a cgroup backend could run here, for ``asyncsandlock check`` and tests.
    """
    try:
        with open("/proc/self/mountinfo") as mounts:
            # Field 5 is the mount point; the fstype follows the " - ".
            roots = [line.split()[4] for line in mounts
                     if line.partition(" - ")[2].split()[:1] == ["cgroup2"]]
        with open("/proc/self/cgroup") as groups:
            path = next((line.strip()[3:] for line in groups if line.startswith("0::")), None)
    except OSError:
        return None
    if not roots or path is None:
        return None
    directory = os.path.join(roots[0], path.lstrip("/"))
    try:
        with open(os.path.join(directory, "cgroup.subtree_control")) as control:
            enabled = control.read().split()
    except OSError:
        return None
    if {"memory", "cpu"} - set(enabled) or not os.access(directory, os.W_OK):
        return None
    return directory


_watchers: weakref.WeakKeyDictionary[object, _Watcher] = weakref.WeakKeyDictionary()


def watch_limits(pgid: int, limits: Watched, *, alive: Callable[[], bool],
          stop: Callable[[ExitReason], None]) -> None:
    """Enforce ``limits`` on process group ``pgid`` until ``alive()`` is
    false; ``stop(reason)`` kills the sandbox."""
    loop = anyio.lowlevel.current_token().native_token
    watcher = _watchers.get(loop)
    if watcher is None:
        watcher = _watchers[loop] = _Watcher()
    watcher.add(_Entry(pgid, limits, alive, stop))
