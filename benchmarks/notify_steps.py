"""Where a notification's microseconds go, in the supervisor's process.

    .venv/bin/python benchmarks/notify_steps.py [--quick] [--backend asyncio|trio]
    BASELINE=<commit> .venv/bin/python benchmarks/notify_steps.py

Two measurements of the trivial handler of ``bench_notify.py``:

- **in the loop**: ``getpid_loop`` under that handler, with the pump's calls
  into C (``asl_notif_step``, ``asl_notif_continue``) wrapped in
  ``perf_counter_ns`` stamps, per notification: the C step (SEND, the
  child's run until it traps again, poll, RECV: the C floor's round trip),
  the Python of the pump between two steps (the wrappers' ~0.15 µs
  included), and the event loop's time between two pumps;
- **without the kernel**: :meth:`Supervisor.pump` on a listener that does
  not exist, its calls into C replaced by builtins that "receive" the same
  notification again, and the Python per notification of this tree (and
  of the ``BASELINE`` commit, in the same process, rounds interleaved),
  warm: the pump, the ``HandlerCtx``, the handler's step, the answer.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
from _baseline import load as load_baseline
from bench_notify import build_child, trivial

import asyncsandlock
from asyncsandlock import SYSTEM_READABLE, Sandbox, _supervisor

from _common import parse_args

STAMPS: Counter[str] = Counter()


def _stamped(fn: Callable[..., int]) -> Callable[..., int]:
    clock = time.perf_counter_ns

    def step(*args: Any) -> int:
        start = clock()
        rc = fn(*args)
        STAMPS["step"] += clock() - start
        STAMPS["received"] += rc == 1
        return rc

    return step


def in_the_loop(backend: str, n: int) -> None:
    """Stamps around the pump's calls into C, one run of ``n``."""
    pump = _supervisor.Supervisor.pump
    last = 0

    def stamped_pump(self: _supervisor.Supervisor) -> Any:
        nonlocal last
        start = time.perf_counter_ns()
        if last:
            STAMPS["between"] += start - last
        STAMPS["pumps"] += 1
        try:
            return pump(self)
        finally:
            last = time.perf_counter_ns()
            STAMPS["pump"] += last - start

    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        child = build_child(workdir)
        sandbox = Sandbox(fs_readable=[*SYSTEM_READABLE, workdir])
        saved = _supervisor._step, _supervisor._continue
        _supervisor._step, _supervisor._continue = map(_stamped, saved)
        _supervisor.Supervisor.pump = stamped_pump  # type: ignore[method-assign]
        handler = trivial(asyncsandlock)()

        async def run() -> None:
            await sandbox.run([child, str(n)], handlers=[handler], check=True)

        STAMPS.clear()
        try:
            start = time.perf_counter()
            anyio.run(run, backend=backend)
            wall = time.perf_counter() - start
        finally:
            _supervisor._step, _supervisor._continue = saved
            _supervisor.Supervisor.pump = pump  # type: ignore[method-assign]
    got = STAMPS["received"] or 1
    step, python = STAMPS["step"] / got / 1e3, (STAMPS["pump"] - STAMPS["step"]) / got / 1e3
    print(f"  {backend:<8}{n / wall:>10,.0f}/s  per notification: step {step:5.2f} µs, "
          f"Python {python:5.2f} µs, between pumps {STAMPS['between'] / got / 1e3:5.2f} µs "
          f"({STAMPS['pumps']} pumps)")


def without_the_kernel(package: ModuleType) -> Callable[[], float]:
    """A pump of ``package`` served by builtins; returns a timer of the
    Python per notification (ns)."""
    supervisor = importlib.import_module(f"{package.__name__}._supervisor")
    notify = importlib.import_module(f"{package.__name__}._kernel._notify")
    nr = importlib.import_module(f"{package.__name__}._kernel._sys").SYSCALLS["getpid"]
    fd = 1 << 20  # no such fd: nothing here reaches the kernel
    served = supervisor.Supervisor(fd, {nr: (trivial(package)(),)}, {nr: "getpid"}, lambda: None)
    listener = served._listener
    notify._NOTIF.pack_into(listener._buf, 0, 777, 100, 0, nr, 0xC000003E, 0x401000, *range(6))
    # What each tree calls into C with, "receiving" the same notification.
    received = {fd: 1}.get
    supervisor._continue = received
    supervisor._step = notify._step = lambda fd, *args: 1
    notify.Listener.respond = lambda *args: None
    pumps = 2000

    def timed() -> float:
        start = time.thread_time_ns()
        for _ in range(pumps):
            served.pump()
        return (time.thread_time_ns() - start) / (pumps * supervisor.BATCH)

    return timed


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    n = 20_000 if args.quick else 100_000
    print(f"In the loop: {n:,} trapped getpid(), trivial handler")
    for backend in args.backend or ["asyncio", "trio"]:
        in_the_loop(backend, n)
    trees: dict[str, ModuleType] = {"this tree": asyncsandlock}
    baseline = load_baseline()
    if baseline is not None:
        trees[baseline[0]] = baseline[1]
    # Timed after the runs: the builtins stand in for this tree's C steps.
    timers = {name: without_the_kernel(package) for name, package in trees.items()}
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(3 if args.quick else 7):
        for name, timed in timers.items():
            best[name] = min(best[name], timed())
    print("Without the kernel: Python per notification, best of the rounds")
    for name, ns in best.items():
        print(f"  {name:<12}{ns:>8,.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
