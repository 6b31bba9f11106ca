"""``Sandbox.network`` and ``Sandbox.publish``: the values, checked, and the
record a running sandbox reports (see ``_netns.py`` for how they are built,
docs/network-namespaces.md for what each gives)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._core import lib
from ._exceptions import PolicyError
from ._kernel._caps import permitted_mask
from ._validate import show

#: enum asl_net_mode (csrc/spawn.h): where the child's network stack comes from.
NET_HOST: int = lib.ASL_NET_HOST
NET_NEW: int = lib.ASL_NET_NEW
NET_USERNS: int = lib.ASL_NET_USERNS
NET_JOIN: int = lib.ASL_NET_JOIN
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21

#: ``"host"``: the caller's network (the rules filter it); ``"loopback"``: a
#: network namespace of its own with only ``lo``; ``"uplink"``: the same
#: joined to the caller's by a veth pair.
NETWORKS = ("host", "loopback", "uplink")


def check_stack(network: object, publish: object) -> tuple[str, tuple[int, ...]]:
    """``network`` and ``publish`` checked: ``publish`` as a sorted tuple of
    distinct ports.  A :class:`PolicyError` names the field otherwise."""
    if not isinstance(network, str) or network not in NETWORKS:
        raise PolicyError("network", f"{show(network)} is not one of "
                                     f"{', '.join(map(repr, NETWORKS))}")
    if isinstance(publish, (str, bytes, int)) or not isinstance(publish, Iterable):
        raise PolicyError("publish", f"expected a sequence of ports, got {show(publish)}")
    ports: set[int] = set()
    for port in publish:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
            raise PolicyError("publish", f"{show(port)}: ports must be integers in 1-65535")
        ports.add(port)
    if ports and network == "host":
        raise PolicyError("publish", "needs a network of the sandbox's own "
                                     "(network='loopback' or 'uplink'): on the host network "
                                     "the sandbox's ports are the caller's already")
    if network == "uplink":
        _load_pyroute2()
    return network, tuple(sorted(ports))


def holds(*caps: int) -> bool:
    """Whether this process holds every capability of ``caps`` (permitted)."""
    mask = permitted_mask()
    return all(mask >> cap & 1 for cap in caps)


def net_mode(network: str, publish: tuple[int, ...]) -> int:
    """How a spawn of this policy gets its network stack.

    ``"loopback"`` without ``publish`` is made by the child itself (one
    unshare in the child), directly with CAP_SYS_ADMIN, else inside a user
    namespace; with CAP_SYS_ADMIN the spawn hands it one made ahead when
    there is one (``_netpool.for_child``), and it only ``setns``-es.
    ``"uplink"``, and ``publish`` (whose forwarder needs a handle on the
    namespace), need one the parent makes and keeps an fd of:
    :data:`NET_JOIN`, privileged only (``_netns.py`` puts a refusal to
    ``on_unavailable``).
    """
    if network == "host":
        return NET_HOST
    if network == "uplink" or publish:
        return NET_JOIN
    return NET_NEW if holds(CAP_SYS_ADMIN) else NET_USERNS


def port_start(mode: int, bind: frozenset[int] | None,
               identity: tuple[int, int, int] | None, keep_caps: int) -> int | None:
    """The ``net.ipv4.ip_unprivileged_port_start`` a sandbox's own network
    (``mode`` other than :data:`NET_HOST`) gets, so that a child without
    CAP_NET_BIND_SERVICE (any uid but 0 loses it at execve) can bind the low
    ports ``bind`` lists: the lowest of them (0 for every port).  None: left
    at the kernel's 1024, when nothing below it is to be bound or the child
    ends as uid 0 holding the capability.  Landlock still decides which TCP
    ports may be bound; the sysctl is the sandbox's network's own."""
    if mode == NET_HOST:
        return None
    low = 0 if bind is None else min((p for p in bind if 0 < p < 1024), default=None)
    if low is None:
        return None
    uid = identity[0] if identity is not None else os.geteuid()
    if uid == 0 and keep_caps >> CAP_NET_BIND_SERVICE & 1:
        return None
    return low


def _load_pyroute2() -> None:
    """Import what the uplink uses of pyroute2 now, with the policy (the first
    import takes ~0.5 s: better here than on the event loop at a spawn)."""
    if importlib.util.find_spec("pyroute2") is None:
        raise PolicyError("network", "'uplink' configures its link with pyroute2, which is "
                                     "not installed (pip install 'asyncsandlock[net]')")
    importlib.import_module("pyroute2.netlink.rtnl.ifinfmsg")
    importlib.import_module("pyroute2.netlink.rtnl.ifaddrmsg")
    importlib.import_module("pyroute2.netlink.rtnl.rtmsg")


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """The network of one running sandbox (``SandboxedProcess.network``).

    ``published`` maps each port of :attr:`Sandbox.publish` to the
    ``(host, port)`` on the caller's loopback that forwards to it (while the
    sandbox runs).  ``address`` is the sandbox's own address on its uplink
    and ``gateway`` the caller's end of the link (both None for
    ``"loopback"``): with ``"uplink"``, ``(address, port)`` is also reachable
    from the caller directly.
    """

    network: str
    address: str | None
    gateway: str | None
    published: Mapping[int, tuple[str, int]]
