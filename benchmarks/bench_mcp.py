"""The MCP server through the SDK's own client, side by side with sandlock-mcp.

Both servers are driven over stdio with the handshake protocol (sandlock-mcp
0.9 is built on mcp 1.x, which has neither Streamable HTTP nor the 2026
protocol).  Measured:

- ``run_shell("true")`` round trip (sandlock: ``shell``), one call at a time,
  interleaved between the servers: the median;
- 50 concurrent ``execute_python("print(1)")`` (sandlock: ``python``): the wall
  time of the batch, and the server's thread count before and after.

sandlock-mcp needs ``mcp<2`` while this server needs ``mcp>=2``: install it in a
venv of its own and pass its command, e.g.::

    python3 -m venv /tmp/slvenv && /tmp/slvenv/bin/pip install sandlock==0.9.0 'mcp<2'
    python benchmarks/bench_mcp.py --sandlock /tmp/slvenv/bin/sandlock-mcp
"""

from __future__ import annotations

import argparse
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


async def main(args: argparse.Namespace) -> None:
    root = tempfile.mkdtemp(prefix="bench-mcp-")
    contenders = [Contender("asyncsandlock", [sys.executable, "-m", "asyncsandlock.mcp",
                                              "--workspace-root", f"{root}/asl",
                                              "--max-concurrent-per-session",
                                              str(args.per_session)],
                            ("run_shell", "command"), ("execute_python", "code"),
                            f"{root}/asl")]
    if args.sandlock:
        os.makedirs(f"{root}/sl")
        contenders.append(Contender("sandlock-mcp 0.9", [args.sandlock, "--workspace",
                                                        f"{root}/sl"],
                                    ("shell", "command"), ("python", "code"), f"{root}/sl"))
    rows = []
    for contender in contenders:
        async with connect(contender) as client:
            for _ in range(3):
                await call(client, contender.shell, "true")
            times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                await call(client, contender.shell, "true")
                times.append(time.perf_counter() - start)
            pid = server_pid(contender.marker)
            before = threads(pid)
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrent):
                    tg.start_soon(call, client, contender.python, "print(1)")
            wall = time.perf_counter() - start
            after = threads(pid)
        rows.append((contender.name, statistics.median(times) * 1e3, wall * 1e3, before, after))
    print(f"{'server':<18} {'run_shell(true) median':>24} {'50 concurrent python':>22} "
          f"{'threads before/after':>22}")
    for name, median, wall, before, after in rows:
        print(f"{name:<18} {median:>21.1f} ms {wall:>19.0f} ms {before:>14}/{after}")
    if len(rows) == 2:
        print(f"ratio (asyncsandlock / sandlock-mcp): round trip {rows[0][1] / rows[1][1]:.2f}x, "
              f"concurrent {rows[0][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--sandlock", metavar="CMD", help="sandlock-mcp 0.9 (with mcp<2)")
    parser.add_argument("--per-session", type=int, default=4,
                        help="our max_concurrent_per_session (the profile's is 4)")
    anyio.run(main, parser.parse_args())
