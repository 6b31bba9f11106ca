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
from collections.abc import Callable
from typing import Any

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


class Cleanup:
    """What a scope owns until ownership passes on: ``callback(fn, *args)``
    registers a cleanup, run in reverse order when the ``with`` block ends,
    unless :meth:`pop_all` dropped them first (the other owner has them).

    The two scopes of trio's ``_subprocess.py`` (``always_cleanup`` and
    ``cleanup_on_fail``) are built from these in every spawn.  Written
    here rather than taken from ``contextlib.ExitStack``, which makes a
    closure per callback and walks its exit protocol per callback: ~10 us of
    a spawn's path, against ~4 here (the same five scopes, ``timeit``).
    As with an ExitStack, every cleanup runs even if one fails; the first
    failure is raised, any later one chained to it.
    """

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callback(self, fn: Callable[..., object], *args: Any) -> None:
        self._calls.append((fn, args))

    def pop_all(self) -> None:
        """Keep nothing: whatever was registered is someone else's now."""
        self._calls = []

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        calls, self._calls = self._calls, []
        failed: BaseException | None = None
        for fn, args in reversed(calls):
            try:
                fn(*args)
            except BaseException as exc:  # the others still run
                if failed is not None:
                    exc.__context__ = failed
                failed = exc
        if failed is not None:
            raise failed
