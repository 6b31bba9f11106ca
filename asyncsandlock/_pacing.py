"""Spawns take turns with the rest of the event loop.

A spawn is one blocking call: the C core's vfork suspends the calling thread
until the child has gone through its confinement steps and exec'd, about
half a millisecond, during which the event loop runs nothing else.  One spawn
at a time is harmless; many at once are not.  On asyncio every task made
ready in one loop iteration runs back to back in that iteration, so 500 runs
started together spawn one after the other without the loop ever getting its
turn: other tasks are late by hundreds of milliseconds.  A checkpoint before
each spawn does not help, since all 500 tasks come back from it in the same
next iteration.

So spawns go through one gate per event loop, taken for everything a spawn
does on the loop (the preparation of 500 runs costs tens of milliseconds
too), and handed on in FIFO order, one turn per loop iteration: whoever
leaves the gate does not hand it on itself but asks the loop to do it "soon",
in a later iteration, after what is ready now has run.  So an uncontended
spawn pays no yield at all, only a callback scheduled on its way out.  On
asyncio that is ``call_soon`` (twice, see ``_Gate``); on Trio a parked
system task that is rescheduled (``run_sync_soon`` would wake the loop
through a socket, a system call per spawn).
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections import deque
from collections.abc import Callable

import anyio
import anyio.lowlevel

from ._background import current_backend


class _Gate:
    """One event loop's gate: taken, and the waiters for it."""

    __slots__ = ("call_soon", "taken", "waiters")

    def __init__(self) -> None:
        self.taken = False
        self.waiters: deque[anyio.Event] = deque()
        #: Calls ``pass_on`` in a later loop iteration.
        self.call_soon: Callable[[], object]
        if current_backend() == "trio":
            self.call_soon = _TrioOpener(self).wake
        else:
            # Two iterations later, not one: what became ready while the loop
            # was held (a timer, a readable fd) is seen at the start of the
            # next iteration, but the task waiting for it runs only in the one
            # after (its future's callback schedules it).  Handed on then, the
            # next spawn comes after that task, not before it.
            call_soon = asyncio.get_running_loop().call_soon
            self.call_soon = functools.partial(call_soon, call_soon, self.pass_on)

    def pass_on(self) -> None:
        """Hand the gate to the first waiter (it stays taken), or open it."""
        if self.waiters:
            self.waiters.popleft().set()
        else:
            self.taken = False


class _TrioOpener:
    """A system task that calls ``gate.pass_on()`` each time it is woken.

    It is woken at most once per turn, while it sleeps: the gate is handed
    on only by it (or, while it sleeps, by a waiter that never spawned).
    """

    __slots__ = ("_gate", "_pending", "_reschedule", "_task")

    def __init__(self, gate: _Gate) -> None:
        import trio

        self._gate = gate
        self._task: trio.lowlevel.Task | None = None
        self._pending = False
        self._reschedule = trio.lowlevel.reschedule
        trio.lowlevel.spawn_system_task(self._serve, name="asyncsandlock spawn gate")

    def wake(self) -> None:
        if self._task is None:  # not started yet: it hands on when it starts
            self._pending = True
        else:
            self._reschedule(self._task)

    async def _serve(self) -> None:
        import trio

        def abort(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.SUCCEEDED

        self._task = trio.lowlevel.current_task()
        if self._pending:
            self._gate.pass_on()
        while True:  # until the run ends and cancels its system tasks
            await trio.lowlevel.wait_task_rescheduled(abort)
            self._gate.pass_on()


_GATE: anyio.lowlevel.RunVar[_Gate] = anyio.lowlevel.RunVar("asyncsandlock spawn gate")


class _Last:
    """The last run's event loop (asyncio's loop, Trio's token, by weak
    reference) with its gate, as one pair (threads each running a loop
    read it whole): a RunVar lookup goes through anyio's backend detection,
    ~3 us on every spawn, where a program nearly always runs one loop."""

    __slots__ = ("pair",)

    def __init__(self) -> None:
        self.pair: tuple[weakref.ref[object], _Gate] | None = None


_last = _Last()


def _run_key() -> object:
    loop = asyncio._get_running_loop()
    if loop is not None:
        return loop
    import trio
    return trio.lowlevel.current_trio_token()


def _gate() -> _Gate:
    key = _run_key()
    pair = _last.pair
    if pair is not None and pair[0]() is key:
        return pair[1]
    try:
        gate = _GATE.get()
    except LookupError:
        gate = _Gate()
        _GATE.set(gate)
    _last.pair = (weakref.ref(key), gate)
    return gate


class SpawnTurn:
    """``async with SpawnTurn():`` around everything one spawn does on the
    loop, preparation included; nothing starts inside a cancelled scope.

    Entering waits for the turn (a checkpoint when it must wait); leaving
    does not yield.
    """

    __slots__ = ("_gate",)

    async def __aenter__(self) -> None:
        # A command started in a scope that is already cancelled would run
        # far enough for side effects before its first checkpoint kills it.
        await anyio.lowlevel.checkpoint_if_cancelled()
        gate = self._gate = _gate()
        if not gate.taken:
            gate.taken = True
            return
        turn = anyio.Event()
        gate.waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed the gate, but leaving without a spawn
                gate.pass_on()
            else:
                gate.waiters.remove(turn)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._gate.call_soon()
