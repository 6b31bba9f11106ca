"""Network namespace benchmarks: what ``Sandbox(network=...)`` adds to a spawn.

    .venv/bin/python benchmarks/bench_netns.py [--quick] [--backend asyncio|trio]

``await sb.run(["/bin/true"])`` with ``network="host"``, ``"loopback"``
(the child enters a namespace made ahead, ``_netpool.py``), ``"loopback"``
without the pool (the child unshares its own, as unprivileged callers'
children still do), ``"loopback"`` with ``publish`` (the parent's namespace
and a forwarder), and ``"uplink"`` (the parent also makes a veth pair,
addresses and a route; the pair goes after the run, ``_linksweep.py``), and
``"uplink"`` awaited until its link is gone (what a run cost when it waited
for that), against ``anyio.run_process``; contenders interleaved per round
in one process (see ``_common.py``).  Needs root (CAP_SYS_ADMIN and
CAP_NET_ADMIN) for the pool and the parent-made namespaces; unprivileged,
``"loopback"`` is measured in a user namespace and the others are skipped.

Then ``"uplink"`` A/B (root only): each run building its own uplink (no
pool) against taking one built ahead (``_netns.py``'s pool), with ``"host"``
as the reference, interleaved per round; a ticker task (1 ms sleeps) records
how late the loop woke it, the worst per call *including* the pool's refill
after the run (each pooled round waits until the pool is full again, so its
background requests are counted against it, not against the next contender).

Target (issue 10): a loopback-only namespace adds at most 0.5 ms to a spawn.
"""

from __future__ import annotations

import os
import sys

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox, _linksweep, _netns, _netpool

from _common import Bench, Report, banner, interleave, median, parse_args, table, thread_count

TRUE = ["/bin/true"]
TARGET_MS = 0.5


def network_policies() -> dict[str, Sandbox]:
    """One policy per network mode this caller may use (also netns_breakdown.py's)."""
    def sandbox(**kwargs: object) -> Sandbox:
        return Sandbox(fs_readable=SYSTEM_READABLE, **kwargs)  # type: ignore[arg-type]

    policies = {"host": sandbox(), "loopback": sandbox(network="loopback")}
    if os.geteuid() == 0:
        policies["loopback+publish"] = sandbox(network="loopback", publish=[8080])
        policies["uplink"] = sandbox(network="uplink")
    return policies


async def run_backend(report: Report, backend: str, rounds: int) -> None:
    policies = network_policies()

    def runner(sb: Sandbox) -> Bench:
        async def call() -> object:
            result = await sb.run(TRUE)
            assert result.returncode == 0, result
            return result
        return call

    async def bare() -> object:
        return await anyio.run_process(TRUE)

    async def unpooled() -> object:
        _netpool.enabled = False
        try:
            return await runner(policies["loopback"])()
        finally:
            _netpool.enabled = True

    async def uplink_gone() -> object:
        result = await runner(policies["uplink"])()
        for _ in range(20000):  # crossed off by the sweeper's task; 10 s at most
            if not _linksweep.pending():
                break
            await anyio.sleep(0.0005)
        return result

    contenders: dict[str, Bench] = {"anyio.run_process": bare}
    contenders.update({f"asyncsandlock {name}": runner(sb) for name, sb in policies.items()})
    if os.geteuid() == 0:
        contenders["asyncsandlock loopback, no pool"] = unpooled
        contenders["asyncsandlock uplink, link gone"] = uplink_gone
    samples = await interleave(contenders, rounds)
    table(f"run /bin/true by network ({backend})", samples, "asyncsandlock host")
    host = median(samples["asyncsandlock host"])
    added = (median(samples["asyncsandlock loopback"]) - host) * 1e3
    report.add(added <= TARGET_MS, f"loopback {backend}: +{added:.3f} ms over host "
                                   f"(target <= {TARGET_MS} ms)")
    for name in ("loopback, no pool", "loopback+publish", "uplink", "uplink, link gone"):
        if f"asyncsandlock {name}" in samples:
            cost = (median(samples[f"asyncsandlock {name}"]) - host) * 1e3
            print(f"  {name}: +{cost:.3f} ms over host")
    print(f"  threads after: {thread_count()}; load {os.getloadavg()[0]:.1f}")


class Ticker:
    """Sleeps 1 ms at a time and keeps the worst lateness of its wake-ups."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            before = anyio.current_time()
            await anyio.sleep(0.001)
            self.worst = max(self.worst, anyio.current_time() - before - 0.001)


async def uplink_ab(backend: str, rounds: int) -> None:
    sb = {"host": Sandbox(fs_readable=SYSTEM_READABLE),
          "uplink": Sandbox(fs_readable=SYSTEM_READABLE, network="uplink")}
    times: dict[str, list[float]] = {"host": [], "uplink, no pool": [], "uplink, pool": []}
    stalls: dict[str, list[float]] = {name: [] for name in times}
    refill: list[float] = []  # the worst stall while the pool refills, alone
    ticker = Ticker()

    async def one(name: str) -> None:
        _netns.uplink_pool = name != "uplink, no pool"
        ticker.worst = 0.0
        started = anyio.current_time()
        result = await sb["host" if name == "host" else "uplink"].run(TRUE)
        took = anyio.current_time() - started
        assert result.returncode == 0, result
        if name == "uplink, pool":  # its refill, counted against it
            run_stall, ticker.worst = ticker.worst, 0.0
            for _ in range(20000):
                if len(_netns.ready_uplinks()) == _netns.UPLINKS_READY:
                    break
                await anyio.sleep(0.0005)
            refill.append(ticker.worst)
            ticker.worst = max(ticker.worst, run_stall)
        times[name].append(took)
        stalls[name].append(ticker.worst)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        _netns.want_uplinks()
        order = list(times)
        for round_ in range(rounds + 2):
            for name in order:
                await one(name)
            order.append(order.pop(0))
            if round_ < 2:  # warm-up
                for values in (*times.values(), *stalls.values(), refill):
                    values.clear()
        tg.cancel_scope.cancel()
    _netns.uplink_pool = True
    await _netns.close_uplinks()
    host = median(times["host"])
    print(f"\n  uplink A/B ({backend}, {rounds} rounds, interleaved; ms)")
    print(f"    {'contender':<18}{'median run':>12}{'added':>9}{'median stall':>14}"
          f"{'worst stall':>13}")
    for name, took in times.items():
        print(f"    {name:<18}{median(took) * 1e3:>12.3f}{(median(took) - host) * 1e3:>9.3f}"
              f"{median(stalls[name]) * 1e3:>14.3f}{max(stalls[name]) * 1e3:>13.3f}")
    print(f"    {'pool refill alone':<18}{'':>21}{median(refill) * 1e3:>14.3f}"
          f"{max(refill) * 1e3:>13.3f}")
    print(f"  load {os.getloadavg()[0]:.1f} (2 cores shared with other agents)")


def main() -> int:
    args = parse_args("What Sandbox(network=...) adds to a spawn.")
    banner("bench_netns", args.quick, True)
    rounds = 20 if args.quick else 200
    report = Report()
    for backend in args.backend or ("asyncio", "trio"):
        anyio.run(run_backend, report, backend, rounds, backend=backend)
        if os.geteuid() == 0:
            anyio.run(uplink_ab, backend, rounds, backend=backend)
    report.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
