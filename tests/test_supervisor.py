"""The supervisor under load and under stress: handlers that wait, many
sandboxes at once, cancellation, signals, and the event loop staying free.

Every async test runs on asyncio and on Trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import threading
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import ObjectReceiveStream
from test_handlers import child_binary, out

from asyncsandlock import Handler, HandlerCtx, NotifAction, Sandbox, SandboxedProcess, _spawn
from asyncsandlock._supervisor import BATCH

from conftest import system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture(scope="session")
def child() -> str:
    return child_binary()


def sandbox(child: str, *handlers: Handler) -> Sandbox:
    return system_sandbox(fs_readable=[os.path.dirname(child)], handlers=list(handlers))


class Gate(Handler):
    """Holds every trapped getppid until ``release`` is set."""

    syscalls = ("getppid",)

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.ctxs: list[HandlerCtx] = []
        self.cancelled = False

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.ctxs.append(ctx)
        self.entered.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        return NotifAction.continue_()


class Count(Handler):
    """Counts getpid calls per pid; every ``suspend_every``-th call awaits first."""

    syscalls = ("getpid",)

    def __init__(self, suspend_every: int = 0) -> None:
        self.calls: Counter[int] = Counter()
        self.suspend_every = suspend_every

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.calls[ctx.pid] += 1
        if self.suspend_every and self.calls[ctx.pid] % self.suspend_every == 0:
            await anyio.lowlevel.checkpoint()
        return NotifAction.continue_()


async def read_until(stream: ObjectReceiveStream[bytes] | Any, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        data += await stream.receive()
    return data


async def test_slow_handler_holds_only_the_trapped_thread(child: str) -> None:
    gate, count = Gate(), Count()
    sb = sandbox(child, gate, count)
    async with await sb.open([child, "fork-slow", "500"]) as proc:
        assert proc.stdout is not None
        await gate.entered.wait()
        # The forked child waits in getppid; its parent's 500 getpid are served...
        early = await read_until(proc.stdout, b"fast done")
        assert early.startswith(b"fast done 1\n")
        # ...and so is another sandbox.
        other = await sandbox(child, Count()).run([child, "getpid", "100"])
        assert other.stdout == f"getpid {other_pid(other)}\n".encode()
        gate.release.set()
        rest = await read_until(proc.stdout, b"reaped")
    assert b"slow done 1\n" in rest
    assert proc.returncode == 0
    assert sum(count.calls.values()) == 501  # and the getpid() it compares with


def other_pid(result: Any) -> str:
    return result.stdout.split()[1].decode()  # type: ignore[no-any-return]


async def test_cancelling_the_run_kills_reaps_and_cancels_the_handler(child: str) -> None:
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sandbox(child, gate).run, [child, "before-after"])
        await gate.entered.wait()
        tg.cancel_scope.cancel()
    assert gate.cancelled
    (ctx,) = gate.ctxs
    assert not ctx.is_valid()
    with pytest.raises(ProcessLookupError):
        os.kill(ctx.pid, 0)  # reaped, not a zombie
    gc.collect()  # the cancelled frames held the policy (and its ruleset fd)


async def test_a_signal_interrupting_a_trapped_call_does_not_break_the_loop(
        child: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A listener without WAIT_KILLABLE_RECV (as before Linux 5.19): a signal
    # ends the call the handler holds.  With it, see the next test.
    monkeypatch.setattr(_spawn, "_SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", 0)
    gate, count = Gate(), Count()
    async with await sandbox(child, gate, count).open([child, "signal", "50"]) as proc:
        await gate.entered.wait()
        (ctx,) = gate.ctxs
        os.kill(ctx.pid, signal.SIGUSR1)
        while ctx.is_valid():  # the kernel withdraws the notification  # noqa: ASYNC110
            await anyio.sleep(0.001)
        gate.release.set()  # our answer now meets ENOENT, which is fine
        assert proc.stdout is not None
        output = await read_until(proc.stdout, b"done")
    assert output == f"getppid -1 {errno.EINTR}\ndone 1\n".encode()
    assert proc.returncode == 0
    assert sum(count.calls.values()) == 51


async def test_a_signal_waits_for_the_answer_to_a_received_call(child: str) -> None:
    """WAIT_KILLABLE_RECV: once received, a call is not ended by a signal
    with a handler; the signal runs after the answer (tests/test_fork_signals.py)."""
    gate, count = Gate(), Count()
    async with await sandbox(child, gate, count).open([child, "signal", "50"]) as proc:
        await gate.entered.wait()
        (ctx,) = gate.ctxs
        os.kill(ctx.pid, signal.SIGUSR1)
        await anyio.sleep(0.2)
        assert ctx.is_valid()  # still waiting for us
        gate.release.set()
        assert proc.stdout is not None
        output = await read_until(proc.stdout, b"done")
    name, rc, _ = output.split(b"\n")[0].split()
    assert (name, int(rc) > 0) == (b"getppid", True)  # answered (continue_()), not EINTR
    assert output.endswith(b"done 1\n")
    assert proc.returncode == 0
    assert sum(count.calls.values()) == 51


async def test_handler_state_is_shared_across_concurrent_sandboxes(child: str) -> None:
    count = Count(suspend_every=7)
    sb = sandbox(child, count)
    results: list[Any] = []

    async def one() -> None:
        results.append(await sb.run([child, "getpid", "300"], timeout=60))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert [r.returncode for r in results] == [0] * 6
    assert len(count.calls) == 6
    assert all(n == 300 for n in count.calls.values())


class LockedCounter(Handler):
    """Uses anyio primitives across a suspension: a lock, a cancel scope."""

    syscalls = ("getpid",)

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.total = 0

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        with anyio.fail_after(60):
            async with self.lock:
                value = self.total
                await anyio.lowlevel.checkpoint()
                self.total = value + 1
        return NotifAction.return_value(self.total)


async def test_many_sandboxes_with_handlers_concurrently(child: str) -> None:
    count, locked = Count(suspend_every=10), LockedCounter()
    plain, serialized = sandbox(child, count), sandbox(child, locked)
    results: dict[int, Any] = {}

    async def one(index: int) -> None:
        sb = plain if index % 2 else serialized
        results[index] = await sb.run([child, "getpid", "200"], timeout=120)

    async with anyio.create_task_group() as tg:
        for index in range(16):
            tg.start_soon(one, index)
    for index, result in results.items():
        assert result.returncode == 0, out(result)
        if index % 2:
            assert out(result) == f"getpid {other_pid(result)}\n"
    assert locked.total == 8 * 200  # no lost update: the lock held across awaits
    assert sum(count.calls.values()) == 8 * 200


class Approve(Handler):
    """Waits for a verdict from a memory object stream, under a deadline."""

    syscalls = ("getppid",)

    def __init__(self, verdicts: ObjectReceiveStream[bool]) -> None:
        self.verdicts = verdicts
        self.timed_out = 0

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        with anyio.move_on_after(0):
            await anyio.sleep(1)  # cancelled by the expired scope, not slept
        if not ctx.is_valid():
            return NotifAction.kill()
        with anyio.fail_after(60):
            verdict = await self.verdicts.receive()
        return NotifAction.continue_() if verdict else NotifAction.errno(errno.EACCES)


@pytest.mark.parametrize("verdict", [True, False])
async def test_handler_waits_on_a_stream_and_cancel_scopes(child: str, verdict: bool) -> None:
    send, receive = anyio.create_memory_object_stream[bool](1)
    async with send, receive:
        await send.send(verdict)
        result = await sandbox(child, Approve(receive)).run([child, "getppid"], timeout=60)
    expected = f"getppid {os.getpid()} 0\n" if verdict else f"getppid -1 {errno.EACCES}\n"
    assert out(result) == expected


async def test_a_busy_sandbox_leaves_the_event_loop_free(child: str) -> None:
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        result = await sandbox(child, Count()).run([child, "getpid", str(BATCH * 100)])
        done.set()
    assert result.returncode == 0
    assert ticks > 1


async def test_no_thread_is_created(child: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    result = await sandbox(child, Count(suspend_every=3), Gate()).run(
        [child, "getpid", "1000"], timeout=60)
    assert result.returncode == 0
    assert {t.ident for t in threading.enumerate()} <= before


async def test_open_process_supervisor_stops_with_the_process(child: str) -> None:
    gate = Gate()
    proc = await sandbox(child, gate).open([child, "before-after"])
    with contextlib.suppress(Exception):
        await gate.entered.wait()
        proc.kill()
        await proc.wait()
    await proc.aclose()
    assert gate.cancelled
    assert proc.returncode == -9


class CancelsItself(Handler):
    """Cancels its own task the asyncio way, in its first (inline) step."""

    syscalls = ("getppid",)

    def __init__(self, soon: bool) -> None:
        self.soon = soon

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        if self.soon:
            loop.call_soon(task.cancel)
        else:
            task.cancel()
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            task.uncancel()
            return NotifAction.errno(errno.ECANCELED)
        raise AssertionError("not cancelled")


@pytest.mark.parametrize("soon", [False, True], ids=["at-once", "call-soon"])
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_native_cancel_reaches_a_handler_that_suspended(child: str,
                                                                      soon: bool) -> None:
    """Regression test for the asyncio fast path: a cancellation of the
    handler's task made around the hand-over of the suspended handler (by
    the handler itself, or between the hand-over and the first step of the
    task that finishes it) is the handler's, not lost."""
    handler = CancelsItself(soon)
    result = await sandbox(child, handler).run([child, "getppid"], timeout=60)
    assert out(result) == f"getppid -1 {errno.ECANCELED}\n"


async def test_a_wait_while_the_reap_stands_down_returns_once_it_is_over(
        child: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # run() reaps without a lock when nobody else waits (_process.py,
    # _reap_ready); a supervisor that served a call is stopped after the
    # waitid, with awaits.  A wait() that comes meanwhile must queue behind
    # that rest, not return with the exit status and the supervisor running.
    standing_down = anyio.Event()
    stop = SandboxedProcess._stop_supervisor

    async def slow_stop(self: SandboxedProcess) -> None:
        standing_down.set()
        await anyio.sleep(0.05)
        await stop(self)

    monkeypatch.setattr(SandboxedProcess, "_stop_supervisor", slow_stop)
    count = Count()
    seen: list[tuple[int, bool]] = []
    async with anyio.create_task_group() as tg:
        proc = await tg.start(sandbox(child, count).run, [child, "getpid", "3"])
        await standing_down.wait()
        seen.append((await proc.wait(), proc._finished))
    assert sum(count.calls.values()) > 0  # the supervisor served a call
    assert seen == [(0, True)]
