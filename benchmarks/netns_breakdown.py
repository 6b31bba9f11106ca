"""Where the time of ``Sandbox(network=...)`` goes, phase by phase, as the caller sees it.

    .venv/bin/python benchmarks/netns_breakdown.py [--quick] [--backend asyncio|trio]

``await sb.run(["/bin/true"])`` with ``network="host"``, ``"loopback"``,
``"loopback"`` without the pool, ``"loopback"`` with ``publish`` and
``"uplink"``, interleaved per round
(see ``_common.py``), each run cut into what the caller waits for:

- ``take``: a namespace made ahead from the pool (``_netpool.py``; counted:
  how many spawns found none), for ``"loopback"`` (it is in ``open`` for the
  others);
- ``open``: the parent's namespace (``_netns.open_network``: making it, lo,
  the veth pair, addresses, route, the forwarder's listening sockets);
- ``spawn``: the C spawn call, from clone until the child has exec'd (the
  child's network step is in it: ``unshare`` and lo up, or ``setns``);
- ``ns close``: ``Network.aclose`` after the reap (with an uplink, the wait
  for the kernel to delete the veth pair);
- ``rest``: everything else (the command itself, the reap, the loop).

Then the path alone: ``"loopback"`` with the pool filled beforehand and
each used namespace held until the end, so that no namespace is made or
freed while the rounds run (the kernel's CPU for them is not in the
figures), against ``"host"`` and the child unsharing.

Medians in ms; the machine's load is printed with them.  The child's own
``unshare`` is measured in C by ``benchmarks/netns_cost.c``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
from bench_netns import TRUE, network_policies

from asyncsandlock import SYSTEM_READABLE, Sandbox, _netns, _netpool, _run

from _common import banner, interleave, median, parse_args

PHASES = ("take", "open", "spawn", "ns close", "rest", "total")


class Clock:
    """Seconds spent in each hooked phase since the last :meth:`take`."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.opening = False

    def add(self, phase: str, seconds: float) -> None:
        self.spent[phase] = self.spent.get(phase, 0.0) + seconds

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


def hook(clock: Clock) -> None:
    """Time ``open_network``, the C spawn and ``Network.aclose``."""
    opened: Callable[..., Any] = _run.open_network
    spawned: Callable[..., Any] = _run.spawn
    closed: Callable[..., Any] = _netns.Network.aclose

    async def open_network(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        clock.opening = True
        try:
            return await opened(*args, **kwargs)
        finally:
            clock.opening = False
            clock.add("open", time.perf_counter() - start)

    def spawn(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return spawned(*args, **kwargs)
        finally:
            clock.add("spawn", time.perf_counter() - start)

    async def aclose(self: Any) -> None:
        start = time.perf_counter()
        try:
            await closed(self)
        finally:
            clock.add("ns close", time.perf_counter() - start)

    def take() -> int:
        start = time.perf_counter()
        fd = took(_netpool._pool)
        if not clock.opening:  # else it is part of "open"
            clock.add("take", time.perf_counter() - start)
        clock.add("missed", float(fd < 0))
        return fd

    took = _netpool._Pool.take
    _netpool._pool.take = take  # type: ignore[method-assign]
    _run.open_network = open_network  # type: ignore[assignment]
    _run.spawn = spawn  # type: ignore[assignment]
    _netns.Network.aclose = aclose  # type: ignore[method-assign]


async def run_backend(backend: str, rounds: int) -> None:
    clock = Clock()
    hook(clock)

    policies = network_policies()
    pooled = {name: True for name in policies}
    if os.geteuid() == 0:  # the same policy, its child unsharing its own namespace
        policies["loopback, no pool"] = policies["loopback"]
        pooled["loopback, no pool"] = False

    def runner(name: str, sb: Sandbox) -> Callable[[], Any]:
        async def call() -> object:
            _netpool.enabled = pooled[name]
            clock.take()
            start = time.perf_counter()
            result = await sb.run(TRUE)
            total = time.perf_counter() - start
            assert result.returncode == 0, result
            spent = clock.take()
            missed[name] += int(spent.pop("missed", 0.0))
            spent["rest"] = total - sum(spent.values())
            spent["total"] = total
            for phase in PHASES:
                phases[name][phase].append(spent.get(phase, 0.0))
            return result
        return call

    phases: dict[str, dict[str, list[float]]] = {
        name: {phase: [] for phase in PHASES} for name in policies}
    missed = dict.fromkeys(policies, 0)
    await interleave({name: runner(name, sb) for name, sb in policies.items()}, rounds)
    print(f"\n  phases of run /bin/true, medians in ms ({backend}; load {os.getloadavg()[0]:.1f})")
    print("    " + f"{'network':<18}" + "".join(f"{phase:>10}" for phase in PHASES))
    for name, by_phase in phases.items():
        # The warm-up rounds are in the lists too: drop them.
        cells = "".join(f"{median(v[-rounds:]) * 1e3:>10.3f}" for v in by_phase.values())
        print(f"    {name:<18}{cells}   pool empty {missed[name]}x")


async def path_only(backend: str, rounds: int) -> None:
    """``"loopback"`` with the kernel's work for its namespaces kept out of
    the rounds: the pool filled beforehand (no maker at work meanwhile) and
    each used namespace held until the end (no teardown meanwhile), against
    ``"host"`` and the child unsharing.  What is left is the path itself."""
    if os.geteuid() != 0:
        return
    pool = _netpool._pool
    ready = _netpool.READY
    _netpool.READY = rounds + 10
    pool.poll()
    pool.owed = rounds + 4 - len(pool.ready)  # asked of the maker at once
    pool.replenish()
    with anyio.fail_after(300):
        while len(pool.ready) < rounds + 4:
            pool.poll()
            await anyio.sleep(0.05)
    kept: list[int] = []
    for_child: Callable[..., int] = _run.for_child

    def holding(plan: Any) -> int:
        fd = for_child(plan)
        if fd >= 0:
            kept.append(os.dup(fd))
        return fd

    host = Sandbox(fs_readable=SYSTEM_READABLE)
    loopback = Sandbox(fs_readable=SYSTEM_READABLE, network="loopback")

    async def on_host() -> object:
        return await host.run(TRUE)

    async def pooled() -> object:
        _run.for_child, _run.replenish = holding, lambda: None  # type: ignore[assignment]
        try:
            return await loopback.run(TRUE)
        finally:
            _run.for_child, _run.replenish = for_child, _netpool.replenish  # type: ignore[assignment]

    async def unpooled() -> object:
        _netpool.enabled = False
        try:
            return await loopback.run(TRUE)
        finally:
            _netpool.enabled = True

    samples = await interleave({"host": on_host, "loopback, made ahead": pooled,
                                "loopback, child unshares": unpooled}, rounds, warmup=1)
    for fd in kept:
        os.close(fd)
    pool.close()
    _netpool.READY = ready
    print(f"\n  the path only (no namespace made or freed during the rounds), medians in ms "
          f"({backend}; load {os.getloadavg()[0]:.1f})")
    for name, values in samples.items():
        print(f"    {name:<26}{median(values) * 1e3:>10.3f}")


def main() -> int:
    args = parse_args("Where the time of Sandbox(network=...) goes.")
    banner("netns_breakdown", args.quick, True)
    rounds = 20 if args.quick else 100
    for backend in args.backend or ("asyncio", "trio"):
        anyio.run(run_backend, backend, rounds, backend=backend)
        anyio.run(path_only, backend, rounds, backend=backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
