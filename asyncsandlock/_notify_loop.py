"""The supervisor's asyncio fast path: one reader registration for the run.

anyio's ``wait_readable`` on asyncio adds a reader, waits and removes it
again: ~27 µs per notification even when the fd is already readable, several
times what answering costs.  Here the listener's reader stays registered
while the sandbox lives, and its callback serves the notifications itself
(:meth:`Supervisor.pump`).

Whose task is it?
-----------------
A handler is a coroutine that may use anything asyncio or anyio offers, and
most of that asks ``asyncio.current_task()`` (anyio finds its backend that
way, cancel scopes and locks record their task), which is None in a reader
callback.  So the callback borrows the identity of a *host*: a task parked
on a future of its own.  It is made current (``asyncio.tasks._enter_task``,
what the eager task factory of Python 3.12 does) and its context entered
while the handlers are stepped.  A handler that finishes leaves the host
as it found it.  A handler that suspends has registered its wake-up with
the host's identity, so the host is woken and drives it to its end
(:meth:`Supervisor.finish`), and a new host is parked for the callback.
Tasks are created only when a handler suspends.

Trio has no reader callbacks: there, a task waits on the fd with
``trio.lowlevel.wait_readable`` (cheap on Trio) and is itself the task the
handlers see (the portable path in ``_supervisor.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Any

import anyio

from ._background import current_backend

if TYPE_CHECKING:
    from ._supervisor import Pending, Supervisor

logger = logging.getLogger("asyncsandlock")

_enter_task: Any = getattr(asyncio.tasks, "_enter_task", None)
_leave_task: Any = getattr(asyncio.tasks, "_leave_task", None)


class _Host:
    """A parked task that lends its identity to the reader callback, and
    finishes the first handler that suspends under it."""

    __slots__ = ("_pending", "_wake", "context", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, supervisor: Supervisor,
                 hosts: set[asyncio.Task[None]]) -> None:
        self._wake: asyncio.Future[None] = loop.create_future()
        self._pending: Pending | None = None
        self.context = contextvars.copy_context()
        self.task = loop.create_task(self._run(supervisor), context=self.context)
        hosts.add(self.task)
        self.task.add_done_callback(hosts.discard)
        self.task.add_done_callback(_log_failure)

    @property
    def spent(self) -> bool:
        return self._wake.done()

    def hand_over(self, pending: Pending) -> None:
        self._pending = pending
        if not self._wake.done():  # else cancelled by the handler itself: _run sees it
            self._wake.set_result(None)

    def retire(self) -> None:
        if not self._wake.done():
            self._wake.set_result(None)

    async def _run(self, supervisor: Supervisor) -> None:
        try:
            await self._wake
        except asyncio.CancelledError as exc:
            if self._pending is None:
                raise
            # This task was cancelled around the hand-over (by the handler,
            # or before this task ran): the cancellation is the handler's.
            await supervisor.finish(self._pending, throw=exc)
            return
        if self._pending is not None:
            await supervisor.finish(self._pending)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("syscall handler task failed", exc_info=exc)


async def serve(supervisor: Supervisor) -> bool:
    """Serve ``supervisor`` with a persistent reader; False if this is not
    asyncio (or this asyncio cannot), and the caller should do it."""
    if current_backend() != "asyncio" or _enter_task is None or _leave_task is None:
        return False
    loop = asyncio.get_running_loop()
    fd = supervisor.fd
    hosts: set[asyncio.Task[None]] = set()
    done: asyncio.Future[None] = loop.create_future()
    host = _Host(loop, supervisor, hosts)

    def fail(exc: BaseException) -> None:
        loop.remove_reader(fd)
        if not done.done():
            done.set_exception(exc)

    def on_readable() -> None:
        nonlocal host
        if host.spent:  # pragma: no cover - only a stray cancel of an idle host
            host = _Host(loop, supervisor, hosts)
        try:
            _enter_task(loop, host.task)
        except RuntimeError as exc:  # pragma: no cover - a task is running: a nested loop
            fail(exc)
            return
        try:
            pending = host.context.run(supervisor.pump)
        except asyncio.CancelledError:
            # Raised by a handler itself; it has been answered (refused).
            logger.warning("a syscall handler raised CancelledError", exc_info=True)
            return
        except Exception as exc:
            fail(exc)
            return
        finally:
            _leave_task(loop, host.task)
        if pending is not None:
            host.hand_over(pending)
            host = _Host(loop, supervisor, hosts)
        if supervisor.closed:
            loop.remove_reader(fd)
            if not done.done():
                done.set_result(None)

    try:
        loop.add_reader(fd, on_readable)
    except NotImplementedError:  # pragma: no cover - an event loop without readers
        host.retire()
        return False
    try:
        await done
        # The sandbox is gone.  Handlers still holding a notification may
        # finish (their answers meet ENOENT) until the run stops us.
        host.retire()
        while hosts:
            await asyncio.wait(set(hosts))
    finally:
        loop.remove_reader(fd)
        host.retire()
        for task in hosts:
            task.cancel()
        with anyio.CancelScope(shield=True):
            while hosts:
                await asyncio.wait(set(hosts))
    return True
