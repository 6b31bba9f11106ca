"""Where a guarded connect's microseconds go, in the supervisor's process.

    .venv/bin/python benchmarks/net_steps.py [--quick] [--backend asyncio|trio]

Runs ``netbench connect`` (N connect()+close() to 127.0.0.1) under a host
rule, with the supervisor's steps wrapped in ``perf_counter_ns`` timers
(the wrappers cost ~0.3 µs each, counted in the step they wrap), and
prints per connect: the child's wall time, the supervisor's CPU time and
context switches (``getrusage``), and each step's time (the C pump's
"calls" per connect are its returns to the event loop; its time holds the
child's own while the pump yields the CPU to it, see ``yield_to_child`` in
``csrc/netfast.c``).  What the supervisor's CPU time
holds beyond the steps is the event loop's own work (its wake-up, epoll,
the callback).  The C steps' kernel costs (pidfd_getfd, getsockopt,
process_vm_readv, connect, close) are timed one by one by
``syscalls.c`` in the same run.
"""

from __future__ import annotations

import collections
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox, _supervisor
from asyncsandlock._kernel import _notify
from asyncsandlock.handlers import net

from _common import parse_args

HERE = os.path.dirname(os.path.abspath(__file__))
TIMES: collections.Counter[str] = collections.Counter()
COUNTS: collections.Counter[str] = collections.Counter()


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.perf_counter_ns

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += clock() - start
            COUNTS[name] += 1

    return wrapper


class _Lib:
    """A proxy of the C core that times the calls named in ``names``."""

    def __init__(self, lib: Any, names: dict[str, Callable[[tuple[Any, ...]], str]]) -> None:
        self._lib = lib
        self._names = names

    def __getattr__(self, attr: str) -> Any:
        fn = getattr(self._lib, attr)
        label = self._names.get(attr)
        if label is None:
            return fn
        clock = time.perf_counter_ns

        def wrapper(*args: Any) -> Any:
            start = clock()
            try:
                return fn(*args)
            finally:
                name = label(args)
                TIMES[name] += clock() - start
                COUNTS[name] += 1

        return wrapper


def instrument() -> None:
    if getattr(instrument, "done", False):
        return
    instrument.done = True  # type: ignore[attr-defined]
    try:
        from asyncsandlock import _netfast
    except ImportError:  # a tree from before the fast path: time the Python path alone
        pass
    else:
        fast = _netfast.FastConnect
        fast.pump = _timed("C fast path (asl_fast_pump)", fast.pump)  # type: ignore[method-assign]
    ioctls = {int(_notify._REQ_RECV): "NOTIF_RECV ioctl",
              int(_notify._REQ_SEND): "NOTIF_SEND ioctl",
              int(_notify._REQ_ID_VALID): "ID_VALID ioctl"}
    _notify.lib = _Lib(_notify.lib, {"ioctl": lambda a: ioctls.get(int(a[1]), "other ioctl")})
    net.lib = _Lib(net.lib, {
        "asl_net_fetch": lambda a: "C fetch: pidfd_getfd+2-3 getsockopt+fcntl+vm_readv+ID_VALID",
        "asl_net_connect": lambda a: "C connect (+fcntl x2, a second connect)",
        "asl_net_connected": lambda a: "C connected (after a wait)"})
    sup = _supervisor.Supervisor
    sup.pump = _timed("pump (all of a wake-up's Python)", sup.pump)  # type: ignore[method-assign]
    sup._start = _timed("dispatch + handler (_start)", sup._start)  # type: ignore[method-assign]
    sup._answer = _timed("answer (incl. NOTIF_SEND)", sup._answer)  # type: ignore[method-assign]
    lst = _notify.Listener
    lst.step = _timed("step (answer + poll + RECV + HandlerCtx)", lst.step)  # type: ignore[method-assign]
    net._Call.address = _timed("rule check (_Call.address)", net._Call.address)  # type: ignore[method-assign]
    net._Call.__init__ = _timed("_Call (pidfd cache + C fetch)", net._Call.__init__)  # type: ignore[method-assign]
    tgt = net.Target
    tgt.__exit__ = _timed("Target exit (close dup'd fd)", tgt.__exit__)  # type: ignore[method-assign]
    orig_close = os.close

    def close(fd: int) -> None:
        start = time.perf_counter_ns()
        orig_close(fd)
        TIMES["  of which os.close"] += time.perf_counter_ns() - start

    net.os.close = close  # type: ignore[attr-defined]
    import asyncsandlock._objects as objects
    objects.os.close = close  # type: ignore[attr-defined]


async def main(backend: str, quick: bool) -> None:
    work = tempfile.mkdtemp()
    binary = os.path.join(work, "netbench")
    syscalls = os.path.join(work, "syscalls")
    subprocess.run(["gcc", "-O2", "-o", binary, os.path.join(HERE, "netbench.c")], check=True)
    subprocess.run(["gcc", "-O2", "-o", syscalls, os.path.join(HERE, "syscalls.c")], check=True)
    server = subprocess.Popen([binary, "serve", "127.0.0.1", "0", "0"], stdout=subprocess.PIPE)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    n = 300 if quick else 2000
    box = Sandbox(fs_readable=(*SYSTEM_READABLE, work), net_allow=[f"127.0.0.1:{port}"])
    await box.run([binary, "connect", "127.0.0.1", str(port), "10"], check=True)  # warm up
    instrument()
    rounds = 2 if quick else 5
    for _ in range(rounds):
        free = subprocess.run([binary, "connect", "127.0.0.1", str(port), str(n)],
                              capture_output=True, check=True).stdout
        TIMES.clear()
        COUNTS.clear()
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = await box.run([binary, "connect", "127.0.0.1", str(port), str(n)], check=True)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e6 / n
        sys_ = (after.ru_stime - before.ru_stime) * 1e6 / n
        switches = (after.ru_nvcsw - before.ru_nvcsw + after.ru_nivcsw - before.ru_nivcsw) / n
        child_wall, child_cpu = (float(f) / 1e3 for f in (result.stdout or b"0 0").split())
        free_wall, free_cpu = (float(f) / 1e3 for f in free.split())
        print(f"{backend}: child {child_wall:.1f} µs per connect, CPU {child_cpu:.1f} "
              f"(unconfined just before: {free_wall:.1f}, CPU {free_cpu:.1f}); supervisor CPU "
              f"{cpu:.1f} µs per connect (system {sys_:.1f}), {switches:.2f} context switches"
              f"  [{os.getloadavg()[0]:.1f} load]")
        for name, ns in sorted(TIMES.items(), key=lambda kv: -kv[1]):
            print(f"    {name:58} {ns / n / 1e3:7.2f} µs per connect"
                  f"  ({COUNTS[name] / n:.2f} calls)")
    print(subprocess.run([syscalls, str(port), str(n)], capture_output=True, text=True,
                         check=True).stdout)
    server.kill()
    server.wait()


if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    for backend in args.backend or ["asyncio", "trio"]:
        anyio.run(main, backend, args.quick, backend=backend)
