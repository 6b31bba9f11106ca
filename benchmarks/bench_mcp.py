"""The MCP server through the SDK's own client, side by side with sandlock-mcp.

Both servers are driven over stdio with the handshake protocol (sandlock-mcp
0.9 is built on mcp 1.x, which has neither Streamable HTTP nor the 2026
protocol).  Measured:

- ``run_shell("true")`` round trip (sandlock: ``shell``), one call at a time,
  interleaved between the servers: the median;
- 50 concurrent ``execute_python("print(1)")`` (sandlock: ``python``): the wall
  time of a batch, ``--rounds`` batches per server taken in turn (the order
  turning every round), the median; and the server's thread count around
  each batch.

All servers run all along, so the other tenants of a loaded machine weigh on
each alike; the load average is printed with the figures.
``--site-packages`` adds a second asyncsandlock server whose ``execute_python``
sees site-packages (``python -I``, as before ``site_packages`` existed).

sandlock-mcp needs ``mcp<2`` while this server needs ``mcp>=2``: install it in a
venv of its own and pass its command, e.g.::

    python3 -m venv /tmp/slvenv && /tmp/slvenv/bin/pip install sandlock==0.9.0 'mcp<2'
    python benchmarks/bench_mcp.py --sandlock /tmp/slvenv/bin/sandlock-mcp
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters


@dataclass
class Contender:
    name: str
    command: list[str]
    shell: tuple[str, str]  # tool name, argument name
    python: tuple[str, str]
    marker: str


def server_pid(marker: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv and not argv[0].endswith(b"sh"):
                return int(entry)
    return None


def threads(pid: int | None) -> int:
    return len(os.listdir(f"/proc/{pid}/task")) if pid else -1


@asynccontextmanager
async def connect(contender: Contender) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=contender.command[0], args=contender.command[1:],
                                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    async with Client(params, mode="legacy") as client:
        yield client


async def call(client: Client, tool: tuple[str, str], value: str) -> Any:
    result = await client.call_tool(tool[0], {tool[1]: value})
    if result.is_error:
        raise RuntimeError(f"{tool[0]} failed: {result.content}")
    return result


def turn(count: int, index: int) -> list[int]:
    """The order of round ``index``: every contender first in turn."""
    shift = index % count
    return [*range(shift, count), *range(shift)]


async def batch(client: Client, contender: Contender, count: int) -> float:
    """Wall time of ``count`` concurrent ``execute_python("print(1)")`` calls."""
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(call, client, contender.python, "print(1)")
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    root = tempfile.mkdtemp(prefix="bench-mcp-")
    ours = [sys.executable, "-m", "asyncsandlock.mcp", "--workspace-root", f"{root}/asl"]
    if args.per_session is not None:
        ours += ["--max-concurrent-per-session", str(args.per_session)]
    contenders = [Contender("asyncsandlock", ours, ("run_shell", "command"),
                            ("execute_python", "code"), f"{root}/asl")]
    if args.site_packages:
        with_site = [*ours, "--site-packages"]
        with_site[with_site.index(f"{root}/asl")] = f"{root}/asl-site"
        contenders.append(Contender("asyncsandlock +site", with_site, ("run_shell", "command"),
                                    ("execute_python", "code"), f"{root}/asl-site"))
    if args.sandlock:
        os.makedirs(f"{root}/sl")
        contenders.append(Contender("sandlock-mcp 0.9", [args.sandlock, "--workspace",
                                                        f"{root}/sl"],
                                    ("shell", "command"), ("python", "code"), f"{root}/sl"))
    load_before = os.getloadavg()
    async with contextlib.AsyncExitStack() as stack:
        # Both servers run all along; each round times one of each, the
        # order turning every round, so the load of the other tenants of
        # the machine lands on both alike.
        clients = [await stack.enter_async_context(connect(c)) for c in contenders]
        for contender, client in zip(contenders, clients, strict=True):
            for _ in range(3):
                await call(client, contender.shell, "true")
            await batch(client, contender, 5)
        trips: list[list[float]] = [[] for _ in contenders]
        walls: list[list[float]] = [[] for _ in contenders]
        threads_seen: list[list[int]] = [[] for _ in contenders]
        pids = [server_pid(c.marker) for c in contenders]
        for index in range(args.calls):
            for i in turn(len(contenders), index):
                start = time.perf_counter()
                await call(clients[i], contenders[i].shell, "true")
                trips[i].append(time.perf_counter() - start)
        for index in range(args.rounds):
            for i in turn(len(contenders), index):
                threads_seen[i].append(threads(pids[i]))
                walls[i].append(await batch(clients[i], contenders[i], args.concurrent))
                threads_seen[i].append(threads(pids[i]))
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} "
          f"{load_after[2]:.2f}; {os.cpu_count()} CPUs")
    print(f"{'server':<18} {'run_shell(true) median':>24} "
          f"{f'{args.concurrent} concurrent python, median':>34} {'threads min/max':>16}")
    for c, trip, wall, seen in zip(contenders, trips, walls, threads_seen, strict=True):
        each = " ".join(f"{w * 1e3:.0f}" for w in wall)
        print(f"{c.name:<18} {statistics.median(trip) * 1e3:>21.1f} ms "
              f"{statistics.median(wall) * 1e3:>31.0f} ms {min(seen):>10}/{max(seen)}"
              f"   (batches: {each} ms)")
    if args.sandlock:
        for c, trip, wall in zip(contenders[:-1], trips, walls, strict=False):
            per_round = " ".join(f"{a / b:.2f}" for a, b in zip(wall, walls[-1], strict=True))
            print(f"ratio {c.name} / sandlock-mcp, of medians: round trip "
                  f"{statistics.median(trip) / statistics.median(trips[-1]):.2f}x, concurrent "
                  f"{statistics.median(wall) / statistics.median(walls[-1]):.2f}x "
                  f"(per round: {per_round})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--sandlock", metavar="CMD", help="sandlock-mcp 0.9 (with mcp<2)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="concurrent batches per server, alternated")
    parser.add_argument("--per-session", type=int, default=None,
                        help="our max_concurrent_per_session (default: the profile's)")
    parser.add_argument("--site-packages", action="store_true",
                        help="also a server of ours with site_packages = true (python -I)")
    anyio.run(main, parser.parse_args())
