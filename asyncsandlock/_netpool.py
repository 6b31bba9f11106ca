"""Network namespaces made ahead of the spawns that use them.

Why
---
``unshare(CLONE_NEWNET)`` is ~0.6 ms of the kernel's CPU (it initialises
every per-namespace subsystem), and the child of a spawn does it while the
caller sleeps in the vfork: on a busy machine, 1-4 ms added to every
``network="loopback"`` spawn.  Made ahead, the child only ``setns``-es into
one (microseconds) and the spawn costs what one without a namespace does.

Who makes them
--------------
A small process of their own, the *maker* (``csrc/netns.c``), started by
the first :func:`take`: it makes :data:`READY` namespaces, brings ``lo`` up
in each and sends each back as an fd over a socket, then sleeps in
``read()``; once a spawn that took one is over, :func:`replenish` writes a
byte asking for its replacement.  It runs beside the caller (on another
CPU when there is one) as a SCHED_BATCH task, which never preempts the
caller on waking, so neither the event loop's thread nor a spawn waits for
it: a take is a non-blocking ``recvmsg``, the request a one-byte ``write``
-- no thread, no task, nothing awaited.  Starting the maker is one short
clone on the caller's thread (~0.1 ms, more on busy CPUs), once per process.  When none is
ready (the first spawn, or a burst faster than the maker), the child makes
its own namespace, as without the pool.  The maker exits when our end of
the socket closes: when this process exits or execs (the end is
close-on-exec), or in a forked child, which closes its copy.

Each namespace is used exactly once
-----------------------------------
:func:`take` hands an fd out once and the spawn closes it: a namespace is
never shared between sandboxes (its sockets, ports and sysctls would carry
over).  A namespace is held only by its fd until then, so nothing runs in it
and nothing is in it but a fresh ``lo``.  All the fds are close-on-exec: no
sandbox ever sees a namespace but its own.

Who gets them
-------------
Callers with CAP_SYS_ADMIN only (``NET_NEW``, and the parent-made namespace
of ``"uplink"`` and ``publish``).  An unprivileged caller's child makes its
network inside a user namespace of its own, with the id maps of its policy;
it could only ``setns`` into a network namespace owned by a user namespace
it is root of, so such a pool would need one user namespace per entry and
per id map: not built, that path is unchanged.

A host that refuses (a maker that brings no namespace: ``unshare`` denied,
the clone refused) switches the pool off for this process; the child's own
``unshare`` then meets the refusal and ``on_unavailable`` decides, as
without the pool.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import TYPE_CHECKING

from ._core import ffi, lib
from ._network import NET_NEW
from ._types import Subsystem

if TYPE_CHECKING:
    from ._plan import Plan

#: How many namespaces are kept ready (made, or being made).
READY = 4
#: For benchmarks only: False makes :func:`take` return -1 (no pool).
enabled = True


class _Pool:
    """This process's ready namespaces and its maker under way."""

    ready: list[int]
    #: Our end of the socket the maker under way sends on, or -1.
    sock: int
    #: (pid, pidfd) of our children from the makers' starts, until reaped.
    children: list[tuple[int, int]]
    #: Namespaces the maker under way has sent.
    got: int
    #: Taken since the maker was last asked for more.
    owed: int
    off: bool
    lock: threading.Lock

    def __init__(self) -> None:
        self.ready, self.children, self.sock = [], [], -1
        self.reset()

    def reset(self) -> None:
        """Drop everything; in a forked child, the fds are the parent's copies
        and the makers are not its children."""
        for fd in self.ready:
            os.close(fd)
        for _pid, pidfd in self.children:
            os.close(pidfd)
        if self.sock >= 0:
            os.close(self.sock)
        self.ready, self.children, self.sock = [], [], -1
        self.got, self.off, self.owed = 0, False, 0
        self.lock = threading.Lock()

    def take(self) -> int:
        if not enabled:
            return -1
        with self.lock:
            self._receive()
            self._reap()
            if not self.ready:
                self._refill()
                return -1
            fd = self.ready.pop(0)
            self.owed += 1
            return fd

    def replenish(self) -> None:
        """Ask the maker for as many as were taken: a message it reads when
        it next looks (it sleeps in read() until then).  Called once the
        spawn is over: woken during it, the maker's unshare (~0.6 ms in the
        kernel, where it is not preempted) would often take a CPU the
        spawn's child or the caller was about to run on.  Full (the maker
        far behind): fewer are kept ready for a while, no harm."""
        with self.lock:
            owed, self.owed = self.owed, 0
            if self.sock < 0:
                self._refill()
            elif owed:
                with contextlib.suppress(BlockingIOError):
                    os.write(self.sock, bytes((min(owed, READY, 255),)))

    def poll(self) -> None:
        """Pick up what the maker sent, reap, start one if none runs."""
        with self.lock:
            self._receive()
            self._reap()
            self._refill()

    def _refill(self) -> None:
        if self.sock < 0 and not self.off and len(self.ready) < READY:
            self._start(READY - len(self.ready))

    def close(self) -> None:
        """Let the maker go (EOF) and close the namespaces kept; the maker is
        reaped by the next :meth:`poll` (for tests)."""
        with self.lock:
            for fd in self.ready:
                os.close(fd)
            self.ready = []
            if self.sock >= 0:
                os.close(self.sock)
                self.sock = -1

    def _receive(self) -> None:
        """What the maker has sent so far (non-blocking reads)."""
        while self.sock >= 0:
            fd = lib.asl_receive_fd(self.sock)
            if fd >= 0:
                self.ready.append(fd)
                self.got += 1
                continue
            if fd == -errno.EAGAIN:
                return
            # EOF: the maker has exited (it could not make one more), and
            # left the static stack it ran on before its fds were closed
            # (see netns.c); the next may start.
            os.close(self.sock)
            self.sock = -1
            if not self.got:  # not one: this host refuses
                self.off = True

    def _reap(self) -> None:
        for child in list(self.children):
            pidfd = child[1]
            try:
                if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is None:
                    continue  # still exiting: the next take() looks again
            except ChildProcessError:  # reaped by someone's waitpid(-1)
                pass
            os.close(pidfd)
            self.children.remove(child)

    def _start(self, count: int) -> None:
        pair = ffi.new("int[2]")
        if lib.asl_channel(pair) < 0:
            return  # fds exhausted, say: no pool this time, nothing to undo
        ours, theirs = pair[0], pair[1]
        out = ffi.new("int[3]")
        rc = lib.asl_netns_maker(theirs, count, out)
        os.close(theirs)  # the maker has its own copy: its exit is our EOF
        if rc < 0:
            os.close(ours)
            self.off = True
            return
        self.children.append((out[0], out[1]))
        if out[2] < 0:
            os.close(ours)
            self.off = True
            return
        # A pidfd while it is our unreaped child: its pid cannot be reused.
        with contextlib.suppress(OSError):
            self.children.append((out[2], os.pidfd_open(out[2])))
        os.set_blocking(ours, False)
        self.sock, self.got = ours, 0

    def held(self) -> tuple[frozenset[int], frozenset[int]]:
        with self.lock:
            fds = {*self.ready, *(pidfd for _pid, pidfd in self.children)}
            if self.sock >= 0:
                fds.add(self.sock)
            return frozenset(pid for pid, _pidfd in self.children), frozenset(fds)


_pool = _Pool()


def take() -> int:
    """A new network namespace with ``lo`` up, as an fd that is the caller's
    to close, or -1 when none is ready.  Only for a caller holding
    CAP_SYS_ADMIN (the pool does not check: its maker would only fail)."""
    return _pool.take()


def for_child(plan: Plan) -> int:
    """:func:`take`, for a spawn of ``plan`` whose child would make its own
    namespace (``NET_NEW``: CAP_SYS_ADMIN, ``"loopback"`` without
    ``publish``); -1 for any other plan.  The child enters it with
    ``setns`` (``ASL_NET_JOIN``), the spawn closes it."""
    if plan.net_mode != NET_NEW or Subsystem.NETWORK_NAMESPACE in plan.degraded:
        return -1
    return _pool.take()


def replenish() -> None:
    """After a spawn that took one: the maker makes its replacement now."""
    _pool.replenish()


def held() -> tuple[frozenset[int], frozenset[int]]:
    """The pids of the pool's unreaped children and the fds it holds (for
    tests: they live as long as this process)."""
    return _pool.held()


os.register_at_fork(after_in_child=_pool.reset)
