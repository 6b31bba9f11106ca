"""A supervisor on standby: nothing runs until the first notification.

Most sandboxes that have a listener never use it: the guards of a README
policy (``fs_writable`` brings the metadata guard) wait for a ``chmod`` that
``/bin/true`` never makes.  Starting a task per run to wait on the fd, and
cancelling and joining it after the reap, cost more than the rest of the
spawn.  So a listener is first only *watched*, by the event loop itself,
and the supervisor's task is started the first time the fd has a
notification to read.  A run that traps nothing ends with a synchronous
disarm and no task at all.

Readable is not always a notification: the listener also polls POLLHUP once
every task of the sandbox is gone, and epoll reports that whatever was asked
for.  The callback looks (``poll`` with no timeout) and starts nothing then;
an epoll set of our own (:class:`EpollReaders`) tells it by the events.

Watching
--------
asyncio: a reader callback on the listener fd, removed on the first wake-up.

Trio has no reader callbacks, only tasks that wait.  One system task per
Trio run waits on an epoll set of our own, in which every listener on
standby is registered (one ``epoll_ctl`` each way, under a microsecond);
the task is started with the first listener and lives as long as the run.

A run of one process (``run()``, see ``_collect.py``) has an epoll set of its
own for its pipes and pidfd; its listener is watched there instead (the
watcher is whatever :meth:`Standby.watch` is given), which spares the event
loop a registration and tells a hang-up by its events.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from ._background import Background, current_backend

_READY = select.POLLIN | select.POLLPRI


def _has_notification(fd: int) -> bool:
    """True if ``fd`` has something to read now (not only POLLHUP)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & _READY for _fd, events in poller.poll(0))


class Standby:
    """Watches one listener fd and starts ``serve`` in a :class:`Background`
    task on its first notification.  The fd stays the caller's."""

    __slots__ = ("_down", "_fd", "_name", "_serve", "_watcher", "task")

    def __init__(self, fd: int, serve: Callable[[], Awaitable[None]], name: str) -> None:
        """On standby, not yet watched: see :meth:`watch`."""
        self._fd = fd
        self._serve = serve
        self._name = name
        #: The supervisor's task, once a notification came.
        self.task: Background | None = None
        self._watcher: Watcher | None = None
        self._down = False

    def watch(self, watcher: Watcher | None = None) -> None:
        """Start watching the fd, with ``watcher`` or else the event loop's
        own; a no-op once watched, woken or stood down."""
        if self._watcher is not None or self.task is not None or self._down:
            return
        if watcher is None:
            watcher = loop_watcher()
        watcher.add_reader(self._fd, self._wake)
        self._watcher = watcher

    def _wake(self) -> None:
        self._disarm()
        if _has_notification(self._fd):
            self.task = Background.start(self._serve, self._name)

    def _disarm(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.remove_reader(self._fd)

    def stop_idle(self) -> bool:
        """Stand down if no task was started (True); False if one runs and
        must be stopped with :meth:`stop`."""
        if self.task is not None:
            return False
        self._down = True
        self._disarm()
        return True

    async def stop(self) -> None:
        """Stand down, or cancel and join the supervisor's task."""
        self._down = True
        self._disarm()
        if self.task is not None:
            await self.task.stop()


class Watcher(Protocol):
    """What an asyncio loop offers, and :class:`EpollReaders` too (Trio's
    watcher, and the epoll set of a collected run, ``_collect.py``)."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> object: ...


class EpollReaders:
    """Reader callbacks on an epoll set of our own: the :class:`Watcher`
    shape, served by whoever waits on the set (:meth:`ready` per event).

    Every listener polls a hang-up once its sandbox is gone, whatever was
    asked for; told by the events epoll gives, that drops the reader with
    nothing to serve (and no ``poll`` of its own, see :class:`Standby`)."""

    __slots__ = ("callbacks", "epoll")

    def __init__(self, epoll: select.epoll) -> None:
        self.epoll = epoll
        self.callbacks: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.epoll.register(fd, select.EPOLLIN)
        self.callbacks[fd] = callback

    def remove_reader(self, fd: int) -> None:
        if self.callbacks.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def ready(self, fd: int, events: int) -> None:
        callback = self.callbacks.get(fd)
        if callback is None:
            return
        if events & select.EPOLLIN:
            callback()  # the standby's wake-up: it removes fd first
        else:
            self.remove_reader(fd)  # hung up: the sandbox is gone, nothing to serve


class _TrioWatcher(EpollReaders):
    """One Trio system task waiting on an epoll set of listeners."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(select.epoll())  # CLOEXEC by default
        Background.start(self._watch, "asyncsandlock listener watcher")

    async def _watch(self) -> None:
        try:
            while True:
                await anyio.wait_readable(self.epoll.fileno())
                for fd, events in self.epoll.poll(0):
                    self.ready(fd, events)
        finally:
            _WATCHER.set(None)
            anyio.notify_closing(self.epoll.fileno())
            self.epoll.close()


_WATCHER: anyio.lowlevel.RunVar[_TrioWatcher | None] = anyio.lowlevel.RunVar(
    "asyncsandlock listener watcher", None)


def loop_watcher() -> Watcher:
    """The event loop's reader callbacks: asyncio's own, Trio's watcher."""
    return _trio_watcher() if current_backend() == "trio" else asyncio.get_running_loop()


def _trio_watcher() -> _TrioWatcher:
    watcher = _WATCHER.get()
    if watcher is None:
        watcher = _TrioWatcher()
        _WATCHER.set(watcher)
    return watcher
