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

So spawns go through one gate per event loop: a FIFO lock whose holder
spawns, then yields once before handing the gate to the next waiter.  At
most one spawn happens per loop iteration, and everything else that is ready
runs between two spawns.  An uncontended gate costs a lock acquire without a
yield, and one yield after the spawn (while the child is already running).
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

_GATE: anyio.lowlevel.RunVar[anyio.Lock] = anyio.lowlevel.RunVar("asyncsandlock spawn gate")


def _gate() -> anyio.Lock:
    try:
        return _GATE.get()
    except LookupError:
        gate = anyio.Lock(fast_acquire=True)
        _GATE.set(gate)
        return gate


class SpawnTurn:
    """``async with SpawnTurn():`` around everything one spawn does on the
    loop, preparation included; nothing starts inside a cancelled scope.

    What the body starts must be owned by its result when it exits (or
    cleaned up when it raises): the yield on the way out is shielded, so a
    cancellation that arrives meanwhile is delivered at the caller's next
    checkpoint, once the caller owns the process.
    """

    __slots__ = ("_gate",)

    async def __aenter__(self) -> None:
        # A command started in a scope that is already cancelled would run
        # far enough for side effects before its first checkpoint kills it.
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._gate = _gate()
        await self._gate.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await anyio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._gate.release()
