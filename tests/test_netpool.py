"""Network namespaces made ahead (``_netpool.py``), for root callers.

Each sandbox gets a namespace of its own, never one another sandbox used,
with ``lo`` up; no sandbox sees the pool's other namespaces; the maker is a
process, not a thread, and leaves no child behind.  The escape side (no
route out, the caller's loopback out of reach, two sandboxes binding one
port) is tests/test_netns.py's, which runs with the pool as every caller
gets it.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import socket
import sys

import anyio
import pytest

from asyncsandlock import SYSTEM_READABLE, Sandbox, _netpool
from asyncsandlock._plan import peek

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the pool serves root callers")

READABLE = (*SYSTEM_READABLE, sys.base_prefix, sys.prefix, "/proc")

# Prints its network namespace, binds and connects on its own loopback, and
# lists what its fds are.
PROBE = r"""
import os, socket
print(os.readlink("/proc/self/ns/net"))
s = socket.socket(); s.bind(("127.0.0.1", 8080)); s.listen()
c = socket.create_connection(("127.0.0.1", 8080), timeout=5)
print("connected")
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink("/proc/self/fd/" + fd))
    except OSError:  # the listing's own fd, gone
        pass
print(" ".join(sorted(links)))
"""


def release(sb: Sandbox) -> None:
    """Close ``sb``'s ruleset fd now (no_leaks looks before a collection)."""
    owner = peek(sb)
    if owner is not None:
        owner.close()


async def _filled() -> None:
    """Wait (on the loop) until the pool has namespaces ready."""
    with anyio.fail_after(10):
        while True:
            _netpool._pool.poll()
            if _netpool._pool.ready:
                return
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_each_sandbox_gets_a_namespace_of_its_own_with_lo_up(anyio_backend: str,
                                                                    no_leaks: None) -> None:
    sb = Sandbox(fs_readable=READABLE, network="loopback", net_allow=[":8080"],
                 net_allow_bind=[8080])
    seen = []
    for _ in range(2 * _netpool.READY):
        await _filled()
        held = set(_netpool.held()[1])
        # Server and client alive at once in each: none of them sees another's.
        result = await sb.run([sys.executable, "-c", PROBE], timeout=30)
        assert result.returncode == 0, result.stderr
        ns, connected, fds = result.stdout.decode().split("\n")[:3]
        assert connected == "connected"
        assert "net:" not in fds and "socket:" in fds, "no namespace fd in the sandbox"
        assert held, "the namespace came from the pool"
        seen.append(ns)
        # The pool no longer holds the namespace it gave.
        assert ns not in {os.readlink(f"/proc/self/fd/{fd}") for fd in _netpool.held()[1]}
    mine = os.readlink("/proc/self/ns/net")
    assert mine not in seen
    # Namespace ids are inode numbers, reused once a namespace is freed:
    # consecutive sandboxes (one alive at a time) all differ.
    assert all(a != b for a, b in itertools.pairwise(seen))
    release(sb)


@pytest.mark.anyio
async def test_the_maker_is_a_process_and_goes_with_the_pool(anyio_backend: str,
                                                             no_leaks: None) -> None:
    threads = set(os.listdir("/proc/self/task"))
    sb = Sandbox(fs_readable=READABLE, network="loopback")
    await sb.run(["/bin/true"])
    await sb.run(["/bin/true"])
    release(sb)
    kids, _fds = _netpool.held()
    assert kids, "a maker runs"
    # No thread added (one left by an earlier test may have ended meanwhile).
    assert set(os.listdir("/proc/self/task")) <= threads, "not a thread"
    # Our end closed, the maker exits, and it is reaped by the next look.
    _netpool._pool.close()
    with anyio.fail_after(10):
        while _netpool.held()[0] & kids:
            await anyio.sleep(0.01)
            with _netpool._pool.lock:
                _netpool._pool._reap()
    children = pathlib.Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    assert not {str(pid) for pid in kids} & set(children)


def test_a_pool_that_gets_nothing_switches_off() -> None:
    pool = _netpool._Pool()
    pool.sock = -1
    # A maker that sends nothing: EOF at once.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    pool.sock = ours.detach()
    pool._receive()
    assert pool.off and pool.sock == -1
    assert pool.take() == -1 and pool.sock == -1, "no new maker once off"


def test_a_forked_child_drops_the_parents_pool() -> None:
    _netpool._pool.poll()  # a maker, and soon namespaces, in the parent
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's fds or children kept
        pool = _netpool._pool
        os._exit(0 if not pool.ready and pool.sock < 0 and not pool.children else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
