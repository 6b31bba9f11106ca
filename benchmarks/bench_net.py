"""Network guard costs: connect() to an allowed address, and bulk TCP.

    .venv/bin/python benchmarks/bench_net.py [--quick] [--backend asyncio|trio]

The child (``netbench.c``, compiled here with gcc) times itself, so a figure
is the cost of the calls, not of the spawn:

- ``connect``: 600 connect()+close() to 127.0.0.1 in a loop, per call (25 rounds):
  unconfined, asyncsandlock with the host rule ``127.0.0.1:PORT`` (every
  connect goes to the network guard, which connects on the child's behalf),
  asyncsandlock with the port rule ``tcp://:PORT`` (Landlock alone), and
  sandlock 0.9 with the same host rule when it is installed (the bench extra),
  and, with ``BASELINE=<commit>`` in the environment, the library at that
  commit with the same host rule, in this process (``_baseline.py``): an
  A/B comparison in the same minutes.
  Three more contenders are the floors under the guard, served in C with no
  Python and no event loop (``connect_floor.c``, built here with the
  library's ``csrc/netfast.c``): the trap answered with CONTINUE (what the
  round trip alone costs a connect; not a guard), the fewest steps of a
  connect made on the child's behalf (a blocking connect, no look at the
  socket; not a guard either), and the library's own C path (``pump``).
  The library's overhead less the pump's is what its Python and event loop
  add; the pump's less the blocking floor's, what the socket's checks and
  a connect that never blocks the loop cost.
  Two figures: the child's wall-clock time per connect, and the CPU time
  per connect of the child plus this process (where both supervisors run:
  asyncsandlock's on the event loop, sandlock's on a thread of its own).
  Also printed, for each asyncsandlock host rule: how often per connect the
  supervisor's C pump was called, i.e. went back to the event loop (a
  counting wrapper, ~0.2 µs a call): near 0 when the child traps again
  before the pump looks, near 1 when every connect costs a loop turn.
  On a loaded machine the CPU time is the steadier of the two: the wall
  time also holds how long the scheduler let the child and its supervisor
  wait for a CPU (the best round's wall time, printed too, is the least
  touched by that).
- ``bulk``: MiB sent with ``send()`` (``sendto`` without an address) over one
  loopback TCP connection, MB/s, unconfined and under the host rule: data is
  never trapped.  The target (>= 0.95x) is read on the median of the rounds'
  ratios (the two contenders run back to back in each round), and the
  sender's CPU time per MiB is printed beside it.

A process of its own (``netbench serve``) accepts and drains the
connections.  Contenders take turns round by round (``_common.py``);
figures are medians.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import anyio
from _baseline import load as load_baseline

from asyncsandlock import SYSTEM_READABLE, Sandbox, _netfast

from _common import Report, parse_args

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import sandlock  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the bench extra is optional
    sandlock = None

HOST = "asyncsandlock host rule"
FLOORS = {"C: trap, CONTINUE": "continue",
          "C: on behalf, blocking": "blocking",
          "C: the library's pump": "pump"}
SANDLOCK = "sandlock 0.9 host rule"
BASELINE = load_baseline()
BASE = f"{BASELINE[0]} host rule" if BASELINE else ""
SANDBOXES: tuple[type, ...] = (Sandbox, BASELINE[1].Sandbox) if BASELINE else (Sandbox,)


PUMPS = [0]


def _count_pumps(module: Any) -> None:
    """Count the calls of ``module.FastConnect.pump`` in :data:`PUMPS`."""
    fast = getattr(module, "FastConnect", None)
    if fast is None:  # a tree from before the C fast path
        return
    pump = fast.pump

    def counted(self: Any, buf: Any, batch: int) -> int:
        PUMPS[0] += 1
        return int(pump(self, buf, batch))

    fast.pump = counted


_count_pumps(_netfast)
if BASELINE is not None:
    _count_pumps(getattr(BASELINE[1], "_netfast", None))


def _server(binary: str) -> subprocess.Popen[bytes]:
    """``netbench serve``: a process of its own that accepts and drains
    every connection (a thread here would compete with the supervisor)."""
    server = subprocess.Popen([binary, "serve", "127.0.0.1", "0", "0"], stdout=subprocess.PIPE)
    return server


def _cpu() -> float:
    """CPU seconds of this process (every thread) and its reaped children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _bulk(names: list[str], samples: dict[str, list[float]],
          child_cpus: dict[str, list[float]], backend: str, report: Report) -> None:
    """The bulk table.  The contenders run one after the other in each round,
    so a round's ratio compares the same minutes of a shared machine; the
    target is read on the median of those.  The sender's CPU time per MiB
    shows what confinement costs each send() without the machine's load."""
    print(f"  {'':26} {'MB/s':>8} {'ratio':>6}   {'per round':>9}   {'child CPU µs/MiB':>16}")
    for name in names:
        rounds = [a / b for a, b in zip(samples[name], samples["unconfined"], strict=True)]
        cpu = statistics.median(child_cpus[name])
        value = statistics.median(samples[name])
        print(f"  {name:26} {value:8,.0f} {value / statistics.median(samples['unconfined']):5.2f}x"
              f"   {statistics.median(rounds):8.2f}x   {cpu:10.1f} "
              f"({cpu / statistics.median(child_cpus['unconfined']):.2f}x)")
        if name == HOST:
            ratio = statistics.median(rounds)
            report.add(ratio >= 0.95, f"{backend}: bulk TCP under a host rule, median of the "
                                      f"rounds' ratios: {ratio:.2f}x unconfined (target >= 0.95x)")


async def main(backend: str, quick: bool, report: Report) -> None:
    work = tempfile.mkdtemp()
    binary = os.path.join(work, "netbench")
    subprocess.run(["gcc", "-O2", "-o", binary, os.path.join(HERE, "netbench.c")], check=True)
    floor = os.path.join(work, "connect_floor")
    csrc = os.path.join(HERE, os.pardir, "csrc")
    subprocess.run(["gcc", "-O2", "-I", csrc, "-o", floor, os.path.join(HERE, "connect_floor.c"),
                    os.path.join(csrc, "netfast.c"), os.path.join(csrc, "guardcall.c")],
                   check=True)
    server = _server(binary)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    readable = (*SYSTEM_READABLE, work)
    host_rule = f"127.0.0.1:{port}"
    boxes: dict[str, Any] = {
        "unconfined": None,
        # TCP and UDP to 127.0.0.1: connect and addressed sends go to the guard.
        HOST: Sandbox(fs_readable=readable, net_allow=[host_rule]),
        "asyncsandlock port rule": Sandbox(fs_readable=readable,
                                           net_allow=[f"tcp://:{port}"]),
        **{name: (floor, mode) for name, mode in FLOORS.items()},
    }
    if BASELINE is not None:
        base = BASELINE[1]
        boxes[BASE] = base.Sandbox(fs_readable=(*base.SYSTEM_READABLE, work),
                                   net_allow=[host_rule])
    if sandlock is not None:
        boxes[SANDLOCK] = sandlock.Sandbox(fs_readable=list(readable), net_allow=[host_rule])
    # Many short rounds of connects: the load of a shared machine comes and
    # goes within seconds, and each contender should see as much of it.
    connects = 300 if quick else 600
    mib = 256 if quick else 2048
    rounds = {"connect": 5 if quick else 25, "bulk": 3 if quick else 9}

    async def once(box: Any, *args: str) -> tuple[float, float, float]:
        """(the child's figure, its CPU ns per connect, CPU ns per connect of
        the child and of us)."""
        argv = [binary, *args]
        PUMPS[0] = 0
        cpu = _cpu()
        if box is None:
            out = subprocess.run(argv, capture_output=True, check=True).stdout
        elif isinstance(box, tuple):  # connect_floor MODE NETBENCH ADDR PORT N
            out = subprocess.run([box[0], box[1], binary, *args[1:]], capture_output=True,
                                 check=True).stdout
        elif isinstance(box, SANDBOXES):
            result = await box.run(argv, check=True)
            out = result.stdout or b""
        else:
            out = box.run(argv).stdout
        cpu = (_cpu() - cpu) * 1e9 / connects
        figures = [float(f) for f in out.decode().split()] or [float("nan")]
        return figures[0], figures[1] if len(figures) > 1 else float("nan"), cpu

    print(f"load average before: {os.getloadavg()}")
    for what, args, unit in (("connect", ("connect", "127.0.0.1", str(port), str(connects)),
                              "µs per connect"),
                             ("bulk", ("bulk", "127.0.0.1", str(port), str(mib)), "MB/s")):
        names = [n for n in boxes if what == "connect" or n in ("unconfined", HOST)]
        for name in (HOST, BASE):  # the first run of a policy resolves and builds it
            if name in boxes:
                await once(boxes[name], *args)
        samples: dict[str, list[float]] = {n: [] for n in names}
        pumps: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        child_cpus: dict[str, list[float]] = {n: [] for n in names}
        for i in range(rounds[what]):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                value, child_cpu, cpu = await once(boxes[name], *args)
                pumps[name].append(PUMPS[0] / connects)
                samples[name].append(value / 1e3 if what == "connect" else value)
                cpus[name].append(cpu / 1e3)
                child_cpus[name].append(child_cpu / 1e3)
        print(f"{what} ({backend}, {rounds[what]} rounds, median, {unit}; "
              f"load average {os.getloadavg()[0]:.1f}):")
        base = statistics.median(samples["unconfined"])
        if what == "bulk":
            _bulk(names, samples, child_cpus, backend, report)
            continue
        base_cpu = statistics.median(cpus["unconfined"])
        print(f"  {'':26} {'wall':>8} {'over':>8}   {'CPU':>8} {'over':>8}   {'child CPU':>9}"
              f"   {'best wall':>9} {'over':>8}")
        best_base = min(samples["unconfined"])
        over: dict[str, tuple[float, float]] = {}
        for name in names:
            wall, cpu = statistics.median(samples[name]), statistics.median(cpus[name])
            over[name] = (wall - base, cpu - base_cpu)
            best = min(samples[name])
            print(f"  {name:26} {wall:8.1f} {wall - base:+8.1f}   {cpu:8.1f} {cpu - base_cpu:+8.1f}"
                  f"   {statistics.median(child_cpus[name]):9.1f}"
                  f"   {best:9.1f} {best - best_base:+8.1f}")
        for name in (HOST, BASE):
            if name in boxes and max(pumps[name]):
                print(f"    {name}: C pump calls (returns to the loop) per connect, median "
                      f"{statistics.median(pumps[name]):.2f}, rounds "
                      f"{min(pumps[name]):.2f}-{max(pumps[name]):.2f}")
        walls = {FLOORS[name]: over[name][0] for name in FLOORS}
        walls["library"] = over[HOST][0]
        steps = [("the trap's round trip alone (CONTINUE)", walls["continue"]),
                 ("the fewest steps on the child's behalf (blocking)",
                  walls["blocking"] - walls["continue"]),
                 ("the socket's checks, a connect that never blocks (pump)",
                  walls["pump"] - walls["blocking"]),
                 ("Python and the event loop", walls["library"] - walls["pump"])]
        print("    the guarded connect's wall overhead, step by step over the C floors:")
        for step, added in steps:
            print(f"      {step:58} {added:+6.1f} µs")
        for i, kind in enumerate(("wall", "CPU")):
            ours = over[HOST][i]
            report.add(ours <= 30, f"{backend}: guarded connect, {kind} time over unconfined: "
                                   f"{ours:+.1f} µs (target <= 30)")
            if BASE in over:
                print(f"    {kind}: this tree's overhead {ours:+.1f} µs, {BASE}'s "
                      f"{over[BASE][i]:+.1f} µs")
            if SANDLOCK in over:
                theirs = over[SANDLOCK][i]
                ratio = theirs / ours if ours > 0 else float("inf")
                report.add(ratio >= 2, f"{backend}: sandlock 0.9's {kind} overhead / ours = "
                                       f"{theirs:+.1f} / {ours:+.1f} µs = {ratio:.1f}x "
                                       f"(target >= 2x)")
    server.kill()
    server.wait()


if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    report = Report()
    for backend in args.backend or ["asyncio", "trio"]:
        anyio.run(main, backend, args.quick, report, backend=backend)
    print(f"load average after: {os.getloadavg()}")
    sys.exit(0 if report.summary() else 1)
