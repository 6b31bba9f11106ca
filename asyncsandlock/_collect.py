"""One process, driven to its end by one task and one epoll set.

The general path of ``supervise`` (``_run.py``) starts a task per output
stream in a task group, and each task and the waiter park on a file
descriptor of their own: for a run of ``/bin/true`` that is two task starts,
three registrations with the event loop, a task group to enter and leave and
a loop iteration or two for the tasks to come back, about a tenth of the
whole run on asyncio.  The usual run has one process and nothing to feed it,
so here its pipes, its pidfd and its listener on standby go into one epoll
set of the run's own, and the calling task waits on that one fd.

An exiting command makes that set ready up to three times: its listener
hangs up as its last task goes, its pipes end as its files are closed, its
pidfd turns readable last.  Only the last needs the task.  On asyncio a wake
of a task costs two loop iterations (the reader callback resolves a future,
the task runs in the next), so there the set is served by a reader callback
that wakes the task only once the pidfd fired (or everything ended); on Trio
a task waiting on the fd is what the loop does cheaply, and the task serves
it.  :class:`_Run` is what both do with what the set reports.

What the general path guarantees holds here too: the pipes are drained while
the command runs (a child never blocks on a full pipe), a flood lets the loop
run between wake-ups (at most ``_streams.YIELD_EVERY`` per stream per wake-up), the
process is reaped as soon as it exits (what it left behind killed by the
reap), a deadline kills it with ``TIMEOUT`` and the pipes are then read to
their end, and on cancellation the caller's ``close_all`` kills and reaps it.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable, Sequence

import anyio

from ._background import current_backend
from ._process import SandboxedProcess
from ._reaper import forget
from ._standby import EpollReaders
from ._streams import READ_CHUNK, YIELD_EVERY, Capture
from ._types import ExitReason


class _Reader:
    __slots__ = ("capture", "fd", "full")

    def __init__(self, fd: int, capture: Capture, full: Callable[[], None] | None) -> None:
        self.fd = fd
        self.capture = capture
        self.full = full

    def read(self) -> bool:
        """Take what the pipe has (up to the per-wake budget); False at EOF."""
        taken = 0
        while taken < YIELD_EVERY:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                return True
            if not data:
                return False
            taken += len(data)
            if not self.capture.add(data) and self.full is not None:
                full, self.full = self.full, None
                full()
        return True


def can_collect(procs: Sequence[SandboxedProcess]) -> bool:
    """True when :func:`collect` can drive ``procs``: one process with its
    own process group (its leftovers die with it, so its pipes end) and no
    stdin pipe to feed."""
    return (len(procs) == 1 and procs[0].stdin is None and procs[0]._own_group
            and not procs[0]._finished)


class _Run:
    """One collected run: its epoll set and what is left to wait for."""

    __slots__ = ("epoll", "exited", "listeners", "pidfd", "proc", "readers", "reaped")

    def __init__(self, epoll: select.epoll, proc: SandboxedProcess) -> None:
        self.epoll = epoll
        self.proc = proc
        self.listeners = EpollReaders(epoll)
        self.readers: dict[int, _Reader] = {}
        self.pidfd = proc._pidfd
        #: The pidfd fired, and the process was reaped.
        self.exited = self.reaped = False

    def add(self, reader: _Reader) -> None:
        self.readers[reader.fd] = reader
        self.epoll.register(reader.fd, select.EPOLLIN)

    def serve(self) -> bool:
        """Take what the set reports; True when the task has something to do:
        reap (the pidfd fired) or return (reaped, and every pipe ended)."""
        ended: list[int] = []
        look = True
        while look:
            look = False
            for fd, events in self.epoll.poll(0):
                if fd == self.pidfd:
                    if not self.exited:
                        ended.append(fd)
                        self.exited = True
                elif (reader := self.readers.get(fd)) is not None:
                    if not reader.read():
                        ended.append(fd)
                        del self.readers[fd]
                else:
                    self.listeners.ready(fd, events)
                    if events & select.EPOLLHUP and fd == self.proc._listener:
                        self._hung_up()
                        # What that did takes about as long as the rest of
                        # the command's exit: look once more (what ended is
                        # seen again, and skipped), and the pidfd has
                        # usually fired by then, a wake-up of its own saved.
                        look = not self.exited
        if ended and not (self.exited and not self.readers):
            # The set is waited on again: what ended must leave it (level
            # triggered, it would fire at once), the pidfd before the reap
            # closes it.  When everything ended, nobody waits on the set
            # again and closing it drops them all: three epoll_ctl fewer.
            for fd in ended:
                self.epoll.unregister(fd)
        if self.proc._finished:
            # Reaped by another waiter (a caller that took the process from
            # task_status), which closed the pidfd: it left the set unseen.
            self.exited = True
        return self.exited != self.reaped or (self.reaped and not self.readers)

    def _hung_up(self) -> None:
        """The listener hung up: every task of the sandbox has exited (the
        filter has no user left), so no notification can come, and nothing
        is left for the reaper to kill.  What the reap would do about both
        is done now, while the command is still exiting (the hang-up comes
        early in exit, before the pidfd in ~9 runs of 10), not on the reap's
        path: no group to kill, the reaper told to forget the sandbox (its
        id is still pinned by the zombie), and the listener closed if no
        supervisor task started (the kernel frees the program in a kworker
        on our CPU, which runs before us): ~30 us of a /bin/true run."""
        proc = self.proc
        proc._emptied = True  # the reap has no leftovers to kill
        forget(proc.pid)
        standby = proc._supervisor
        if standby is not None and standby.stop_idle():
            proc._close_listener()


async def collect(proc: SandboxedProcess, out: Capture, err: Capture,
                  full: Callable[[], None] | None, timeout: float | None) -> None:
    """Drain ``proc``'s pipes into ``out``/``err`` and reap it; past the
    deadline ``timeout`` it is killed (reason TIMEOUT) and reaped, and its
    pipes read to their end."""
    epoll = select.epoll()  # close-on-exec
    run = _Run(epoll, proc)
    try:
        for stream, capture in ((proc.stdout, out), (proc.stderr, err)):
            if stream is not None:
                run.add(_Reader(stream.fileno(), capture, full))
        epoll.register(run.pidfd, select.EPOLLIN)
        if proc._supervisor is not None:  # left for us by run(): see EpollReaders
            proc._supervisor.watch(run.listeners)
        if timeout is None:
            await _serve(run, proc)
        else:
            with anyio.move_on_after(timeout) as scope:
                await _serve(run, proc)
            if scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    if not proc._finished:
                        proc._kill_for(ExitReason.TIMEOUT)
                        await proc.wait()  # closes the pidfd: it leaves the set
                    # Killed with its group: its pipes end now.
                    await _serve(run, proc)
    finally:
        # Only this task waited on the set, and its wait is over.  A listener
        # still on it (cancelled before the reap) is the caller's to reap.
        run.listeners.callbacks.clear()
        epoll.close()


async def _serve(run: _Run, proc: SandboxedProcess) -> None:
    wait = _wait_asyncio if current_backend() == "asyncio" else _wait_trio
    if proc._finished:  # reaped by someone else (a deadline's kill, say)
        run.exited = run.reaped = True
    while run.readers or not run.reaped:
        if run.exited == run.reaped:
            await wait(run)
        if run.exited and not run.reaped:
            run.reaped = True
            await proc._reap_ready()


async def _wait_trio(run: _Run) -> None:
    while True:
        await anyio.wait_readable(run.epoll.fileno())
        if run.serve():
            return


async def _wait_asyncio(run: _Run) -> None:
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def ready() -> None:
        try:
            done = run.serve()
        except BaseException as exc:  # to the task: a callback's would only be logged
            loop.remove_reader(fd)
            if not woken.done():
                woken.set_exception(exc)
            return
        if done and not woken.done():
            woken.set_result(None)

    fd = run.epoll.fileno()
    loop.add_reader(fd, ready)
    try:
        await woken
    finally:
        loop.remove_reader(fd)
