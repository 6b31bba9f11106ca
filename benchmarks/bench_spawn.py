"""Spawn benchmarks: asyncsandlock against anyio, subprocess and sandlock.

    .venv/bin/python benchmarks/bench_spawn.py [--quick] [--backend asyncio|trio]
                                               [--only concurrent|true|rss|programs]

Four measurements, each on asyncio and on Trio, contenders interleaved per
round in one process (see ``_common.py``):

1. ``await sb.run(["/bin/true"])`` with a typical policy, against
   ``anyio.run_process`` and ``subprocess.run``; then against sandlock's
   ``Sandbox.run`` in a rotation of their own (see ``versus_sandlock``);
2. the same with 1 GiB allocated and touched in the caller, against the
   small caller (a vfork-style spawn does not copy page tables);
3. 200 concurrent runs in one task group, against 200 concurrent
   ``anyio.run_process``; the caller's thread count during and after;
4. real programs (``python3 -c pass``, a ``find`` over the Python library)
   under the policy, against running them bare: what confinement costs.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from asyncsandlock import DEVNULL, SYSTEM_READABLE, Sandbox

from _common import (
    Bench,
    Report,
    Samples,
    Target,
    blocking,
    interleave,
    machine_notes,
    median,
    merge,
    parse_args,
    rss_mib,
    table,
    thread_count,
)

try:
    import sandlock  # type: ignore[import-untyped]
except ImportError:  # the bench extra is not installed: compare without it
    sandlock = None

TRUE = ["/bin/true"]
# The system Python: under SYSTEM_READABLE, and not a pyenv shim script.
PYTHON3 = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
PYTHON_PASS = [PYTHON3, "-c", "pass"]
FIND = [shutil.which("find") or "/usr/bin/find", *sorted(glob.glob("/usr/lib/python3*"))]
CONCURRENCY = 200
GIB = 1 << 30


class Rounds:
    """How many rounds each measurement gets (``--quick``: a smoke run)."""

    def __init__(self, quick: bool) -> None:
        self.true = 40 if quick else 300
        self.rss_cycles, self.rss_rounds = (1, 8) if quick else (3, 25)
        self.concurrent = 2 if quick else 15
        self.python = 6 if quick else 40
        self.find = 4 if quick else 25


class Contenders:
    """The callables being compared, built once per process."""

    def __init__(self, workdir: str) -> None:
        readable = list(SYSTEM_READABLE)
        if not PYTHON3.startswith("/usr/"):
            readable += [sys.base_prefix, sys.prefix]
        self.sandbox = Sandbox(fs_readable=readable, fs_writable=[workdir])
        self.sandlock: Any = None
        if sandlock is not None:
            self.sandlock = sandlock.Sandbox(fs_readable=readable, fs_writable=[workdir])

    def asl(self, cmd: Sequence[str], **kw: Any) -> Bench:
        async def call() -> object:
            result = await self.sandbox.run(cmd, **kw)
            if result.returncode != 0:
                raise RuntimeError(f"asyncsandlock {cmd[0]}: {result}")
            return result

        return call

    def anyio(self, cmd: Sequence[str], **kw: Any) -> Bench:
        async def call() -> object:
            return await anyio.run_process(cmd, **kw)

        return call

    def subprocess(self, cmd: Sequence[str], **kw: Any) -> Bench:
        return blocking(lambda: subprocess.run(cmd, check=True, **kw))

    def with_sandlock(self, cmd: Sequence[str]) -> dict[str, Bench]:
        """``{"sandlock": ...}``, or nothing when sandlock is not installed."""
        box = self.sandlock
        if box is None:
            return {}

        def call() -> object:
            result = box.run(list(cmd))
            if not result.success:
                raise RuntimeError(f"sandlock {cmd[0]}: {result}")
            return result

        return {"sandlock": blocking(call)}


def _noop() -> None:
    """A preexec_fn: it makes subprocess fork instead of vfork (for contrast)."""


# -- 1. /bin/true --------------------------------------------------------


async def bench_true(c: Contenders, rounds: Rounds, report: Report, backend: str) -> None:
    samples = await interleave({
        "asyncsandlock": c.asl(TRUE),
        "anyio.run_process": c.anyio(TRUE),
        "subprocess.run": c.subprocess(TRUE),
    }, rounds.true)
    table(f"1. run /bin/true, typical policy ({backend})", samples, "anyio.run_process")
    report.check(Target(f"/bin/true {backend}", "asyncsandlock", "anyio.run_process",
                        at_most=1.0), samples)
    await versus_sandlock(c, TRUE, rounds.true // 3, report, f"/bin/true {backend}",
                          speedup=4.0)


async def versus_sandlock(c: Contenders, cmd: Sequence[str], rounds: int, report: Report,
                          label: str, *, speedup: float | None = None) -> float | None:
    """asyncsandlock against sandlock, interleaved on their own; returns
    sandlock / asyncsandlock (None without sandlock).

    sandlock forks, which leaves its caller ~500 page faults to take on the
    pages it next writes; ``absorb`` keeps that on sandlock's own account
    instead of the next contender's.
    """
    sandlock_bench = c.with_sandlock(cmd)
    if not sandlock_bench:
        return None
    samples = await interleave({"asyncsandlock": c.asl(cmd), **sandlock_bench}, rounds,
                               warmup=1, absorb=1)
    table(f"   {label}: against sandlock", samples, "asyncsandlock")
    target = Target(f"{label} vs sandlock", "sandlock", "asyncsandlock", at_least=speedup)
    if speedup is not None:
        report.check(target, samples)
    return target.ratio(samples)


# -- 2. caller RSS -------------------------------------------------------


def _touch_gib() -> bytearray:
    """1 GiB the caller really owns: every page written, so it is resident."""
    buf = bytearray(GIB)
    buf[::4096] = b"\1" * (GIB // 4096)
    return buf


async def bench_rss(c: Contenders, rounds: Rounds, report: Report, backend: str) -> None:
    contenders = {
        "asyncsandlock": c.asl(TRUE),
        "anyio.run_process": c.anyio(TRUE),
        "subprocess.run": c.subprocess(TRUE),
        "subprocess.run (fork)": c.subprocess(TRUE, preexec_fn=_noop),
    }
    small: Samples = {}
    big: Samples = {}
    small_mib = big_mib = 0.0
    # Phases alternate small, big, small, big... so drift hits both alike.
    # absorb=1: the fork contender's page-fault aftermath stays its own.
    for _ in range(rounds.rss_cycles):
        small_mib = rss_mib()
        merge(small, await interleave(contenders, rounds.rss_rounds, warmup=1, absorb=1))
        buf = _touch_gib()
        big_mib = rss_mib()
        merge(big, await interleave(contenders, rounds.rss_rounds, warmup=1, absorb=1))
        del buf
    both: Samples = {}
    for name in contenders:
        both[f"{name}, small caller"] = small[name]
        both[f"{name}, +1 GiB caller"] = big[name]
    table(f"2. run /bin/true from a {small_mib:.0f} MiB and a {big_mib:.0f} MiB caller "
          f"({backend})", both, "asyncsandlock, small caller")
    for name in contenders:
        target = Target(f"RSS {backend} {name}", f"{name}, +1 GiB caller",
                        f"{name}, small caller", at_most=1.3)
        if name == "asyncsandlock":
            report.check(target, both)
        else:
            print(f"    (contrast) {name}: +1 GiB / small = {target.ratio(both):.2f}x")


# -- 3. 200 concurrent runs ----------------------------------------------


def _many(one: Bench) -> Bench:
    async def call() -> object:
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(one)
        return None

    return call


async def _threads_while(bench: Bench) -> tuple[int, int, int]:
    """Threads before, at most during, and after one call of ``bench``."""
    before = thread_count()
    peak = before
    done = anyio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, thread_count())
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        await bench()
        done.set()
    return before, peak, thread_count()


async def bench_concurrent(c: Contenders, rounds: Rounds, report: Report, backend: str) -> None:
    contenders = {
        f"asyncsandlock x{CONCURRENCY}": _many(c.asl(TRUE)),
        f"anyio.run_process x{CONCURRENCY}": _many(c.anyio(TRUE)),
    }
    # Threads first, before any contender could leave idle worker threads.
    threads = {name: await _threads_while(bench) for name, bench in contenders.items()}
    samples = await interleave(contenders, rounds.concurrent, warmup=1)
    table(f"3. {CONCURRENCY} concurrent runs of /bin/true in one task group ({backend})",
          samples, f"anyio.run_process x{CONCURRENCY}")
    for name, (before, peak, after) in threads.items():
        print(f"    threads of the caller, {name}: before {before}, during <= {peak}, "
              f"after {after}")
    report.check(Target(f"{CONCURRENCY} concurrent {backend}", f"asyncsandlock x{CONCURRENCY}",
                        f"anyio.run_process x{CONCURRENCY}",
                        at_most=1.0 if backend == "asyncio" else 1.5), samples)
    before, peak, after = threads[f"asyncsandlock x{CONCURRENCY}"]
    report.add(before == peak == after == 1,
               f"threads {backend}: asyncsandlock x{CONCURRENCY} before/during/after = "
               f"{before}/{peak}/{after} (target 1/1/1)")


# -- 4. real programs, confined vs bare ----------------------------------


async def bench_programs(c: Contenders, rounds: Rounds, report: Report, backend: str) -> None:
    cases: list[tuple[str, list[str], int, dict[str, Any]]] = [
        ("python3 -c pass", PYTHON_PASS, rounds.python, {}),
        (f"find {' '.join(FIND[1:])} >/dev/null", FIND, rounds.find, {"stdout": DEVNULL}),
    ]
    for title, cmd, n, kw in cases:
        samples = await interleave({
            "asyncsandlock": c.asl(cmd, **kw),
            "anyio.run_process (bare)": c.anyio(cmd, **kw),
            "subprocess.run (bare)": c.subprocess(cmd, **kw),
        }, n, warmup=1)
        table(f"4. {title}, typical policy vs bare ({backend})", samples,
              "anyio.run_process (bare)")
        label = f"{os.path.basename(cmd[0])} {backend}"
        report.check(Target(label, "asyncsandlock", "anyio.run_process (bare)", at_most=1.2),
                     samples)
        versus = await versus_sandlock(c, cmd, n, report, label)
        if versus is not None:
            asl = median(samples["asyncsandlock"]) / median(samples["subprocess.run (bare)"])
            print(f"    sandlock / subprocess.run (bare) ~ {versus * asl:.2f}x "
                  f"(sandlock / asyncsandlock x asyncsandlock / subprocess.run)")


# -- main ----------------------------------------------------------------

Section = Callable[[Contenders, Rounds, Report, str], Awaitable[None]]
# The concurrency part goes first: its thread counts must be taken before any
# contender could have left idle worker threads behind.
SECTIONS: dict[str, Section] = {"concurrent": bench_concurrent, "true": bench_true,
                                "rss": bench_rss, "programs": bench_programs}


async def run_backend(c: Contenders, rounds: Rounds, report: Report, backend: str,
                      only: Sequence[str]) -> None:
    print(f"\n== {backend} ==")
    for name, section in SECTIONS.items():
        if name in only:
            await section(c, rounds, report, backend)


def main() -> int:
    args = parse_args("Spawn benchmarks: asyncsandlock against anyio, subprocess and sandlock.",
                      tuple(SECTIONS))
    rounds = Rounds(args.quick)
    print(f"bench_spawn{' --quick' if args.quick else ''}: {machine_notes()}")
    print("medians of interleaved rounds; ratios are between contenders of the same run")
    if sandlock is None:
        print("sandlock is not installed (pip install '.[bench]'): compared without it")
    report = Report()
    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o777)
        contenders = Contenders(workdir)
        for backend in args.backend or ("asyncio", "trio"):
            anyio.run(run_backend, contenders, rounds, report, backend, args.only,
                      backend=backend)
    report.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
