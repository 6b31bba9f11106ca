"""Uplinks going away after their run: nothing waits for the kernel, nothing leaks.

When a sandbox with ``network="uplink"`` has been reaped, its namespace's
last holder is our fd.  Closing it has the kernel tear the namespace down on
a workqueue, and with it the sandbox's end of the veth pair, which takes the
caller's end (``aslu<slot>``) along: 15-45 ms here, mostly RCU grace
periods, none of it on our thread.  ``run()`` used to wait for that; now it
returns at once and the link is *swept*: one background task per event loop
(no thread) watches a netlink socket subscribed to link events and crosses
each link off once the kernel has removed it.

A link that outlives :data:`LINK_GRACE` -- something else holds the
namespace: a socket of the sandbox passed out, say -- is deleted with
``RTM_DELLINK``, a request the kernel carries out inside ``send`` (the RTNL
lock and RCU grace periods, 20-40 ms on the loop): only then, or for what
is left when the event loop ends (the sweeper is cancelled: it deletes what
is still there before it goes).

A name is free for another sandbox only once its link is gone; until then
an uplink takes the next slot (``_netns.py``: a taken name is EEXIST).

Links of a caller that died
---------------------------
Each caller's end carries its owner in its alias (:func:`owner`: the PID
namespace, pid and start time of the process that made it).  A SIGKILLed
caller's links go with their namespaces, unless a process of a sandbox
survived it and holds one; the uplink pool's keeper (``_netns.py``) looks
once per process (:func:`sweep_stale`, one dump request, off any run's
path) for ``aslu*`` links whose owner, in our PID namespace, no longer runs,
and sweeps them like its own.  An owner in another PID namespace cannot be
checked from here: its links are left alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import anyio

from ._background import Background
from ._rtnl import Rtnl

#: Seconds the kernel gets to remove a veth pair before we delete it.
LINK_GRACE = 5.0
_RTMGRP_LINK = 1
_RTM_DELLINK = 17
_RTM_GETLINK = 18
_NLM_F_DUMP = 0x300
#: How an owner's alias starts.
_TAG = "asyncsandlock"


class _Sweeper:
    """The links being removed (index -> (name, deadline)) and the task
    watching them."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[str, float]] = {}
        self.task: Background | None = None
        self.events: Rtnl | None = None

    def add(self, index: int, name: str | None) -> None:
        if not index and name is not None:
            # Known by name only (a cancellation before we read its index):
            # the name is ours until the link is gone, so this is our link.
            try:
                index = socket.if_nametoindex(name)
            except OSError:
                return  # never made, or gone already
        if not index:
            return
        self.pending[index] = (name or "", time.monotonic() + LINK_GRACE)
        if self.task is None or self.task.done:
            self.task = Background.start(self._sweep, "asyncsandlock link sweeper")

    def _cross_off(self, now: float) -> None:
        for index, (name, deadline) in list(self.pending.items()):
            if _gone(index, name):
                del self.pending[index]
            elif now >= deadline:
                del self.pending[index]
                delete_link(index, None)

    def _any_gone(self) -> bool:
        return any(_gone(index, name) for index, (name, _) in self.pending.items())

    async def _sweep(self) -> None:
        # Subscribed before the first look: no removal can then go unnoticed.
        self.events = events = Rtnl.open(_RTMGRP_LINK)
        try:
            while True:
                self._cross_off(time.monotonic())
                if not self.pending:
                    return
                soonest = min(deadline for _name, deadline in self.pending.values())
                with anyio.move_on_after(max(0.0, soonest - time.monotonic())):
                    await events.wait_for(self._any_gone)
        finally:
            self.events = None
            events.close()
            # Cancelled (the event loop ends): what is left goes now.
            for index in list(self.pending):
                name = self.pending.pop(index)[0]
                if not _gone(index, name):
                    delete_link(index, None)


def _gone(index: int, name: str) -> bool:
    """Whether link ``index`` no longer exists as ``name`` (an index is
    never reused while the link lives, a name is at once)."""
    try:
        return socket.if_indextoname(index) != name
    except OSError:
        return True


_sweeper = _Sweeper()


def sweep(index: int, name: str | None) -> None:
    """Cross link ``index`` (or, with index 0, ``name``) off once the kernel
    has removed it; delete it after :data:`LINK_GRACE`.  Needs a running
    event loop; returns at once."""
    _sweeper.add(index, name)


def pending() -> frozenset[str]:
    """Names of the links being swept (for tests)."""
    return frozenset(name for name, _ in _sweeper.pending.values())


def held() -> frozenset[int]:
    """The sweeper's fd while it runs (for tests: no_leaks)."""
    events = _sweeper.events
    return frozenset({events.fileno()}) if events is not None else frozenset()


def delete_link(index: int, name: str | None) -> None:
    """``RTM_DELLINK`` of link ``index`` (or ``name`` with index 0), blocking."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["header"]["type"] = _RTM_DELLINK
    msg["header"]["flags"] = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
    msg["index"] = index
    if not index and name is not None:
        msg["attrs"] = [("IFLA_IFNAME", name)]
    msg.encode()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        # Blocking send: the kernel deletes the link inside it.  The answer
        # is not read: the socket goes, and a link already gone (ENODEV)
        # is what we wanted anyway.
        sock.send(bytes(msg.data))


def _started(pid: int) -> str | None:
    """Process ``pid``'s start time (clock ticks since boot), None if none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The name (field 2) may hold spaces and parentheses: split after its end.
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str:
    return str(os.stat("/proc/self/ns/pid").st_ino)


_owners: dict[int, str] = {}


def owner() -> str:
    """The alias given to this process's links: who to ask whether they are
    still someone's (a pid is reused, a pid with its start time is not)."""
    pid = os.getpid()  # a forked child is an owner of its own
    if pid not in _owners:
        _owners[pid] = f"{_TAG} {_pid_namespace()} {pid} {_started(pid)}"
    return _owners[pid]


def stale(alias: str | None) -> bool:
    """Whether an ``aslu*`` link with ``alias`` belongs to a process of our PID
    namespace that no longer runs."""
    parts = (alias or "").split()
    if len(parts) != 4 or parts[0] != _TAG or parts[1] != _pid_namespace():
        return False  # not ours to judge
    return not parts[2].isdigit() or _started(int(parts[2])) != parts[3]


async def sweep_stale() -> list[str]:
    """Sweep every ``aslu*`` link whose owner has died (:func:`stale`): one
    link dump (a request the kernel answers inside ``send``); returns their
    names."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    query = ifinfmsg()
    query["header"]["type"] = _RTM_GETLINK
    rtnl = Rtnl.open()
    try:
        answers = await rtnl.request(query, _NLM_F_DUMP)
    finally:
        rtnl.close()
    found = []
    for answer in answers:
        link = ifinfmsg(answer)
        with contextlib.suppress(Exception):  # a message we cannot decode: not ours
            link.decode()
            name = link.get_attr("IFLA_IFNAME") or ""
            if name.startswith("aslu") and stale(link.get_attr("IFLA_IFALIAS")):
                found.append(name)
                sweep(int(link["index"]), name)
    return found
