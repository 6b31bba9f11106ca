"""The watcher's accounting (``_watch.py``), on made-up samples."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any

import pytest

from asyncsandlock import Protection, Sandbox, _watch
from asyncsandlock._cgroup import probe_cgroup_v2
from asyncsandlock._core import ffi, lib
from asyncsandlock._limits import limits_protection
from asyncsandlock._types import ExitReason
from asyncsandlock._watch import (
    CPU_TIME_INTERVAL,
    GROWING_INTERVAL,
    HZ,
    MIN_INTERVAL,
    PAGE,
    Watched,
    _Entry,
    _next,
    _Watcher,
)


def _entry(**limits: object) -> tuple[_Entry, list[ExitReason]]:
    stopped: list[ExitReason] = []
    fields = {"memory": None, "cpu_time": None, "cpu_share": None, "cores": 1, **limits}
    return _Entry(12345, Watched(**fields), lambda: True, stopped.append), stopped  # type: ignore[arg-type]


def _m(pid: int, ppid: int, seconds: float = 0.0, rss: int = 0) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, ppid=ppid, ticks=int(seconds * HZ), rss_pages=rss // PAGE)


def test_an_orphan_reaped_outside_keeps_its_time() -> None:
    entry, stopped = _entry(cpu_time=1.0)
    entry.update([_m(10, 5, 0.1), _m(11, 1, 0.5)], 1.0, True)
    entry.update([_m(10, 5, 0.1)], 2.0, True)  # 11 was reaped by init
    assert stopped == []
    entry.update([_m(10, 5, 0.1), _m(12, 1, 0.5)], 3.0, True)
    assert stopped == [ExitReason.CPU_LIMIT]


def test_a_child_reaped_by_a_member_is_not_counted_twice() -> None:
    """Control: its time moves into the parent's cutime, and only there."""
    entry, stopped = _entry(cpu_time=1.0)
    entry.update([_m(10, 5, 0.1), _m(11, 10, 0.5)], 1.0, True)
    entry.update([_m(10, 5, 0.6)], 2.0, True)  # 10 reaped 11: cutime
    entry.update([_m(10, 5, 0.6), _m(12, 10, 0.3)], 3.0, True)
    assert stopped == []
    assert entry.ticks == int(0.6 * HZ) + int(0.3 * HZ)


def test_memory_is_the_sum_of_the_members() -> None:
    entry, stopped = _entry(memory=100 << 20)
    entry.update([_m(10, 5, rss=60 << 20)], 1.0, False)
    assert stopped == []
    entry.update([_m(10, 5, rss=60 << 20), _m(11, 10, rss=60 << 20)], 2.0, False)
    assert stopped == [ExitReason.MEMORY_LIMIT]


def test_looks_come_sooner_near_the_budget() -> None:
    far, _ = _entry(memory=1 << 30)
    near, _ = _entry(memory=1 << 30)
    far.update([_m(10, 5, rss=1 << 20)], 100.0, False)
    near.update([_m(10, 5, rss=(1 << 30) - (1 << 20))], 100.0, False)
    assert near.due - 100.0 <= 0.01 < far.due - 100.0


def test_looks_are_never_late_and_at_most_half_early() -> None:
    for now in (0.0, 1.2345, 99.999):
        for interval in (0.001, 0.005, 0.03, 0.1, 0.25, 5.0):
            soon, due = _next(now, interval)
            assert due == now + min(max(interval, 0.005), 0.25)
            assert soon == now + (due - now) / 2


def test_sandboxes_with_like_intervals_come_to_share_one_wake_up() -> None:
    """Two sandboxes looked at 0.1 s apart with 0.25 s intervals: the first
    wake-up (for the first) takes the second along, early, and from then on
    one wake-up serves both; one looked at more than half an interval apart
    is not taken early (a look is at most half an interval early)."""
    first, _ = _entry(memory=1 << 30)
    second, _ = _entry(memory=1 << 30)
    third, _ = _entry(memory=1 << 30)
    first.update([_m(10, 5, rss=1 << 20)], 100.0, False)
    second.update([_m(20, 5, rss=1 << 20)], 100.1, False)
    third.update([_m(30, 5, rss=1 << 20)], 100.2, False)
    wake = min(first.due, second.due, third.due)
    assert wake == first.due
    assert first.soon <= wake and second.soon <= wake < third.soon
    for entry in (first, second):
        entry.update([_m(10, 5, rss=1 << 20)], wake, False)
    assert first.due == second.due


def test_cpu_time_alone_is_looked_at_within_a_second() -> None:
    """A member reaped by an outsider is lost from the count after its last
    look: looks under a large cpu_time stay at most CPU_TIME_INTERVAL apart."""
    entry, _ = _entry(cpu_time=3600.0)
    entry.update([_m(10, 5, 0.1)], 100.0, True)
    assert entry.cpu_due == 100.0 + CPU_TIME_INTERVAL


def test_cgroup_detection_reads_only_and_says_why_not() -> None:
    """This host (cgroup v1 hybrid, no controllers on the unified hierarchy)
    has no delegated group; where one is found it must be a directory, and
    where none is the reason is told.  Nothing is created or written."""
    found = probe_cgroup_v2()
    assert (found.directory is None) != (found.reason == "")
    assert found.directory is None or os.path.isdir(found.directory)


_CGROUP = probe_cgroup_v2()


@pytest.mark.skipif(_CGROUP.directory is None,
                    reason=f"no delegated cgroup v2 group with memory and cpu: {_CGROUP.reason}")
def test_a_delegated_cgroup_is_still_sampled() -> None:
    """The cgroup backend is not built: the report must not claim it."""
    assert limits_protection(Sandbox(max_memory="1G")) is Protection.SAMPLED


def test_a_sandbox_growing_near_its_budget_is_looked_at_more_often() -> None:
    """Near the budget a growing sandbox is looked at every GROWING_INTERVAL
    (its overshoot is what it takes in that time); one holding still there
    every MIN_INTERVAL."""
    growing, _ = _entry(memory=100 << 20)
    still, _ = _entry(memory=100 << 20)
    for entry, second in ((growing, 99 << 20), (still, 98 << 20)):
        entry.update([_m(10, 5, rss=98 << 20)], 1.0, False)
        entry.update([_m(10, 5, rss=second)], 2.0, False)
    assert growing.due - 2.0 == pytest.approx(GROWING_INTERVAL)
    assert still.due - 2.0 == pytest.approx(MIN_INTERVAL)


@pytest.mark.anyio
async def test_new_members_are_found_by_probing_the_pids_handed_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the pids handed out since the last look are probed; one that
    named nothing yet is probed once more; /proc is walked when the pids
    have wrapped or too many were handed out to probe."""
    watcher = _Watcher()
    entry, _ = _entry(memory=1 << 30)
    watcher.groups = {entry.pgid: entry}
    watcher.cursor, watcher.walk_due = 101, math.inf
    probed: list[list[int]] = []
    walks: list[int] = []
    attached: list[int] = []
    last = [105]

    class FakeLib:
        @staticmethod
        def asl_probe_pids(pids: Any, count: int, pgids: Any, ngroups: int, out: Any) -> int:
            probed.append([pids[i] for i in range(count)])
            for i in range(count):  # 102 is a member; 104 is not attached yet
                out[i] = {102: 0, 104: -2}.get(pids[i], -1)
            return sum(pids[i] == 102 for i in range(count))

        @staticmethod
        def asl_scan_groups(*args: object) -> int:
            walks.append(1)
            return 0

    monkeypatch.setattr(_watch, "lib", FakeLib)
    monkeypatch.setattr(watcher, "last_pid", lambda: last[0])
    monkeypatch.setattr(watcher, "attach", lambda entry, pid: attached.append(pid))
    watcher.discover(1.0)
    assert probed == [[101, 102, 103, 104, 105]] and attached == [102] and not walks
    last[0] = 107
    watcher.discover(2.0)
    assert probed[-1] == [106, 107, 104] and not walks
    last[0] = 50  # wrapped at pid_max
    watcher.discover(3.0)
    assert walks == [1]
    last[0] = 50 + _watch.PROBE_MAX + 1
    watcher.discover(4.0)
    assert walks == [1, 1]


def test_the_c_schedule_of_memory_looks_is_entry_memory() -> None:
    """``asl_schedule_memory`` (the watcher's frequent looks, in C) applies
    the rule of :meth:`_Entry.memory` (its looks on the Python path): the
    same verdicts and the same next looks, far from the budget, near it
    growing or holding still, and over it."""
    budget = 64 << 20
    cases = [(1 << 20, 0), (1 << 20, 1 << 20), (budget - PAGE, budget - 2 * PAGE),
             (budget - PAGE, budget - PAGE), (budget - (1 << 20), 0), (budget, budget),
             (budget + PAGE, 0)]
    for rss, before in cases:
        in_c, _ = _entry(memory=budget, cores=2)
        in_py, stopped = _entry(memory=budget, cores=2)
        in_c.pages = in_py.pages = before // PAGE
        scheds = ffi.new("struct asl_schedule *[]", [in_c.sched])
        over = ffi.new("int32_t[]", 1)
        found = lib.asl_schedule_memory(scheds, ffi.new("uint8_t[]", [1]),
                                        ffi.new("uint64_t[]", [rss // PAGE]), 1, 100.0,
                                        MIN_INTERVAL, GROWING_INTERVAL, _watch.MAX_INTERVAL, over)
        in_py.memory(rss // PAGE, 100.0)
        assert found == len(stopped), (rss, before)
        got = (in_c.mem_soon, in_c.mem_due, in_c.soon, in_c.due, in_c.pages)
        assert got == pytest.approx((in_py.mem_soon, in_py.mem_due, in_py.soon, in_py.due,
                                     in_py.pages)), (rss, before)


def test_a_sandbox_that_did_not_run_is_charged_nothing_and_gets_its_share_back() -> None:
    """A look that read nothing (no process of the sandbox ran since the
    last: ``asl_skip_unchanged``) keeps its memory and CPU times as they
    were, and a group stopped for ``max_cpu`` is continued once its share
    has accrued (a stopped group never runs, so this is how it resumes)."""
    stopped: list[ExitReason] = []
    entry = _Entry(12345, Watched(64 << 20, 10.0, 0.5, 1), lambda: False, stopped.append)
    entry.last = 99.9
    entry.update([_m(10, 5, 0.2, rss=8 << 20)], 100.0, True)
    assert entry.stopped and entry.ticks == int(0.2 * HZ)
    entry.unchanged(100.5, True)
    assert not entry.stopped and entry.ticks == int(0.2 * HZ) and stopped == []
    assert entry.pages == (8 << 20) // PAGE and entry.cpu_due == 100.5 + _watch.CPU_PERIOD
