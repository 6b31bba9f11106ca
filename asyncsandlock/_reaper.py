"""The reaper: every sandbox dies with its caller, whatever kills the caller.

``PR_SET_PDEATHSIG`` kills a sandbox's first process when the caller dies,
but not what that process started: a double-forked grandchild would run on
with no time limit.  The kernel offers no "kill my process group when I die"
that covers SIGKILL, and the caller may start no thread, so a second process
does it: one small reaper per caller process (``csrc/reaper.c``), started at
the first spawn.

It holds the read end of a pipe, the caller the only write end.  The caller
writes a ``watch`` record for each sandbox right after the spawn (its
process group, or its pid when it has no group of its own: nested sandboxes,
where only the first process can be named) and a ``forget`` record right
before it reaps the sandbox's first process.  Whatever ends the caller --
exit, exec (the end is CLOEXEC), any signal, SIGKILL and the OOM killer
included -- the kernel closes the write end, the reaper reads EOF, sends
SIGKILL to every group and pid still watched, and exits.  The reaper keeps
its set in bitmaps that hold every possible pid, so there is no limit on the
number of sandboxes; it reads in batches (see reaper.c), which keeps a
spawn's cost to two pipe writes and delays the kill by 10 ms at most.

Why the kill cannot hit a stranger that reused a pid:

- a sandbox's group id is the pid of its first process, which the caller
  leaves unreaped until after it has written ``forget``: while the zombie (or
  any member of the group) exists, the number cannot be handed out again;
- the reaper applies records in the order they were written and acts only on
  EOF, which comes after every record: at that moment its set is exactly the
  caller's, every id still pinned by a child the caller had not reaped;
- once the caller is dead, init reaps those children, and the number of a
  group whose every member has died becomes free.  By then the reaper's kill
  is on its way, while the kernel hands out pids in increasing order and
  comes back to a freed one only after a full lap of ``pid_max``.

The reaper is outside every sandbox: it is forked from the caller apart from
any confinement, so a sandbox's Landlock signal scope (ABI 6) stops it from
signalling the reaper as it stops it from signalling the caller.  It leaves
the caller's session and ignores every signal but SIGKILL and SIGSTOP, so a
terminal's Ctrl-C or hangup ends the caller, not the reaper.

When a record cannot be written -- the reaper was killed (EPIPE), or stopped
while 64 KiB of records piled up (EAGAIN: the write end is non-blocking, as
nothing may block the event loop) -- the reaper is replaced: SIGKILL through
its pidfd (a stale one could otherwise act on a set it no longer knows in
full), a new one, and the whole current set sent to it.  A forked copy of the
caller closes its copy of the write end (or the caller's death would go
unnoticed while the copy lives) and starts a reaper of its own if it spawns.

One window stays open: the watch is written when the spawn has returned,
tens of microseconds after the command started.  A caller killed inside it
leaves that sandbox to PDEATHSIG, which kills its first process only.

A caller that is PID 1 of its pid namespace needs none: when it dies the
kernel kills every process of the namespace, sandboxes included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
from dataclasses import dataclass

from ._core import lib
from ._exceptions import SpawnError
from ._fd import close_fd
from ._spawn import Spawned, _kill_and_reap

#: For tests only: "1" starts no reaper, to show what it prevents.
_DISABLED = os.environ.get("ASYNCSANDLOCK_TEST_NO_REAPER") == "1"

_RECORD = struct.Struct("=ii")


@dataclass(frozen=True, slots=True)
class _Reaper:
    pid: int
    pidfd: int
    fd: int  #: the pipe's write end, non-blocking

    @classmethod
    def start(cls, records: bytes) -> _Reaper:
        """A new reaper, already told ``records``."""
        read, write = os.pipe2(os.O_CLOEXEC)
        pidfd = -1
        try:
            pid = lib.asl_reaper_start(read)
            # Ours closed before writing: a reaper that died is then EPIPE,
            # not a write blocked forever.
            os.close(read)
            read = -1
            if pid < 0:
                raise SpawnError(-pid, f"cannot start the reaper process: {os.strerror(-pid)}",
                                 step="reaper")
            # Not our child, but it exits only on EOF, which we hold back.
            pidfd = os.pidfd_open(pid)
            # Blocking for this first write: the new reaper is reading, and
            # the set may be more than a pipe buffers.
            view = memoryview(records)
            while view:
                view = view[os.write(write, view):]
            os.set_blocking(write, False)
        except BaseException:
            if pidfd >= 0:
                cls(pid, pidfd, write).kill()
            else:
                os.close(write)
            raise
        finally:
            if read >= 0:
                os.close(read)
        return cls(pid, pidfd, write)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        # Never registered with an event loop: no notify_closing() owed.
        os.close(self.fd)
        os.close(self.pidfd)


class _State:
    """This process's reaper and what it must know."""

    #: False for a PID 1 (see above), and in tests that show what the reaper prevents
    needed: bool
    reaper: _Reaper | None
    #: id -> watch op
    watched: dict[int, int]
    lock: threading.Lock

    def __init__(self) -> None:
        self.reaper = None
        self.reset()

    def reset(self) -> None:
        """Drop everything; in a forked child, the parent's sandboxes are not
        its own (and another thread may have held the lock at the fork)."""
        if self.reaper is not None:
            self.reaper.close()
        self.needed = not _DISABLED and os.getpid() != 1
        self.reaper = None
        self.watched = {}
        self.lock = threading.Lock()

    def tell(self, record: bytes) -> None:
        """Send ``record``; replace the reaper if it cannot take it (then the
        new one gets the whole set, ``record``'s change included)."""
        if self.reaper is not None:
            try:
                os.write(self.reaper.fd, record)  # 8 bytes: all or nothing
                return
            except (BlockingIOError, BrokenPipeError):
                self.reaper.kill()
                self.reaper = None
        if self.watched:
            self.start()

    def start(self) -> None:
        """A new reaper, told the whole set."""
        self.reaper = _Reaper.start(
            b"".join(_RECORD.pack(op, id_) for id_, op in self.watched.items()))


_state = _State()


def prepare() -> None:
    """Start the reaper, if there is none, before a spawn.

    Starting one takes milliseconds (a fork): done here, they do not stand
    between the command's start and :func:`watch`, nor delay what the caller
    does next with it (hand it the terminal, say).  Raises
    :class:`SpawnError` (``step="reaper"``) when the fork is refused.
    """
    state = _state
    if state.needed and state.reaper is None:
        with state.lock:
            if state.reaper is None:
                state.start()


def watch(child: Spawned) -> None:
    """Have the reaper kill ``child``'s sandbox if this process dies.

    Raises :class:`SpawnError` (``step="reaper"``) if the reaper is gone and
    no new one can be started (see :func:`prepare`); ``child`` is then
    killed and reaped, its listener closed.
    """
    state = _state
    if not state.needed:
        return
    op = lib.ASL_REAPER_WATCH_GROUP if child.own_group else lib.ASL_REAPER_WATCH_PID
    try:
        with state.lock:
            state.watched[child.pid] = op
            try:
                state.tell(_RECORD.pack(op, child.pid))
            except BaseException:
                del state.watched[child.pid]
                raise
    except BaseException:
        abandon(child)
        raise


def abandon(child: Spawned) -> None:
    """Kill and reap ``child``, which nothing will own, and close its listener."""
    forget(child.pid)
    _kill_and_reap(child.pidfd)
    if child.listener is not None:
        close_fd(child.listener)


def forget(pid: int) -> None:
    """Call before reaping sandbox ``pid``: its id may then be reused."""
    state = _state
    with state.lock:
        if state.watched.pop(pid, None) is None:
            return
        # On failure the old reaper is dead already; the next watch() starts one.
        with contextlib.suppress(OSError):
            state.tell(_RECORD.pack(lib.ASL_REAPER_FORGET, pid))


def held() -> tuple[int | None, frozenset[int]]:
    """The reaper's pid and the fds this process holds for it (for tests)."""
    reaper = _state.reaper
    if reaper is None:
        return None, frozenset()
    return reaper.pid, frozenset((reaper.fd, reaper.pidfd))


os.register_at_fork(after_in_child=_state.reset)
