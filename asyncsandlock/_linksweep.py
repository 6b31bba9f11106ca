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
"""

from __future__ import annotations

import socket
import time

import anyio

from ._background import Background
from ._rtnl import Rtnl

#: Seconds the kernel gets to remove a veth pair before we delete it.
LINK_GRACE = 5.0
_RTMGRP_LINK = 1
_RTM_DELLINK = 17


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
