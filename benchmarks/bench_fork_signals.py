"""How often a signal still ends a fork trapped for ``max_processes`` with EINTR.

    .venv/bin/python benchmarks/bench_fork_signals.py [--quick] [--forks N] [--rounds R]
        [--backend asyncio|trio]

The child (Python) installs a SIGCHLD handler without SA_RESTART
(``siginterrupt``) and forks N children that exit at once, so a SIGCHLD is
due during nearly every later fork; it prints how many forks failed with
EINTR, which the kernel's own fork never returns.  Contenders, interleaved
round by round in one process (docs/limits.md, "Forks and signals"):

- ``unlimited``: no ``max_processes``, nothing trapped (the control);
- ``restarting``: ``max_processes``, the listener with WAIT_KILLABLE_RECV
  and SIGCHLD handlers given SA_RESTART (what the library does);
- ``killable``: the same without SA_RESTART for SIGCHLD handlers;
- ``interruptible``: neither (what it did at first).

Then threads (``_thread.start_new_thread`` under a 10 kHz SIGALRM with a
handler without SA_RESTART): unlimited; ``max_processes`` (a thread's clone
is not trapped); ``max_threads`` (every clone trapped).  Then dash running
100 three-stage pipelines of the builtin ``true``, as the contenders of the
forks: how many it completes before "Cannot fork".
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
from collections.abc import Iterator

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox, _spawn
from asyncsandlock.handlers import process_limit

# Forks under a SIGCHLD handler without SA_RESTART; the tests' script.
CHILD = (pathlib.Path(__file__).resolve().parent.parent / "tests" / "helpers"
         / "signalled_forks.py").read_text()
# Threads started while SIGALRM (a handler, no SA_RESTART) comes every 100 us:
# a clone that a signal ends makes start_new_thread raise RuntimeError.
# The threads are waited for: left running into the interpreter's exit, one
# now and then crashed it (SIGSEGV, with or without a sandbox).
THREADS = r"""
import _thread, signal, sys, time
lock, ended = _thread.allocate_lock(), [0]
def body():
    with lock:
        ended[0] += 1
signal.signal(signal.SIGALRM, lambda *a: None)
signal.siginterrupt(signal.SIGALRM, True)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
failed = 0
for _ in range(int(sys.argv[1])):
    try:
        _thread.start_new_thread(body, ())
    except RuntimeError:
        failed += 1
signal.setitimer(signal.ITIMER_REAL, 0)
while ended[0] < int(sys.argv[1]) - failed:
    time.sleep(0.001)
print(failed)
"""
FLAG = _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#: contender -> (max_processes, the listener's flag, SA_RESTART for SIGCHLD)
SETTINGS = {"unlimited": (None, FLAG, True), "restarting": (100_000, FLAG, True),
            "killable": (100_000, FLAG, False), "interruptible": (100_000, 0, False)}


def limit(name: str) -> int | None:
    return SETTINGS[name][0]


@contextlib.contextmanager
def setting(name: str) -> Iterator[None]:
    _, flag, restart = SETTINGS[name]
    _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = flag
    process_limit.RESTART_SIGCHLD = restart
    try:
        yield
    finally:
        _spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = FLAG
        process_limit.RESTART_SIGCHLD = True


READABLE = [*SYSTEM_READABLE, "/proc"]


async def one(name: str, forks: int) -> int:
    # A fresh Sandbox each time: spawn templates (which hold the flags) are per Sandbox.
    with setting(name):
        got = await Sandbox(fs_readable=READABLE, max_processes=limit(name)).run(
            ["/usr/bin/python3", "-c", CHILD, str(forks)])
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
    names = list(SETTINGS)
    done: dict[str, list[int]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            with setting(name):
                got = await Sandbox(fs_readable=READABLE, max_processes=limit(name)).run(
                    ["/bin/sh", "-c", DASH])
            done[name].append(len((got.stdout or b"").split()))
    for name in names:
        print(f"dash, {name:14} pipelines done of 100 before 'Cannot fork':"
              f" {sorted(done[name])}")


async def main(forks: int, rounds: int) -> None:
    names = list(SETTINGS)
    failed = dict.fromkeys(names, 0)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
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
