"""How often a signal still ends a fork trapped for ``max_processes`` with EINTR.

    .venv/bin/python benchmarks/bench_fork_signals.py [--quick] [--forks N] [--rounds R]
        [--backend asyncio|trio]

The child (Python) installs a SIGCHLD handler without SA_RESTART
(``siginterrupt``) and forks N children that exit at once, so a SIGCHLD is
due during nearly every later fork; it prints how many forks failed with
EINTR, which the kernel's own fork never returns.  Contenders, interleaved
round by round in one process (docs/limits.md, "Forks and signals"):

- ``unlimited``: no ``max_processes``, nothing trapped (the control);
- ``killable``: ``max_processes``, listener with WAIT_KILLABLE_RECV (what
  the library does);
- ``interruptible``: ``max_processes``, the listener without that flag
  (what it did before).

Then threads (``_thread.start_new_thread`` under a 10 kHz SIGALRM with a
handler without SA_RESTART): unlimited; ``max_processes`` (a thread's clone
is not trapped); ``max_threads`` (every clone trapped).  Then dash running
100 three-stage pipelines of the builtin ``true``, as the three contenders
of the forks: how many it completes before "Cannot fork".
"""

from __future__ import annotations

import argparse
import sys

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox, _spawn

CHILD = r"""
import os, signal, sys
signal.signal(signal.SIGCHLD, lambda *a: None)
signal.siginterrupt(signal.SIGCHLD, True)
failed = 0
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except InterruptedError:
        failed += 1
        continue
    if pid == 0:
        os._exit(0)
print(failed)
"""
# Threads started while SIGALRM (a handler, no SA_RESTART) comes every 100 us:
# a clone that a signal ends makes start_new_thread raise RuntimeError.
THREADS = r"""
import _thread, signal, sys
signal.signal(signal.SIGALRM, lambda *a: None)
signal.siginterrupt(signal.SIGALRM, True)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
failed = 0
for _ in range(int(sys.argv[1])):
    try:
        _thread.start_new_thread(lambda: None, ())
    except RuntimeError:
        failed += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print(failed)
"""
FLAG = _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
READABLE = [*SYSTEM_READABLE, "/proc"]


async def one(name: str, forks: int) -> int:
    # A fresh Sandbox each time: spawn templates (which hold the flags) are per Sandbox.
    _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 0 if name == "interruptible" else FLAG
    try:
        limit = None if name == "unlimited" else 100_000
        got = await Sandbox(fs_readable=READABLE, max_processes=limit).run(
            ["/usr/bin/python3", "-c", CHILD, str(forks)])
    finally:
        _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = FLAG
    if got.returncode != 0:
        sys.exit(f"{name}: {(got.stderr or b'').decode()}")
    return int(got.stdout or b"-1")


async def thread_run(name: str, count: int) -> int:
    limits = {"unlimited": {}, "max_processes": {"max_processes": 100_000},
              "max_threads": {"max_threads": 100_000}}[name]
    got = await Sandbox(fs_readable=READABLE, **limits).run(  # type: ignore[arg-type]
        ["/usr/bin/python3", "-c", THREADS, str(count)])
    if got.returncode != 0:
        sys.exit(f"{name}: {(got.stderr or b'').decode()}")
    return int(got.stdout or b"-1")


async def threads(count: int, rounds: int) -> None:
    names = ["unlimited", "max_processes", "max_threads"]
    failed = dict.fromkeys(names, 0)
    for index in range(rounds):
        for name in names[index % 3:] + names[:index % 3]:
            failed[name] += await thread_run(name, count)
    for name in names:
        print(f"threads, {name:14} {failed[name]:6} of {count * rounds} failed"
              f" ({100 * failed[name] / (count * rounds):.2f} %)")


# dash: a subshell running the builtin true exits within microseconds of its
# fork, and dash's SIGCHLD handler has no SA_RESTART: its next fork fails.
DASH = "i=0; while [ $i -lt 100 ]; do true | true | true; i=$((i+1)); echo $i; done"


async def dash(rounds: int) -> None:
    names = ["unlimited", "killable", "interruptible"]
    done: dict[str, list[int]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % 3:] + names[:index % 3]:
            _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 0 if name == "interruptible" else FLAG
            try:
                got = await Sandbox(fs_readable=READABLE,
                                    max_processes=None if name == "unlimited" else 64).run(
                    ["/bin/sh", "-c", DASH])
            finally:
                _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = FLAG
            done[name].append(len((got.stdout or b"").split()))
    for name in names:
        print(f"dash, {name:14} pipelines done of 100 before 'Cannot fork':"
              f" {sorted(done[name])}")


async def main(forks: int, rounds: int) -> None:
    names = ["unlimited", "killable", "interruptible"]
    failed = dict.fromkeys(names, 0)
    for index in range(rounds):
        order = names[index % 3:] + names[:index % 3]
        for name in order:
            failed[name] += await one(name, forks)
    total = forks * rounds
    for name in names:
        print(f"{name:14} {failed[name]:6} of {total} forks failed with EINTR"
              f" ({100 * failed[name] / total:.2f} %)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--forks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", action="append", choices=("asyncio", "trio"))
    parser.add_argument("--quick", action="store_true", help="100 forks, one round")
    args = parser.parse_args()
    if args.quick:
        args.forks, args.rounds = 100, 1
    for backend in args.backend or ("asyncio", "trio"):
        print(f"-- {backend}")
        anyio.run(main, args.forks, args.rounds, backend=backend)
        anyio.run(threads, args.forks, args.rounds, backend=backend)
        anyio.run(dash, 3 * args.rounds, backend=backend)
