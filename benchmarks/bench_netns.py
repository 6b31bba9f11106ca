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

Target (issue 10): a loopback-only namespace adds at most 0.5 ms to a spawn.
"""

from __future__ import annotations

import os
import sys

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox, _linksweep, _netpool

from _common import Bench, Report, banner, interleave, median, parse_args, table, thread_count

TRUE = ["/bin/true"]
TARGET_MS = 0.5


async def run_backend(report: Report, backend: str, rounds: int) -> None:
    def sandbox(**kwargs: object) -> Sandbox:
        return Sandbox(fs_readable=SYSTEM_READABLE, **kwargs)  # type: ignore[arg-type]

    policies = {"host": sandbox(), "loopback": sandbox(network="loopback")}
    if os.geteuid() == 0:
        policies["loopback+publish"] = sandbox(network="loopback", publish=[8080])
        policies["uplink"] = sandbox(network="uplink")

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


def main() -> int:
    args = parse_args("What Sandbox(network=...) adds to a spawn.")
    banner("bench_netns", args.quick, True)
    rounds = 20 if args.quick else 200
    report = Report()
    for backend in args.backend or ("asyncio", "trio"):
        anyio.run(run_backend, report, backend, rounds, backend=backend)
    report.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
