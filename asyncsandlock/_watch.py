"""The watcher: ``max_memory``, ``cpu_time`` and ``max_cpu`` of running
sandboxes, enforced from the caller's event loop.

Without a cgroup of its own (none can be had on a host whose cgroup v2
hierarchy is not delegated to us; see ``_cgroup.py``), a sandbox's
use of memory and CPU is only known by looking: one task per event loop,
started with the first sandbox that needs it and ended with the last, wakes
when the most pressing of them is due, reads in one call into the C core
(``csrc/group.c``) what every sandbox whose look may be made then uses, and
acts.  Each sandbox's processes (its members: its process group, which
nothing inside can leave) are kept with fds held on their ``/proc`` statm
and stat files, read again from offset 0 at each look; new members are found
by probing the pids handed out since the last look (``discover``), with a
walk of ``/proc`` as a net every :data:`WALK_INTERVAL` seconds.

- ``max_memory``: the resident pages of all the sandbox's processes together
  (``rss``: anonymous, file and shared memory pages it has really touched;
  address space reserved and never touched counts nothing).
  Over the budget, the sandbox is killed with ``ExitReason.MEMORY_LIMIT``.
  The next look is due when a sandbox growing at :data:`GROWTH` could have
  used its headroom: rarely while it is far below, every
  :data:`MIN_INTERVAL` near the limit (:data:`GROWING_INTERVAL` while it
  grows there), so the overshoot is at most what it allocates in that time
  (measured: docs/limits.md).
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
import resource
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

import anyio
import anyio.lowlevel

from ._background import Background
from ._core import ffi, lib
from ._fd import close_fd
from ._types import ExitReason

T = TypeVar("T")

PAGE: Final = os.sysconf("SC_PAGE_SIZE")
#: ``struct asl_schedule``'s budget of a sandbox without ``max_memory``.
_NO_BUDGET: Final = (1 << 64) - 1
HZ: Final = os.sysconf("SC_CLK_TCK")
#: The fastest a sandbox is assumed to take new memory, in bytes per second,
#: with transparent huge pages off (``max_memory`` turns them off:
#: ``_limits.huge_pages_off``): 4 KiB pages made resident on this 2-core
#: host at up to 3.7 GiB/s by two threads (MAP_POPULATE or
#: MADV_POPULATE_WRITE; touching each page: 2.9), 2.2 GiB/s by one
#: (``bench_limits.py --only fill``, docs/limits.md); huge pages did 11.
GROWTH: Final = 4 << 30
#: The same per core: a sandbox bound to fewer cores (``cpu_cores``) is
#: assumed to take at most this much a second on each.
GROWTH_PER_CORE: Final = 5 << 29
#: Bounds of the time between two looks at a sandbox, in seconds.
MIN_INTERVAL: Final = 0.005
#: The shortest, for a sandbox growing near its memory budget.
GROWING_INTERVAL: Final = 0.001
MAX_INTERVAL: Final = 0.25
#: How often a sandbox under ``max_cpu`` is looked at while it runs: the
#: longest it can run above its share before it is stopped.
CPU_PERIOD: Final = 0.05
#: The longest time between two looks at a sandbox's CPU time (under
#: ``cpu_time`` alone, looks are due when its remaining seconds could be
#: spent on all its cores): what a member reaped by an outsider may have
#: used unseen since the last look (docs/limits.md).
CPU_TIME_INTERVAL: Final = 1.0
#: Most pids handed out since the last look that are probed one by one;
#: more, and /proc is walked instead (about the same cost).
PROBE_MAX: Final = 1024
#: /proc is walked at least this often (seconds) while anything is watched,
#: whatever the probes found: a net under them.
WALK_INTERVAL: Final = 2.0
#: Most fds the watcher holds on members' /proc files (and at most a
#: quarter of RLIMIT_NOFILE); members beyond are read by path.
FD_BUDGET: Final = 1024


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


def _next(now: float, interval: float, early: float = 0.5, longest: float = MAX_INTERVAL,
          shortest: float = MIN_INTERVAL) -> tuple[float, float]:
    """When a look ``interval`` seconds from ``now`` may be made, and when it
    is due: never later than asked, and taken up to half the interval early
    when the watcher wakes for another sandbox anyway.  Half is what makes
    sandboxes with like intervals fall due together for good (two groups
    of them half an interval apart or less are merged at the first wake-up
    of either), so one wake-up serves them all and each is looked at no
    more often than its interval once they have.  ``early``: the part of
    the interval it may be taken early (a CPU look of a sandbox whose
    memory is watched takes a quarter: its memory looks wake the watcher
    anyway, and a stat costs three statm); ``longest``, ``shortest``: the
    most and the least it may be."""
    # Comparisons, not min() and max(): this runs at every look.
    if interval < shortest:
        interval = shortest
    elif interval > longest:
        interval = longest
    return now + interval * (1 - early), now + interval


class _Scheduled(Generic[T]):
    """An attribute of :class:`_Entry` kept in its C schedule (``struct
    asl_schedule``, ``entry.sched``), which the C core reads and updates
    for the watcher's most frequent looks (``asl_schedule_memory``)."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, entry: Any, owner: type | None = None) -> T:
        return cast(T, getattr(entry.sched, self.name))

    def __set__(self, entry: Any, value: T) -> None:
        setattr(entry.sched, self.name, value)


class _Entry:
    """One watched sandbox."""

    __slots__ = ("alive", "budget", "cores", "cpu_early", "last", "limits", "members",
                 "per_page", "pgid", "retired", "sched", "seen", "stop", "stopped", "ticks",
                 "tokens", "wants_cpu")

    #: When the next look at its memory, and at its CPU, may be made and is
    #: due, and the earlier of each; its resident pages at the last look.
    mem_soon: _Scheduled[float] = _Scheduled()
    mem_due: _Scheduled[float] = _Scheduled()
    cpu_soon: _Scheduled[float] = _Scheduled()
    cpu_due: _Scheduled[float] = _Scheduled()
    soon: _Scheduled[float] = _Scheduled()
    due: _Scheduled[float] = _Scheduled()
    pages: _Scheduled[int] = _Scheduled()

    def __init__(self, pgid: int, limits: Watched, alive: Callable[[], bool],
                 stop: Callable[[ExitReason], None]) -> None:
        self.pgid = pgid
        self.limits = limits
        self.alive = alive
        self.stop = stop
        self.cores = limits.cores
        now = time.monotonic()
        #: The memory budget in pages (None: no budget), and the seconds a
        #: sandbox growing as fast as it can takes to fill one page.
        self.budget = None if limits.memory is None else limits.memory // PAGE
        self.per_page = PAGE / min(GROWTH, GROWTH_PER_CORE * limits.cores)
        self.sched = ffi.new("struct asl_schedule *")
        self.sched.budget = _NO_BUDGET if self.budget is None else self.budget
        self.sched.per_page = self.per_page
        # The first looks when the sandbox could first be over: a spawn
        # costs no walk of /proc (a short command never gets one).
        self.mem_soon = self.mem_due = self.cpu_soon = self.cpu_due = math.inf
        if self.budget is not None:
            self.mem_soon, self.mem_due = _next(now, self.budget * self.per_page)
        self.cpu_early = 0.5 if limits.memory is None else 0.25
        if limits.cpu_share is not None:
            self.cpu_soon, self.cpu_due = _next(now, CPU_PERIOD, self.cpu_early)
        elif limits.cpu_time is not None:
            self.cpu_soon, self.cpu_due = _next(now, limits.cpu_time / self.cores, self.cpu_early,
                                                CPU_TIME_INTERVAL)
        self.sched.soon = min(self.mem_soon, self.cpu_soon)
        self.sched.due = min(self.mem_due, self.cpu_due)
        #: pid -> (ticks, whether its parent was a member) when last seen.
        self.seen: dict[int, tuple[int, bool]] = {}
        #: Ticks of members that ended reaped by a process outside the sandbox.
        self.retired = 0
        self.ticks = 0
        self.last = now
        self.tokens = 0.0
        self.stopped = False
        #: pid -> fds held on its /proc statm and stat files (-1: none).
        self.members: dict[int, tuple[int, int]] = {}
        self.wants_cpu = limits.cpu_share is not None or limits.cpu_time is not None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)

    def update(self, members: list[Any], now: float, cpu: bool) -> None:
        """Act on what its processes use now (``members``: asl_member
        records; ``cpu``: with their CPU times, else their memory alone)."""
        if not self.memory(sum(m.rss_pages for m in members), now):
            return
        if cpu and not self.account_cpu(members, now):
            return
        self.soon = min(self.mem_soon, self.cpu_soon)
        self.due = min(self.mem_due, self.cpu_due)

    def unchanged(self, now: float, cpu: bool) -> None:
        """Act on a look at a sandbox none of whose processes ran since the
        last one (``asl_skip_unchanged``): its memory and CPU times are as
        they were then (``cpu``: its CPU look was due too; a group stopped
        for ``max_cpu`` gets its share back here)."""
        if not self.memory(self.pages, now):
            return
        if cpu and not self.charge(self.ticks, now):
            return
        self.soon = min(self.mem_soon, self.cpu_soon)
        self.due = min(self.mem_due, self.cpu_due)

    def memory(self, pages: int, now: float) -> bool:
        """Act on ``pages`` resident in all; False if it was stopped.

        The watcher's most frequent call, once per look at every sandbox
        under ``max_memory``: kept to plain arithmetic (what ``_next`` does,
        inline; no min() calls), in pages."""
        budget = self.budget
        if budget is not None:
            if pages > budget:
                self.finish(ExitReason.MEMORY_LIMIT)
                return False
            # Within MIN_INTERVAL of the budget at GROWTH, a sandbox that
            # grew since the last look is looked at every GROWING_INTERVAL:
            # its overshoot is what it takes in that time (it is about to
            # be stopped, or to stop growing, so it does not cost long); one
            # that holds still there every MIN_INTERVAL.
            interval = (budget - pages) * self.per_page
            if interval < MIN_INTERVAL:
                if pages <= self.pages:
                    interval = MIN_INTERVAL
                elif interval < GROWING_INTERVAL:
                    interval = GROWING_INTERVAL
            elif interval > MAX_INTERVAL:
                interval = MAX_INTERVAL
            self.pages = pages
            self.mem_due = due = now + interval
            self.mem_soon = soon = now + interval * 0.5
            self.soon = soon if soon < self.cpu_soon else self.cpu_soon
            self.due = due if due < self.cpu_due else self.cpu_due
        return True

    def account_cpu(self, members: list[Any], now: float) -> bool:
        """Account the CPU times in ``members``; False if it was stopped."""
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
        return self.charge(max(total, self.ticks), now)

    def charge(self, total: int, now: float) -> bool:
        """Act on ``total`` ticks used in all; False if it was stopped."""
        limits = self.limits
        used = (total - self.ticks) / HZ
        elapsed = now - self.last
        self.ticks, self.last = total, now
        if limits.cpu_time is not None and total / HZ > limits.cpu_time:
            self.finish(ExitReason.CPU_LIMIT)
            return False
        interval = longest = CPU_TIME_INTERVAL
        if limits.cpu_time is not None:
            interval = min(interval, (limits.cpu_time - total / HZ) / self.cores)
        if limits.cpu_share is not None:
            interval = min(interval, self.duty(used, elapsed))
            longest = MAX_INTERVAL
        self.cpu_soon, self.cpu_due = _next(now, interval, self.cpu_early, longest)
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
        #: Every member of every entry, in the arrays the C core reads (pids,
        #: statm fds, stat fds, index of its entry in self.entries, CPU clock
        #: at the last look), with where each entry's members start; None
        #: once members or entries change.
        self.table: tuple[Any, Any, Any, Any, Any, list[int]] | None = None
        #: The entries' C schedules (``struct asl_schedule *[]``) and the arrays
        #: of a look (want, rss, over: see :meth:`look`); None once entries change.
        self.scheds: tuple[Any, Any, Any, Any] | None = None
        #: pgid -> entry, and its keys sorted (for the C calls), rebuilt on change.
        self.groups: dict[int, _Entry] = {}
        self.sorted_groups: Any = None
        self.wake = anyio.Event()
        self.task: Background | None = None
        #: When the task is to wake next.
        self.until = 0.0
        self.room = 64
        self.out = ffi.new("struct asl_member[]", self.room)
        #: The fd of /proc/sys/kernel/ns_last_pid while the task runs (-1: none;
        #: opened when it is started, closed by it when it ends).
        self.last_pid_fd = -1
        #: The next pid not yet probed; None: unknown (walk /proc instead).
        self.cursor: int | None = None
        #: Pids that named nothing when last probed, to probe again once.
        self.pending: list[int] = []
        #: When /proc is next walked whatever the probes found.
        self.walk_due = 0.0
        #: fds held on members' /proc files, and how many may be.
        self.held = 0
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_budget = FD_BUDGET if soft == resource.RLIM_INFINITY else min(FD_BUDGET, soft // 4)

    def add(self, entry: _Entry) -> None:
        self.entries.append(entry)
        self.table = self.scheds = None
        self.groups[entry.pgid] = entry
        self.sorted_groups = None
        # The leader is ours until it is reaped (on this thread, later).
        self.attach(entry, entry.pgid)
        if self.task is None or self.task.done:
            self.start(entry.pgid)
        elif self.cursor is not None:
            # Its children may have been forked already: probe from its pid
            # on (pids are handed out in rising order until they wrap).
            back = self.cursor - (entry.pgid + 1)
            if 0 < back <= PROBE_MAX:
                self.cursor = entry.pgid + 1
            elif abs(back) > PROBE_MAX:
                self.walk_due = 0.0
            if entry.due < self.until:
                self.wake.set()
        elif entry.due < self.until:
            self.wake.set()

    def start(self, first: int) -> None:
        """Start the task, for a first sandbox whose leader is pid ``first``."""
        try:
            self.last_pid_fd = os.open("/proc/sys/kernel/ns_last_pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.last_pid_fd = -1  # no probing: /proc is walked at every look
        # Its children have pids above its own (a wrap since is seen at the
        # first look: the last pid is then below it).
        self.cursor = first + 1
        self.walk_due = time.monotonic() + WALK_INTERVAL
        try:
            self.task = Background.start(self.serve, "asyncsandlock limits watcher")
        except BaseException:
            fd, self.last_pid_fd = self.last_pid_fd, -1
            close_fd(fd, watched=False)
            raise

    def attach(self, entry: _Entry, pid: int) -> None:
        """Make ``pid``, found in ``entry``'s group, one of its members, with
        fds held on its /proc files while the budget lasts (-1: read by path)."""
        if pid in entry.members:
            return
        fds = [-1, -1]
        for index, name in enumerate(("statm", "stat") if entry.wants_cpu else ("statm",)):
            if self.held >= self.fd_budget:
                break
            try:
                fds[index] = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                for fd in fds:
                    self.release(fd)
                return  # gone already (reaped): nothing to watch
            except OSError:
                break  # out of fds: read by path
            self.held += 1
        entry.members[pid] = (fds[0], fds[1])
        self.table = None

    def release(self, fd: int) -> None:
        if fd >= 0:
            self.held -= 1
            close_fd(fd, watched=False)

    def detach(self, entry: _Entry, pid: int) -> None:
        for fd in entry.members.pop(pid, ()):
            self.release(fd)
        self.table = None

    def drop(self, entry: _Entry) -> None:
        for pid in list(entry.members):
            self.detach(entry, pid)
        if self.groups.get(entry.pgid) is entry:
            del self.groups[entry.pgid]
            self.sorted_groups = None

    async def serve(self) -> None:
        try:
            await self._serve()
        finally:
            for entry in self.entries:
                self.drop(entry)
            self.entries = []
            self.pending.clear()
            fd, self.last_pid_fd = self.last_pid_fd, -1
            close_fd(fd, watched=False)

    async def _serve(self) -> None:
        while True:
            try:
                delay = self.next_wake()
            except BaseException:
                self.fail_closed()
                raise
            if delay is None:
                return
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
                self.fail_closed()
                raise

    def next_wake(self) -> float | None:
        """Drop the entries whose run has ended; the seconds until the next
        look is due (None: nothing is left to watch)."""
        live = []
        for entry in self.entries:
            if entry.alive():
                live.append(entry)
            else:
                self.drop(entry)
        if len(live) != len(self.entries):
            self.entries = live
            self.table = self.scheds = None
        if not self.entries:
            return None
        self.until = lib.asl_next_due(self.schedules()[0], len(self.entries))
        return self.until - time.monotonic()

    def fail_closed(self) -> None:
        """A sandbox nothing watches any more is stopped rather than left to
        run past its limits."""
        for entry in self.entries:
            entry.finish(ExitReason.KILLED)

    def pgids(self) -> Any:
        if self.sorted_groups is None:
            self.sorted_groups = ffi.new("int32_t[]", sorted(self.groups))
        return self.sorted_groups

    def last_pid(self) -> int | None:
        """The pid handed out last in our pid namespace, or None."""
        if self.last_pid_fd < 0:
            return None
        try:
            return int(os.pread(self.last_pid_fd, 32, 0))
        except (OSError, ValueError):
            return None

    def discover(self, now: float) -> None:
        """Attach the processes forked into a watched group since the last look.

        Every process gets the next free pid above the one handed out last
        (``ns_last_pid``) until they wrap at ``pid_max``, so a new member's
        pid is one of those handed out since the last look: each is probed
        (``getpgid``, well under a microsecond) instead of walking all of
        /proc.  A pid handed out but not yet attached to its process
        (``fork`` takes it early) names nothing for a moment, so one that
        names nothing is probed again at the next look.  /proc is
        walked still when the pids have wrapped, when too many were handed
        out to probe for less, or every :data:`WALK_INTERVAL` seconds
        whatever the probes said.
        """
        last = self.last_pid()
        walk = now >= self.walk_due or last is None or self.cursor is None
        fresh: list[int] = []
        if last is not None and self.cursor is not None:
            if not 0 <= last + 1 - self.cursor <= PROBE_MAX:
                walk = True  # wrapped, or too many since
            else:
                fresh = list(range(self.cursor, last + 1))
        self.cursor = None if last is None else last + 1
        candidates, self.pending = fresh + self.pending, []
        if candidates:
            pgids = self.pgids()
            result = ffi.new("int32_t[]", len(candidates))
            members = lib.asl_probe_pids(ffi.new("int32_t[]", candidates), len(candidates),
                                         pgids, len(self.groups), result)
            found = ffi.unpack(result, len(candidates))
            # Those of this look that named nothing, once more at the next.
            self.pending = [pid for pid, group in zip(fresh, found, strict=False) if group == -2]
            if members:
                for pid, group in zip(candidates, found, strict=True):
                    if group >= 0:
                        self.attach(self.groups[pgids[group]], pid)
        if walk:
            self.walk_due = now + WALK_INTERVAL
            self.walk()

    def walk(self) -> None:
        """Attach every process of a watched group, from one walk of /proc."""
        pgids = self.pgids()
        count = len(self.groups)
        want_cpu = ffi.new("uint8_t[]", [2] * count)  # the pids alone
        while True:
            found = lib.asl_scan_groups(pgids, want_cpu, count, self.out, self.room)
            if found < 0:
                raise OSError(-found, f"reading /proc: {os.strerror(-found)}")
            if found <= self.room:
                break
            self.room = found * 2
            self.out = ffi.new("struct asl_member[]", self.room)
        for index in range(found):
            member = self.out[index]
            self.attach(self.groups[pgids[member.group]], member.pid)

    def members_table(self) -> tuple[Any, Any, Any, Any, Any, list[int]]:
        """The arrays of :attr:`table`, and where each entry's members start
        in them (one more: the end)."""
        if self.table is None:
            pids: list[int] = []
            statm: list[int] = []
            stat: list[int] = []
            owner: list[int] = []
            starts: list[int] = []
            for index, entry in enumerate(self.entries):
                starts.append(len(pids))
                for pid, (statm_fd, stat_fd) in entry.members.items():
                    pids.append(pid)
                    statm.append(statm_fd)
                    stat.append(stat_fd)
                    owner.append(index)
            starts.append(len(pids))
            if len(pids) > self.room:
                self.room = len(pids) * 2
                self.out = ffi.new("struct asl_member[]", self.room)
            # The clocks start at 0: the first look after a change reads all.
            self.table = (ffi.new("int32_t[]", pids), ffi.new("int32_t[]", statm),
                          ffi.new("int32_t[]", stat), ffi.new("int32_t[]", owner),
                          ffi.new("uint64_t[]", len(pids)), starts)
        return self.table

    def schedules(self) -> tuple[Any, Any, Any, Any]:
        """:attr:`scheds`, built for the current entries if need be."""
        if self.scheds is None:
            count = len(self.entries)
            self.scheds = (ffi.new("struct asl_schedule *[]", [e.sched for e in self.entries]),
                           ffi.new("uint8_t[]", count), ffi.new("uint64_t[]", count),
                           ffi.new("int32_t[]", count))
        return self.scheds

    def look(self) -> None:
        """Find new members, read the use of every sandbox whose look may be
        made now (one call into the C core for all), and act on it.

        The most frequent look by far, at memory alone with no member
        reaped, is scheduled in C as well (``asl_schedule_memory``, the rule
        of :meth:`_Entry.memory`): Python sees only the sandboxes over their
        budget.  CPU looks, and every look of a wake-up that found a member
        reaped, take the Python path."""
        now = time.monotonic()
        entries = self.entries
        count = len(entries)
        scheds, want, rss, over = self.schedules()
        # want[i] 0: not now; 1: memory (statm, a third of the cost of
        # stat); 2: CPU times too (stat), for those whose CPU look may be made.
        if not lib.asl_due(scheds, count, now, want):
            return
        self.discover(now)
        pids, statm, stat, owner, clocks, starts = self.members_table()
        # A sandbox none of whose processes ran since its last look has the
        # memory and CPU times it had then: want 3 (4 for a CPU look),
        # nothing read (asl_skip_unchanged says why).
        lib.asl_skip_unchanged(pids, owner, clocks, starts[-1], want)
        reaped = lib.asl_read_usage(pids, statm, stat, owner, want, starts[-1], count,
                                    self.out, rss)
        wanted = ffi.buffer(want, count)[:]
        if not reaped:
            for index in range(lib.asl_schedule_memory(scheds, want, rss, count, now,
                                                       MIN_INTERVAL, GROWING_INTERVAL,
                                                       MAX_INTERVAL, over)):
                entry = entries[over[index]]
                if entry.alive():
                    entry.finish(ExitReason.MEMORY_LIMIT)
            if 2 not in wanted and lib.ASL_WANT_UNCHANGED_CPU not in wanted:
                return
        pages = ffi.unpack(rss, count)
        out = self.out
        for index, what in enumerate(wanted):
            if what == 0 or (what in (1, lib.ASL_WANT_UNCHANGED) and not reaped):
                continue  # not looked at, or done in C above
            entry = entries[index]
            if not entry.alive():
                continue  # dropped at the next wake-up
            if what >= lib.ASL_WANT_UNCHANGED:
                entry.unchanged(now, what == lib.ASL_WANT_UNCHANGED_CPU)
                continue
            members = []
            for i in range(starts[index], starts[index + 1]):
                member = out[i]
                if member.ended == 2:
                    self.detach(entry, member.pid)  # reaped: its fds name no one now
                else:
                    members.append(member)
            if what == 1:
                entry.memory(pages[index], now)
            else:
                entry.update(members, now, True)


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
