"""The guards' per-call shortcuts stay safe: the pidfd cache (a pidfd kept per
thread id for a listener's life, see ``Pidfds`` in ``_kernel/_notify.py``)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from asyncsandlock._kernel._notify import Pidfds
from asyncsandlock._objects import Target


class _Ctx:
    """What Target asks of a notification, for this thread as the target."""

    def __init__(self) -> None:
        self.pid = threading.get_native_id()
        self.cache = Pidfds()

    def _pidfds(self) -> Pidfds:
        return self.cache

    def is_valid(self) -> bool:
        return True


def _dead_pidfd() -> int:
    """A pidfd of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    fd = os.pidfd_open(child.pid)
    child.wait()
    return fd


@pytest.mark.usefixtures("no_leaks")
def test_a_dead_process_pidfd_in_the_cache_is_replaced() -> None:
    """A cached pidfd whose process is gone (its id now someone else's)
    fails with ESRCH and is never used for the new holder of the id: it is
    dropped, a pidfd of the live target is opened and cached instead."""
    ctx = _Ctx()
    dead = _dead_pidfd()
    ctx.cache.keep(ctx.pid, dead)
    ctx.cache.release(dead)  # cached, in use by no one
    r, w = os.pipe()
    try:
        with Target(ctx) as target:  # type: ignore[arg-type]
            copy = target.fd(r)
            assert os.path.sameopenfile(copy, r)
        assert _pid_of(ctx.cache.get(ctx.pid)) == ctx.pid
    finally:
        ctx.cache.close()
        os.close(r)
        os.close(w)


def _pid_of(pidfd: int) -> int:
    """The id a pidfd names now (-1: exited), from its fdinfo."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        return int(next(line for line in f if line.startswith("Pid:")).split()[1])


@pytest.mark.usefixtures("no_leaks")
def test_the_cache_is_bounded_and_closes_what_it_holds() -> None:
    cache = Pidfds()
    fds = [os.pidfd_open(os.getpid()) for _ in range(Pidfds.LIMIT + 3)]
    for tid, fd in enumerate(fds, start=1):
        assert cache.keep(tid, fd)
        cache.release(fd)
    assert cache.get(1) == -1  # dropped (and closed) when the cache filled up
    assert cache.get(Pidfds.LIMIT + 3) == fds[-1]
    cache.forget(Pidfds.LIMIT + 3)
    assert cache.get(Pidfds.LIMIT + 3) == -1
    cache.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    # Closed for good: the caller keeps what it opens from now on.
    late = os.pidfd_open(os.getpid())
    assert not cache.keep(1, late)
    os.close(late)


@pytest.mark.usefixtures("no_leaks")
def test_a_pidfd_in_use_is_closed_only_at_its_release() -> None:
    """Dropped (ESRCH, the cache full, the supervisor stopping) while a
    suspended handler still holds it, a pidfd stays open: closed, its number
    could be reused by another open and name another process."""
    cache = Pidfds()
    fd = os.pidfd_open(os.getpid())
    assert cache.keep(7, fd)
    assert cache.acquire(7) == fd  # a second user
    cache.forget(7)
    cache.close()
    os.fstat(fd)
    cache.release(fd)
    os.fstat(fd)
    cache.release(fd)
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.usefixtures("no_leaks")
def test_without_a_cache_entry_the_target_pidfd_is_cached() -> None:
    ctx = _Ctx()
    r, w = os.pipe()
    try:
        for _ in range(3):
            with Target(ctx) as target:  # type: ignore[arg-type]
                os.close(os.dup(target.fd(w)))
        assert ctx.cache.get(ctx.pid) >= 0
    finally:
        ctx.cache.close()
        os.close(r)
        os.close(w)
