"""Notification throughput: asyncsandlock's syscall handlers against sandlock's.

    .venv/bin/python benchmarks/bench_notify.py [--quick] [--backend asyncio|trio]

The child (``getpid_loop.c``, compiled here with gcc) makes 100,000 raw
``getpid()`` calls; every one is trapped, and a trivial handler answers
``continue_()``.  Contenders, interleaved round by round in one process
(the order rotated each round, see ``_common.py``):

- asyncsandlock, ``async def handle`` on asyncio, and on Trio;
- sandlock 0.9 ``run_with_handlers`` with a Python ``Handler`` whose
  ``handle`` is a plain ``def`` (its fastest), and one whose ``handle`` is
  ``async def`` (what asyncsandlock's handlers are);
- asyncsandlock again without ``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP``, to
  show what that flag buys;
- the same round trips served by a loop in C (``notify_floor.c``: SEND,
  poll, RECV, with ``SYNC_WAKE_UP``; no Python, no event loop): the floor
  this machine sets today, which no supervisor in Python can beat;
- the same child with nothing trapped, for scale;
- with ``BASELINE=<commit>`` in the environment, the library at that
  commit on each backend, in this process (``_baseline.py``): an A/B
  comparison in the same minutes.

A figure is N / the median wall time of a whole run (one spawn, ~1 ms,
included), in notifications per second; next to it, the CPU time of this
process (user + system, ``getrusage``) per notification, the median of the
rounds: where the supervisor runs, and steadier than the wall time on a
loaded machine (the floor's is its supervisor's).  The threads of this process are
counted from inside the first handler call of each contender; the figure
printed is how many more there were than before the run (sandlock leaves
its threads behind, so the count before a run is not always 1).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
from _baseline import load as load_baseline

import asyncsandlock
from asyncsandlock import SYSTEM_READABLE, HandlerCtx, NotifAction, Sandbox
from asyncsandlock._kernel._notify import Listener
from asyncsandlock._kernel._sys import SYSCALLS

from _common import Report, Samples, Target, machine_notes, median, parse_args, thread_count

try:
    import sandlock  # type: ignore[import-untyped]
    import sandlock.handler  # type: ignore[import-untyped]
except ImportError:  # the bench extra is not installed: compare without it
    sandlock = None

HERE = os.path.dirname(os.path.abspath(__file__))
N = 100_000
QUICK_N = 20_000
FLOORS = {"asyncio": 80_000, "trio": 55_000}
SET_SYNC_WAKE_UP = Listener.set_sync_wake_up
#: One run: returns (seconds, threads seen by the handler, CPU seconds of
#: this process or of the floor's supervisor).  "Seen" is 0 when no handler ran.
Run = Callable[[], tuple[float, int, float]]


def build_child(workdir: str, name: str = "getpid_loop") -> str:
    out = os.path.join(workdir, name)
    subprocess.run(["gcc", "-O2", "-o", out, os.path.join(HERE, f"{name}.c")], check=True)
    return out


def trivial(package: ModuleType) -> Any:
    """The handler being measured, of ``package`` (this library, or the
    baseline's): one attribute check, then ``continue_()``."""

    class Trivial(package.Handler):  # type: ignore[misc, name-defined]
        syscalls = ("getpid",)

        def __init__(self) -> None:
            self.threads = 0

        async def handle(self, ctx: HandlerCtx) -> NotifAction:
            if not self.threads:
                self.threads = thread_count()
            return package.NotifAction.continue_()  # type: ignore[no-any-return]

    return Trivial


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def asyncsandlock_run(backend: str, sandbox: Sandbox, argv: list[str],
                      sync_wake_up: bool = True, package: ModuleType = asyncsandlock) -> Run:
    handler_class = trivial(package)

    def run() -> tuple[float, int, float]:
        handler = handler_class()
        if not sync_wake_up:  # measure what SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP buys
            Listener.set_sync_wake_up = lambda self: False  # type: ignore[method-assign]

        async def main() -> tuple[float, float]:
            start, start_cpu = time.perf_counter(), cpu()
            result = await sandbox.run(argv, handlers=[handler])
            elapsed, used = time.perf_counter() - start, cpu() - start_cpu
            if result.returncode != 0 or not result.stdout:
                raise RuntimeError(f"asyncsandlock on {backend}: {result}")
            return elapsed, used

        try:
            elapsed, used = anyio.run(main, backend=backend)
            return elapsed, handler.threads, used
        finally:
            Listener.set_sync_wake_up = SET_SYNC_WAKE_UP  # type: ignore[method-assign]

    return run


def sandlock_run(readable: list[str], argv: list[str], asynchronous: bool) -> Run:
    # sandlock resolves only the syscalls it filters by name; getpid is passed
    # by number (this machine's).
    nr = SYSCALLS["getpid"]

    class SyncTrivial(sandlock.handler.Handler):  # type: ignore[misc]
        threads = 0

        def handle(self, ctx: Any) -> Any:
            if not self.threads:
                self.threads = thread_count()
            return sandlock.handler.NotifAction.continue_()

    class AsyncTrivial(sandlock.handler.Handler):  # type: ignore[misc]
        threads = 0

        async def handle(self, ctx: Any) -> Any:
            if not self.threads:
                self.threads = thread_count()
            return sandlock.handler.NotifAction.continue_()

    def run() -> tuple[float, int, float]:
        handler = AsyncTrivial() if asynchronous else SyncTrivial()
        box = sandlock.Sandbox(fs_readable=readable)
        start, start_cpu = time.perf_counter(), cpu()
        result = box.run_with_handlers(argv, [(nr, handler)])
        elapsed, used = time.perf_counter() - start, cpu() - start_cpu
        if not result.success:
            raise RuntimeError(f"sandlock: {result}")
        return elapsed, handler.threads, used

    return run


def bare_run(sandbox: Sandbox, argv: list[str]) -> Run:
    def run() -> tuple[float, int, float]:
        async def main() -> tuple[float, float]:
            start, start_cpu = time.perf_counter(), cpu()
            await sandbox.run(argv, check=True)
            return time.perf_counter() - start, cpu() - start_cpu

        elapsed, used = anyio.run(main)
        return elapsed, 0, used

    return run


def floor_run(floor: str, n: int) -> Run:
    def run() -> tuple[float, int, float]:
        out = subprocess.run([floor, str(n)], check=True, capture_output=True, text=True)
        elapsed, per_notification = out.stdout.split()[:2]  # seconds, µs
        return float(elapsed), 0, float(per_notification) * n / 1e6

    return run


def measure(contenders: dict[str, Run],
            rounds: int) -> tuple[Samples, Samples, dict[str, int]]:
    """Wall times, CPU times and threads added, per contender."""
    names = list(contenders)
    samples: Samples = {name: [] for name in names}
    cpus: Samples = {name: [] for name in names}
    threads: dict[str, int] = {}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            before = thread_count()
            elapsed, seen, used = contenders[name]()
            samples[name].append(elapsed)
            cpus[name].append(used)
            if seen:
                threads[name] = max(threads.get(name, 0), seen - before)
            print(f"    round {index + 1}/{rounds} {name}: {elapsed:.3f} s", file=sys.stderr)
    return samples, cpus, threads


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    backends = args.backend or ["asyncio", "trio"]
    n = QUICK_N if args.quick else N
    rounds = 1 if args.quick else 3
    print(f"Notification throughput: {n:,} trapped getpid(), trivial handler; {rounds} rounds")
    print(f"  {machine_notes()}")
    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        child = build_child(workdir)
        readable = [*SYSTEM_READABLE, workdir]
        argv = [child, str(n)]
        sandbox = Sandbox(fs_readable=readable)
        contenders: dict[str, Run] = {
            f"asyncsandlock {b}": asyncsandlock_run(b, sandbox, argv) for b in backends}
        baseline = load_baseline()
        if baseline is not None:
            short, base = baseline
            base_box = base.Sandbox(fs_readable=readable)
            for b in backends:
                contenders[f"{short} {b}"] = asyncsandlock_run(b, base_box, argv, package=base)
        for b in backends:
            contenders[f"{b}, no SYNC_WAKE_UP"] = asyncsandlock_run(b, sandbox, argv, False)
        if sandlock is not None:
            contenders["sandlock def handle"] = sandlock_run(readable, argv, False)
            contenders["sandlock async def handle"] = sandlock_run(readable, argv, True)
        contenders["C loop, no Python (floor)"] = floor_run(build_child(workdir, "notify_floor"), n)
        contenders["nothing trapped"] = bare_run(sandbox, argv)
        samples, cpus, threads = measure(contenders, rounds)

    print(f"\n  {'contender':<30}{'notifications/s':>16}{'median s':>10}{'CPU µs/notif.':>15}"
          f"{'threads':>9}")
    for name, values in samples.items():
        rate = n / median(values)
        shown = f"+{threads[name]}" if name in threads else "-"
        print(f"  {name:<30}{rate:>16,.0f}{median(values):>10.3f}"
              f"{median(cpus[name]) / n * 1e6:>15.2f}{shown:>9}")

    report = Report()
    print()
    for backend in backends:
        name = f"asyncsandlock {backend}"
        rate = n / median(samples[name])
        report.add(rate >= FLOORS[backend],
                   f"{name}: {rate:,.0f} notifications/s (target >= {FLOORS[backend]:,})")
        report.add(threads[name] == 0, f"{name}: +{threads[name]} threads during the run "
                                       "(target +0)")
        report.check(Target(f"{backend} SYNC_WAKE_UP gain", f"{backend}, no SYNC_WAKE_UP", name,
                            at_least=1.0), samples)
        for other in ("sandlock def handle", "sandlock async def handle"):
            if other in samples:
                report.check(Target(f"{backend} vs {other}", other, name, at_least=5.0),
                             samples)
    return 0 if report.summary() else 1


if __name__ == "__main__":
    sys.exit(main())
