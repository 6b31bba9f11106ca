"""Event-loop latency while many runs start at once: asyncsandlock against anyio.

    .venv/bin/python benchmarks/bench_latency.py [--quick] [--backend asyncio|trio]

A spawn blocks the loop until the child execs (see ``asyncsandlock/_pacing.py``).
Here 500 runs of ``/bin/true`` are started at once in one task group while
another task sleeps 1 ms in a loop and records how late each wake-up is.
Contenders take turns round by round, the order rotated each round (see
``_common.py``): asyncsandlock's ``Sandbox.run``, ``anyio.run_process``, and
the sleeping task alone (what the loop does with nothing else to do).
Printed per contender: p50, p99 and max lateness over all wake-ups of all
rounds, and the median wall time of the 500 runs.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio

from asyncsandlock import DEVNULL, SYSTEM_READABLE, Sandbox

from _common import Report, fmt_ms, machine_notes, parse_args

TRUE = ["/bin/true"]
RUNS = 500
TICK = 0.001
#: The target for asyncsandlock: p99 lateness of the sleeping task.
P99_TARGET = 0.005

Start = Callable[[], Awaitable[object]]


async def _sleeper(lateness: list[float], stop: anyio.Event) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await anyio.sleep(TICK)
        lateness.append(time.perf_counter() - before - TICK)


async def burst(start: Start | None, runs: int) -> tuple[list[float], float]:
    """Lateness of a 1 ms sleeper while ``runs`` calls of ``start`` run at
    once (``start`` None: the sleeper alone, for as long as ~20 ms); and the
    wall time until the last call returned."""
    lateness: list[float] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as outer:
        outer.start_soon(_sleeper, lateness, stop)
        await anyio.sleep(0.005)  # the sleeper is in its loop before the burst
        began = time.perf_counter()
        if start is None:
            await anyio.sleep(0.02)
        else:
            async with anyio.create_task_group() as tg:
                for _ in range(runs):
                    tg.start_soon(start)
        wall = time.perf_counter() - began
        stop.set()
    return lateness, wall


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_backend(rounds: int, runs: int, report: Report, backend: str) -> None:
    sandbox = Sandbox(fs_readable=SYSTEM_READABLE)

    async def asl() -> object:
        result = await sandbox.run(TRUE)
        if result.returncode != 0:
            raise RuntimeError(f"asyncsandlock: {result}")
        return result

    async def anyio_run() -> object:
        return await anyio.run_process(TRUE, stdin=DEVNULL)

    contenders: dict[str, Start | None] = {"asyncsandlock": asl, "anyio.run_process": anyio_run,
                                           "sleeper alone": None}
    names = list(contenders)
    for name in names:  # warm-up: plans compiled, caches filled
        await burst(contenders[name], 20)
    late: dict[str, list[float]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            lateness, wall = await burst(contenders[name], runs)
            late[name] += lateness
            walls[name].append(wall)
    print(f"\n  {runs} runs of /bin/true started at once, a task sleeping 1 ms in a loop "
          f"({backend}, {rounds} rounds)")
    print(f"    {'contender':<20}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'wake-ups':>10}"
          f"{'wall ms':>10}")
    for name in names:
        values = late[name]
        print(f"    {name:<20}{fmt_ms(percentile(values, 0.5)):>9}"
              f"{fmt_ms(percentile(values, 0.99)):>9}{fmt_ms(max(values)):>9}"
              f"{len(values):>10}{fmt_ms(statistics.median(walls[name])):>10}")
    p99 = percentile(late["asyncsandlock"], 0.99)
    report.add(p99 <= P99_TARGET, f"p99 lateness {backend}: {p99 * 1e3:.2f} ms with {runs} "
                                  f"runs at once (target <= {P99_TARGET * 1e3:g} ms; "
                                  f"anyio.run_process: "
                                  f"{percentile(late['anyio.run_process'], 0.99) * 1e3:.1f} ms)")


def main() -> int:
    args = parse_args("Event-loop latency while many runs start at once.")
    rounds = 2 if args.quick else 7
    runs = 100 if args.quick else RUNS
    print(f"bench_latency{' --quick' if args.quick else ''}: {machine_notes()}")
    print("lateness over all wake-ups of interleaved rounds")
    report = Report()
    for backend in args.backend or ("asyncio", "trio"):
        anyio.run(run_backend, rounds, runs, report, backend, backend=backend)
    return 0 if report.summary() else 1


if __name__ == "__main__":
    sys.exit(main())
