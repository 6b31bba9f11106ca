"""Helpers shared by the benchmarks: interleaved timing, medians, tables, verdicts.

Every benchmark measures its contenders side by side in one process, one call
of each per round, with the order rotated every round (A B C, B C A, C A B...)
so that the slow drift of a noisy machine (other tenants, frequency changes)
lands on every contender alike.  Figures are medians; ratios are ratios of
medians measured in the same run, never against numbers from another run.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

#: One timed call: an async callable whose awaiting is what gets measured.
Bench = Callable[[], Coroutine[Any, Any, object]]
#: Contender name -> wall-clock durations in seconds, one per round.
Samples = dict[str, list[float]]


def blocking(fn: Callable[[], object]) -> Bench:
    """Wrap a synchronous call (subprocess.run, sandlock) as a :data:`Bench`.

    It blocks the event loop while it runs, which is what a caller of a
    synchronous API gets too.
    """

    async def call() -> object:
        return fn()

    return call


async def interleave(contenders: Mapping[str, Bench], rounds: int, *,
                     warmup: int = 2, absorb: int = 0) -> Samples:
    """Time every contender once per round, rotating the order each round.

    ``absorb``: untimed calls of each contender just before its timed one.
    Use it when a contender leaves a cost behind that lands on whatever runs
    next: after a ``fork()`` the caller takes a page fault on each page it
    next writes (~500 faults, +30 % on a 1 ms spawn here).  The untimed call
    takes the previous contender's leftovers, and the timed call pays for
    its own contender's, as it would in a loop of that contender alone.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            await contenders[name]()
    samples: Samples = {name: [] for name in names}
    gc.collect()
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(absorb):
                await contenders[name]()
            start = time.perf_counter_ns()
            await contenders[name]()
            samples[name].append((time.perf_counter_ns() - start) / 1e9)
    return samples


def merge(into: Samples, more: Mapping[str, Sequence[float]], suffix: str = "") -> None:
    """Append ``more``'s samples to ``into`` (names get ``suffix``)."""
    for name, values in more.items():
        into.setdefault(name + suffix, []).extend(values)


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the spread printed next to a median)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def table(title: str, samples: Mapping[str, Sequence[float]], reference: str | None = None) -> None:
    """Print median, interquartile range and ratio to ``reference`` per contender."""
    print(f"\n  {title}")
    width = max(len(name) for name in samples) + 2
    ref = median(samples[reference]) if reference is not None else None
    head = f"    {'contender':<{width}}{'median ms':>11}{'p25-p75 ms':>20}{'n':>6}"
    if ref is not None:
        head += f"   x {reference}"
    print(head)
    for name, values in samples.items():
        lo, hi = quartiles(values)
        line = (f"    {name:<{width}}{fmt_ms(median(values)):>11}"
                f"{fmt_ms(lo) + '-' + fmt_ms(hi):>20}{len(values):>6}")
        if ref is not None:
            line += f"   {median(values) / ref:6.2f}x"
        print(line)


@dataclass(frozen=True, slots=True)
class Target:
    """``median(subject) / median(reference)`` must be at most/at least a bound."""

    label: str
    subject: str
    reference: str
    at_most: float | None = None
    at_least: float | None = None

    def ratio(self, samples: Mapping[str, Sequence[float]]) -> float:
        return median(samples[self.subject]) / median(samples[self.reference])

    def met(self, ratio: float) -> bool:
        if self.at_most is not None and ratio > self.at_most:
            return False
        return not (self.at_least is not None and ratio < self.at_least)

    def bound(self) -> str:
        parts = []
        if self.at_most is not None:
            parts.append(f"<= {self.at_most:g}x")
        if self.at_least is not None:
            parts.append(f">= {self.at_least:g}x")
        return " and ".join(parts)


@dataclass(slots=True)
class Report:
    """Verdicts collected over a run, printed again together at the end."""

    lines: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, target: Target, samples: Mapping[str, Sequence[float]]) -> bool:
        ratio = target.ratio(samples)
        ok = target.met(ratio)
        self.add(ok, f"{target.label}: {target.subject} / {target.reference} = {ratio:.2f}x "
                     f"(target {target.bound()})")
        return ok

    def add(self, ok: bool, text: str) -> None:
        self.lines.append((ok, text))
        print(f"    [{'ok' if ok else 'MISS'}] {text}")

    def summary(self) -> bool:
        print("\nSummary")
        for ok, text in self.lines:
            print(f"  [{'ok' if ok else 'MISS'}] {text}")
        missed = sum(not ok for ok, _ in self.lines)
        print(f"  {len(self.lines) - missed}/{len(self.lines)} targets met")
        return missed == 0


def parse_args(description: str, sections: Sequence[str] = ()) -> argparse.Namespace:
    """``--quick`` (a smoke run, fewer rounds), ``--backend`` and, given
    ``sections``, ``--only`` (a benchmark's named parts; ``args.only`` is
    every section when not given)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few rounds only (smoke run)")
    parser.add_argument("--backend", action="append", choices=("asyncio", "trio"),
                        help="run on this backend only (repeatable; default: both)")
    if sections:
        parser.add_argument("--only", action="append", choices=sections,
                            help="run this part only (repeatable; default: all)")
    args = parser.parse_args()
    if sections and not args.only:
        args.only = list(sections)
    return args


def thread_count() -> int:
    """Threads of this process, as the kernel counts them (C threads too)."""
    return len(os.listdir("/proc/self/task"))


def rss_mib() -> float:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_notes() -> str:
    """One line naming what the figures were measured on."""
    versions = ", ".join(f"{d} {_version(d)}" for d in ("anyio", "trio", "sandlock"))
    return (f"{os.cpu_count()} CPUs, Linux {platform.release()} {platform.machine()}, "
            f"Python {sys.version.split()[0]}, {versions}")


def banner(name: str, quick: bool, sandlock_installed: bool) -> None:
    """The lines a benchmark prints first: what it ran on and how to read it."""
    print(f"{name}{' --quick' if quick else ''}: {machine_notes()}")
    print("medians of interleaved rounds; ratios are between contenders of the same run")
    if not sandlock_installed:
        print("sandlock is not installed (pip install '.[bench]'): compared without it")
