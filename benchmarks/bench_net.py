"""Network guard costs: connect() to an allowed address, and bulk TCP.

    .venv/bin/python benchmarks/bench_net.py [--quick] [--backend asyncio|trio]

The child (``netbench.c``, compiled here with gcc) times itself, so a figure
is the cost of the calls, not of the spawn:

- ``connect``: N connect()+close() to 127.0.0.1 in a loop, ns per call:
  unconfined, asyncsandlock with the host rule ``127.0.0.1:PORT`` (every
  connect goes to the network guard, which connects on the child's behalf),
  asyncsandlock with the port rule ``tcp://:PORT`` (Landlock alone), and
  sandlock 0.9 with the same host rule when it is installed (the bench extra).
- ``bulk``: MiB sent with ``send()`` (``sendto`` without an address) over one
  loopback TCP connection, MB/s, unconfined and under the host rule: data is
  never trapped.

A process of its own (``netbench serve``) accepts and drains the
connections.  Contenders take turns
round by round (``_common.py``); figures are medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox

from _common import parse_args

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import sandlock  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the bench extra is optional
    sandlock = None


def _server(binary: str) -> subprocess.Popen[bytes]:
    """``netbench serve``: a process of its own that accepts and drains
    every connection (a thread here would compete with the supervisor)."""
    server = subprocess.Popen([binary, "serve", "127.0.0.1", "0", "0"], stdout=subprocess.PIPE)
    return server


async def main(backend: str, quick: bool) -> None:
    work = tempfile.mkdtemp()
    binary = os.path.join(work, "netbench")
    subprocess.run(["gcc", "-O2", "-o", binary, os.path.join(HERE, "netbench.c")], check=True)
    server = _server(binary)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    readable = (*SYSTEM_READABLE, work)
    host_rule = f"127.0.0.1:{port}"
    boxes: dict[str, Any] = {
        "unconfined": None,
        # TCP and UDP to 127.0.0.1: connect and addressed sends go to the guard.
    "asyncsandlock host rule": Sandbox(fs_readable=readable, net_allow=[host_rule]),
        "asyncsandlock port rule": Sandbox(fs_readable=readable,
                                           net_allow=[f"tcp://:{port}"]),
    }
    if sandlock is not None:
        boxes["sandlock 0.9 host rule"] = sandlock.Sandbox(fs_readable=list(readable),
                                                           net_allow=[host_rule])
    connects = 200 if quick else 2000
    mib = 256 if quick else 2048
    rounds = 3 if quick else 7

    async def once(name: str, box: Any, *args: str) -> float:
        argv = [binary, *args]
        if box is None:
            out = subprocess.run(argv, capture_output=True, check=True).stdout
        elif isinstance(box, Sandbox):
            result = await box.run(argv, check=True)
            out = result.stdout or b""
        else:
            out = box.run(argv).stdout
        return float(out.decode().split()[0]) if out else float("nan")

    for what, args, unit in (("connect", ("connect", "127.0.0.1", str(port), str(connects)),
                              "ns per connect"),
                             ("bulk", ("bulk", "127.0.0.1", str(port), str(mib)), "MB/s")):
        names = [n for n in boxes if what == "connect" or n in (
            "unconfined", "asyncsandlock host rule")]
        samples: dict[str, list[float]] = {n: [] for n in names}
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                samples[name].append(await once(name, boxes[name], *args))
        print(f"{what} ({backend}, {rounds} rounds, median, {unit}):")
        base = statistics.median(samples["unconfined"])
        for name in names:
            value = statistics.median(samples[name])
            rel = (f"+{value - base:,.0f} ns" if what == "connect"
                   else f"{value / base:.2f}x")
            print(f"  {name:26} {value:12,.0f}   {rel}")
    server.kill()
    server.wait()


if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    for backend in args.backend or ["asyncio", "trio"]:
        anyio.run(main, backend, args.quick, backend=backend)
    sys.exit(0)
