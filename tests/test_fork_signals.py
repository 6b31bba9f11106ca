"""Signals during a fork that ``max_processes`` traps (issues 9/11;
docs/limits.md, "Forks and signals").

The kernel's own fork never fails with EINTR.  A trapped one waits for the
supervisor; the listener is made with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
so once the supervisor has received the notification only a fatal signal
ends that wait: a signal with a handler (installed without SA_RESTART) waits
until the fork has its answer, then runs.  Each test pairs with a control
that makes the listener without the flag, as before, where the same signal
ends the fork with EINTR.  What remains, a signal between the trap and the
supervisor's RECV, is nearly always SIGCHLD: its handlers get SA_RESTART, so
the fork restarts (the dash and SA_RESTART tests below).  Under
``max_processes`` alone, the clones that make a thread are not trapped at
all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import pytest
from test_combinations import AS_NOBODY, BACKENDS, drive, needs_nobody_userns

from asyncsandlock import (
    SYSTEM_READABLE,
    ExitReason,
    Handler,
    HandlerCtx,
    NotifAction,
    Sandbox,
    _spawn,
)
from asyncsandlock.handlers.process_limit import ProcessLimit

pytestmark = pytest.mark.usefixtures("no_leaks")

PY = "/usr/bin/python3"
READABLE = [*SYSTEM_READABLE, "/proc"]

# SIGALRM with a handler, without SA_RESTART, due while the fork is held.
ALARMED_FORK = r"""
import os, signal, sys
signal.signal(signal.SIGALRM, lambda *a: print("handler ran", flush=True))
signal.siginterrupt(signal.SIGALRM, True)
signal.setitimer(signal.ITIMER_REAL, float(sys.argv[1]))
try:
    pid = os.fork()
except InterruptedError:
    print("EINTR", flush=True)
    raise SystemExit(0)
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("forked", flush=True)
"""


class HeldFork(Handler):
    """Answers a process's fork after ``hold`` seconds (``continue_()``); the
    built-in ProcessLimit has received and passed it first."""

    syscalls: ClassVar[tuple[str, ...]] = ("fork", "vfork", "clone")

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.received = 0

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.received += 1
        await anyio.sleep(self.hold)
        return NotifAction.continue_()


@pytest.fixture(params=["killable", "interruptible"])
def listener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``interruptible``: the control, the listener made without the flag."""
    if request.param == "interruptible":
        monkeypatch.setattr(_spawn, "_SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", 0)
    yield str(request.param)


@pytest.mark.anyio
async def test_a_signal_with_a_handler_waits_for_the_forks_answer(
        anyio_backend: str, listener: str) -> None:
    held = HeldFork(1.0)
    sandbox = Sandbox(fs_readable=READABLE, max_processes=8, handlers=[held])
    got = await sandbox.run([PY, "-c", ALARMED_FORK, "0.3"], timeout=30)
    assert got.returncode == 0, got.stderr
    assert held.received >= 1
    if listener == "killable":
        # The fork was answered, then the handler ran: as with the kernel's fork.
        assert sorted(got.stdout.splitlines()) == [b"forked", b"handler ran"], got.stdout
    else:
        assert got.stdout.split() == [b"handler", b"ran", b"EINTR"], got.stdout


@pytest.mark.anyio
async def test_a_fatal_signal_still_ends_a_held_fork(anyio_backend: str, listener: str) -> None:
    """SIGTERM with its default action (fatal) and the run's own SIGKILL
    (timeout) end a process whose fork the supervisor holds, at once."""
    sandbox = Sandbox(fs_readable=READABLE, max_processes=8, handlers=[HeldFork(60)])
    async with await sandbox.open([PY, "-c", "import os; os.fork()"]) as proc:
        await anyio.sleep(0.5)  # trapped and received by now
        start = time.monotonic()
        proc.terminate()
        with anyio.fail_after(10):
            code = await proc.wait()
        assert code == -15
        assert time.monotonic() - start < 5
    start = time.monotonic()
    got = await sandbox.run([PY, "-c", "import os; os.fork()"], timeout=0.5)
    assert got.reason is ExitReason.TIMEOUT
    assert time.monotonic() - start < 10


THREADS_AND_A_FORK = r"""
import os, threading
threads = [threading.Thread(target=lambda: None) for _ in range(20)]
for t in threads:
    t.start()
for t in threads:
    t.join()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("ok")
"""


@pytest.mark.anyio
@pytest.mark.parametrize("max_threads", [None, 1000], ids=["processes", "threads-too"])
async def test_threads_go_untrapped_under_max_processes_alone(
        anyio_backend: str, max_threads: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``max_processes`` alone a thread is not counted, so the filter
    lets its clone through (no round trip); a fork is still trapped.
    Control: with ``max_threads`` every clone is trapped."""
    seen: list[str] = []
    handle = ProcessLimit.handle

    async def counting(self: ProcessLimit, ctx: HandlerCtx) -> NotifAction:
        seen.append("thread" if ctx.syscall == "clone" and ctx.args[0] & 0x10000 else "process")
        return await handle(self, ctx)

    monkeypatch.setattr(ProcessLimit, "handle", counting)
    got = await Sandbox(fs_readable=READABLE, max_processes=8, max_threads=max_threads).run(
        [PY, "-c", THREADS_AND_A_FORK], timeout=30)
    assert got.stdout == b"ok\n", got.stderr
    assert seen.count("process") == 1
    assert seen.count("thread") == (0 if max_threads is None else 20)


# For a fresh interpreter: max_processes' own handler holds every fork 1 s.
HOLD_FORKS = """
import anyio
from asyncsandlock.handlers.process_limit import ProcessLimit
_handle = ProcessLimit.handle
async def _held(self, ctx):
    await anyio.sleep(1.0)
    return await _handle(self, ctx)
ProcessLimit.handle = _held
"""
NO_FLAG = "from asyncsandlock import _spawn\n_spawn._SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 0\n"


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_as_uid_65534_a_signal_waits_for_the_forks_answer(backend: str) -> None:
    """The same from a uid 65534 caller: its own ids, and ``uid=`` (a user
    namespace); control: the listener without the flag."""
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"max_processes": 8}, [PY, "-c", ALARMED_FORK, "0.3"]),
        ({"max_processes": 8, "uid": 1234}, [PY, "-c", ALARMED_FORK, "0.3"])]
    for run in drive(AS_NOBODY, backend, cases, prelude=HOLD_FORKS):
        assert run["rc"] == 0, run
        assert sorted(run["stdout"].splitlines()) == ["forked", "handler ran"], run
    for run in drive(AS_NOBODY, backend, cases, prelude=HOLD_FORKS + NO_FLAG):
        assert run["stdout"].split() == ["handler", "ran", "EINTR"], run


DASH = "i=0; while [ $i -lt 20 ]; do true | true | true; i=$((i+1)); done; echo $i"


@pytest.mark.anyio
async def test_dash_pipelines_under_max_processes(anyio_backend: str) -> None:
    """dash's subshell exits within microseconds and its SIGCHLD reaches the
    next fork before the supervisor has received it: without SA_RESTART on
    dash's handler (the test below) that fork failed with EINTR, "Cannot
    fork", in nearly every run of 20 pipelines."""
    control = await Sandbox(fs_readable=READABLE).run(["/bin/sh", "-c", DASH], timeout=60)
    assert control.stdout == b"20\n", control.stderr
    got = await Sandbox(fs_readable=READABLE, max_processes=64).run(["/bin/sh", "-c", DASH],
                                                                    timeout=60)
    assert got.stdout == b"20\n", got.stderr


# Handlers for SIGCHLD and SIGUSR1, both asked to interrupt (no SA_RESTART),
# and SIGCHLD set to SIG_DFL and back; then what the kernel holds, read back
# with glibc's sigaction() (a query: act NULL, never trapped).  glibc's
# struct sigaction: the handler, a 128-byte mask, then sa_flags (an int).
SA_FLAGS = r"""
import ctypes, signal
libc = ctypes.CDLL(None)
def restarts(signum):
    old = ctypes.create_string_buffer(256)
    assert libc.sigaction(signum, None, old) == 0
    return int.from_bytes(old.raw[136:140], "little") & 0x10000000 != 0
signal.signal(signal.SIGCHLD, signal.SIG_DFL)
dfl = restarts(signal.SIGCHLD)
for signum in (signal.SIGCHLD, signal.SIGUSR1):
    signal.signal(signum, lambda *a: None)
    signal.siginterrupt(signum, True)
print(int(dfl), int(restarts(signal.SIGCHLD)), int(restarts(signal.SIGUSR1)))
"""


@pytest.mark.anyio
async def test_a_sigchld_handler_restarts_under_max_processes(anyio_backend: str) -> None:
    """Under ``max_processes`` a SIGCHLD handler gets SA_RESTART, so that a
    fork its signal interrupts before the supervisor received it restarts;
    SIG_DFL and other signals' handlers are left alone.  Control: without
    ``max_processes`` nothing is trapped and the handler is as asked."""
    got = await Sandbox(fs_readable=READABLE, max_processes=8).run([PY, "-c", SA_FLAGS])
    assert got.stdout.split() == [b"0", b"1", b"0"], got.stderr
    control = await Sandbox(fs_readable=READABLE).run([PY, "-c", SA_FLAGS])
    assert control.stdout.split() == [b"0", b"0", b"0"], control.stderr


class EverySigaction(Handler):
    """Counts the ``rt_sigaction`` calls it sees, by signal."""

    syscalls: ClassVar[tuple[str, ...]] = ("rt_sigaction",)

    def __init__(self) -> None:
        self.signals: list[int] = []

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.signals.append(ctx.args[0] & 0xFFFFFFFF)
        return NotifAction.continue_()


@pytest.mark.anyio
async def test_a_handler_of_its_own_on_rt_sigaction_sees_every_call(anyio_backend: str) -> None:
    """The filter narrows the trap to new SIGCHLD actions only for
    ``max_processes``'s own handler; one of the user's on ``rt_sigaction``
    sees every call (queries included), and SIGCHLD still restarts."""
    every = EverySigaction()
    got = await Sandbox(fs_readable=READABLE, max_processes=8, handlers=[every]).run(
        [PY, "-c", SA_FLAGS])
    assert got.stdout.split() == [b"0", b"1", b"0"], got.stderr
    assert {17, 10} <= set(every.signals)  # SIGCHLD and SIGUSR1
    assert len(every.signals) > 10  # the interpreter's own start sets many


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_as_uid_65534_dash_pipelines_under_max_processes(backend: str) -> None:
    """The same from a uid 65534 caller (its supervisor writes the flags as
    that uid), with its own ids and with ``uid=`` (a user namespace)."""
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"max_processes": 64}, ["/bin/sh", "-c", DASH]),
        ({"max_processes": 64, "uid": 1234}, ["/bin/sh", "-c", DASH]),
        ({"max_processes": 8}, [PY, "-c", SA_FLAGS])]
    runs = drive(AS_NOBODY, backend, cases)
    assert [run["stdout"] for run in runs] == ["20\n", "20\n", "0 1 0\n"], runs
