"""One idiom for the fds we own.

Whoever holds an fd owns it, and an owner closes it in one way: the field
that holds it becomes -1 *before* the close, so that nothing reached from
the close (a woken task, a finalizer, a second close) can see a number the
kernel may already have handed to someone else; then, only if the event loop
may hold a registration for it, ``anyio.notify_closing`` wakes whoever waits
on it (with ClosedResourceError) and drops the registration; then
``os.close``.

``notify_closing`` is skipped where nothing can be registered, because it
costs more than the close: an fd never handed to the loop, or one whose
only waiter has returned (anyio's asyncio waits remove their reader once
they return; Trio leaves a disarmed one-shot entry that close() removes).
"""

from __future__ import annotations

import os

import anyio


def close_fd(fd: int, *, watched: bool = True) -> None:
    """Close ``fd`` (nothing if it is -1); ``watched``: the event loop may hold
    a registration for it, which is dropped first."""
    if fd < 0:
        return
    if watched:
        anyio.notify_closing(fd)
    os.close(fd)


def close_fds(fds: list[int]) -> None:
    """Close every fd of ``fds``, never watched by the loop (an ExitStack
    callback for fds made one by one: one callback, not one per fd)."""
    for fd in fds:
        os.close(fd)
    fds.clear()


class FdHolder:
    """An owned fd that tasks wait on: :attr:`fd` becomes -1 once closed."""

    __slots__ = ("fd", "waiting")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: Tasks parked in :meth:`wait` on ``fd`` right now.
        self.waiting = 0

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        # Only a parked task can hold a registration (see the module's essay).
        close_fd(fd, watched=self.waiting > 0)

    def checked(self) -> int:
        """The fd; ClosedResourceError once closed."""
        if self.fd < 0:
            raise anyio.ClosedResourceError
        return self.fd

    async def wait(self, fd: int, writable: bool = False) -> None:
        self.waiting += 1
        try:
            await (anyio.wait_writable(fd) if writable else anyio.wait_readable(fd))
        finally:
            self.waiting -= 1
