"""Tasks that outlive the call that starts them (the supervisor of a process
returned by ``Sandbox.open``).

anyio has no portable way to start a task outside a task group, so this is
the one place that knows the backends: a plain asyncio task, or a Trio
system task.  The task body is anyio code inside a cancel scope we hold.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

import anyio

logger = logging.getLogger("asyncsandlock")


def current_backend() -> str:
    """``"asyncio"`` or ``"trio"``: the backend anyio is running on."""
    # Asked on every supervised spawn: the asyncio answer is one C call, where
    # trio's current_task() would raise (and cost an exception) under asyncio.
    if asyncio._get_running_loop() is not None:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return "asyncio"


class Background:
    """A running background task that can be cancelled and awaited."""

    __slots__ = ("_done", "_scope", "_task")

    def __init__(self) -> None:
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._task: object = None

    @classmethod
    def start(cls, fn: Callable[[], Awaitable[None]], name: str) -> Background:
        self = cls()

        async def body() -> None:
            try:
                with self._scope:
                    await fn()
            except Exception:
                logger.exception("%s failed", name)
            finally:
                self._done.set()

        if current_backend() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(body, name=name)
        else:
            self._task = asyncio.get_running_loop().create_task(body(), name=name)
        return self

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def stop(self) -> None:
        """Cancel the task and wait until it has finished."""
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()
