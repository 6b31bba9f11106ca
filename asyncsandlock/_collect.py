"""One process, driven to its end by one task waiting on one epoll set.

The general path of ``supervise`` (``_run.py``) starts a task per output
stream in a task group, and each task and the waiter park on a file
descriptor of their own: for a run of ``/bin/true`` that is two task starts,
three registrations with the event loop, a task group to enter and leave and
a loop iteration or two for the tasks to come back, about a tenth of the
whole run on asyncio.  The usual run has one process and nothing to feed it,
so here its pipes and its pidfd go into one epoll set of the run's own and
the calling task waits on that one fd: the pipes and the exit of a command
that ends at once come back in a single wake-up.

What the general path guarantees holds here too: the pipes are drained while
the command runs (a child never blocks on a full pipe), a flood lets the loop
run between wake-ups (at most ``_READ_PER_WAKE`` per stream per wake-up), the
process is reaped as soon as it exits (what it left behind killed by the
reap), a deadline kills it with ``TIMEOUT`` and the pipes are then read to
their end, and on cancellation the caller's ``close_all`` kills and reaps it.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Sequence

import anyio

from ._process import SandboxedProcess
from ._streams import Capture
from ._types import ExitReason

#: Bytes taken from one stream per wake-up before the loop gets its turn.
_READ_PER_WAKE = 1 << 20
_CHUNK = 65536


class _Reader:
    __slots__ = ("capture", "fd", "full")

    def __init__(self, fd: int, capture: Capture, full: Callable[[], None] | None) -> None:
        self.fd = fd
        self.capture = capture
        self.full = full

    def read(self) -> bool:
        """Take what the pipe has (up to the per-wake budget); False at EOF."""
        taken = 0
        while taken < _READ_PER_WAKE:
            try:
                data = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                return True
            if not data:
                return False
            taken += len(data)
            if not self.capture.add(data) and self.full is not None:
                full, self.full = self.full, None
                full()
        return True


class _Listeners:
    """The supervisor's listener on standby (``_standby.py``), watched in the
    run's epoll set rather than by the event loop: no registration with the
    loop to make and drop, and the hang-up that every listener reports when
    its sandbox exits is told from a notification by the events epoll gives,
    without a poll of its own."""

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


def can_collect(procs: Sequence[SandboxedProcess]) -> bool:
    """True when :func:`collect` can drive ``procs``: one process with its
    own process group (its leftovers die with it, so its pipes end) and no
    stdin pipe to feed."""
    return (len(procs) == 1 and procs[0].stdin is None and procs[0]._own_group
            and not procs[0]._finished)


async def collect(proc: SandboxedProcess, out: Capture, err: Capture,
                  full: Callable[[], None] | None, timeout: float | None) -> None:
    """Drain ``proc``'s pipes into ``out``/``err`` and reap it; past the
    deadline ``timeout`` it is killed (reason TIMEOUT) and reaped, and its
    pipes read to their end."""
    epoll = select.epoll()  # close-on-exec
    listeners = _Listeners(epoll)
    try:
        readers: dict[int, _Reader] = {}
        for stream, capture in ((proc.stdout, out), (proc.stderr, err)):
            if stream is not None:
                reader = _Reader(stream.fileno(), capture, full)
                readers[reader.fd] = reader
                epoll.register(reader.fd, select.EPOLLIN)
        pidfd = proc._pidfd
        epoll.register(pidfd, select.EPOLLIN)
        if proc._supervisor is not None:  # left for us by run(): see _Listeners
            proc._supervisor.watch(listeners)
        if timeout is None:
            await _serve(epoll, readers, listeners, pidfd, proc)
        else:
            with anyio.move_on_after(timeout) as scope:
                await _serve(epoll, readers, listeners, pidfd, proc)
            if scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    if not proc._finished:
                        proc._kill_for(ExitReason.TIMEOUT)
                        await proc.wait()
                    # Killed with its group: its pipes end now.
                    await _serve(epoll, readers, listeners, -1, proc)
    finally:
        # Only this task waited on the set, and its wait is over.  A listener
        # still on it (cancelled before the reap) is the caller's to reap.
        listeners.callbacks.clear()
        epoll.close()


async def _serve(epoll: select.epoll, readers: dict[int, _Reader], listeners: _Listeners,
                 pidfd: int, proc: SandboxedProcess) -> None:
    exited = pidfd < 0 or proc._finished
    if exited and pidfd >= 0:
        epoll.unregister(pidfd)
    while readers or not exited:
        await anyio.wait_readable(epoll.fileno())
        for fd, events in epoll.poll(0):
            if fd == pidfd:
                if not exited:
                    epoll.unregister(pidfd)
                    exited = True
                    await proc._reap_ready()
            elif (reader := readers.get(fd)) is not None:
                if not reader.read():
                    epoll.unregister(fd)
                    del readers[fd]
            else:
                listeners.ready(fd, events)

