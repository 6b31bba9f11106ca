"""The parent's side of a sandbox's own network namespace.

Who makes the namespace
-----------------------
``network="loopback"`` alone is the child's job (the ``network`` step of
csrc/spawn.c: one ``unshare`` and ``lo`` up, or ``setns`` into one made
ahead, ``_netpool.py``), nothing here.  For ``"uplink"``, and for
``publish``, the parent must hold the namespace: it configures a link in it
before the child runs, and makes sockets in it for the forwarder.  So the
parent takes one from the pool, or makes it (``asl_netns_new``: unshare on
the calling thread and straight back, in one C call), *before* the spawn,
configures it, and the child only ``setns``-es into it.  That is
the whole handshake: the child is not created until its link is up, so it
cannot run, or be made to wait, before that; there is no pipe to wait on, no
timeout and nothing to cancel in the child.  The namespace lives as long as
someone holds it: our fd, and the sandbox's processes.

Addresses
---------
Each uplink takes one /30 of :data:`UPLINK_NETWORK`: ``.1`` is the caller's
end (``gateway``), ``.2`` the sandbox's (``address``), with a default route
via ``.1``.  A /30 is a *slot*, and the name of the caller's end of the veth
pair carries it (``aslu<slot>``): the kernel refuses a second link of that
name (EEXIST), so two sandboxes, of this process or of any other using this
library, never share a slot; we try the next one.  IPv4 only.

What we never touch
-------------------
No sysctl (``ip_forward``), no firewall or NAT rule: without them traffic
from the sandbox reaches the caller's host (its addresses, its listening
sockets) and stops there.  docs/network-namespaces.md says what an operator
adds to route it further.

Nothing left behind
-------------------
When the sandbox has been reaped (``SandboxedProcess.wait``), or at once if
the spawn failed or was cancelled, the namespace fd is closed.  The kernel
frees the namespace asynchronously (a workqueue) once no process and no fd
holds it, and the veth pair with it; the link sweeper (``_linksweep.py``)
sees the caller's end go, or deletes it if something else keeps the
namespace alive.  No run waits for it.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import random
import socket
import struct
from typing import TYPE_CHECKING, Any

import anyio

from ._background import Background
from ._core import lib
from ._linksweep import sweep
from ._netpool import replenish, take
from ._network import CAP_NET_ADMIN, CAP_SYS_ADMIN, NET_JOIN, NetworkInfo, holds
from ._publish import Forwarder
from ._rtnl import Rtnl
from ._types import Subsystem
from ._unavailable import degrade

if TYPE_CHECKING:
    from ._plan import Compiled
    from ._policy import Sandbox

#: Where uplink addresses come from, one /30 per sandbox.
UPLINK_NETWORK = ipaddress.IPv4Network("10.231.0.0/16")
_SLOTS = UPLINK_NETWORK.num_addresses // 4
#: Slots tried before giving up (each a taken link name).
_ATTEMPTS = 64
#: The sandbox's end of the veth pair, inside its namespace.
SANDBOX_LINK = "eth0"
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
#: errnos that mean "this host will not let us", put to on_unavailable.
_REFUSALS = frozenset({errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EINVAL,
                       errno.EOPNOTSUPP, errno.ENOSPC, errno.EUSERS})


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def socket_in(nsfd: int, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A CLOEXEC, non-blocking socket in network namespace ``nsfd``."""
    fd = _check(lib.asl_socket_in(nsfd, family, kind | socket.SOCK_CLOEXEC
                                  | socket.SOCK_NONBLOCK, proto), "socket in the sandbox")
    return socket.socket(fileno=fd)


def _loopback_up(nsfd: int) -> None:
    """``lo`` up in ``nsfd``: two ioctls on a socket made there."""
    with socket_in(nsfd, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = bytearray(struct.pack("16sH22x", b"lo", 0))
        fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, ifreq)
        (flags,) = struct.unpack_from("H", ifreq, 16)
        struct.pack_into("H", ifreq, 16, flags | _IFF_UP)
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, ifreq)


class Network:
    """One sandbox's namespace as the parent holds it (mode ``NET_JOIN``)."""

    __slots__ = ("_background", "_forwarder", "_index", "_slot", "address", "gateway", "link",
                 "netns_fd", "network", "publish")

    def __init__(self, netns_fd: int, network: str, publish: tuple[int, ...]) -> None:
        self.netns_fd = netns_fd
        self.network = network
        self.publish = publish
        #: The caller's end of the veth pair, once it exists.
        self.link: str | None = None
        #: Its interface index: names are reused at once, indexes are not.
        self._index = 0
        self._slot = -1
        self.address: str | None = None
        self.gateway: str | None = None
        self._forwarder: Forwarder | None = None
        self._background: Background | None = None

    @property
    def info(self) -> NetworkInfo:
        published = self._forwarder.published if self._forwarder is not None else {}
        return NetworkInfo(self.network, self.address, self.gateway, published)

    def __repr__(self) -> str:
        return (f"<Network {self.network} fd={self.netns_fd} link={self.link} "
                f"address={self.address}>")

    # -- building ---------------------------------------------------------

    async def _configure(self, fresh: bool) -> None:
        if fresh:  # not one of the pool's, whose lo is up
            _loopback_up(self.netns_fd)
        if self.network == "uplink":
            await self._uplink()
        if self.publish:
            self._forwarder = Forwarder(self.publish, self._connector)

    async def _uplink(self) -> None:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        host = Rtnl.open()
        inside = Rtnl(socket_in(self.netns_fd, socket.AF_NETLINK, socket.SOCK_RAW,
                                socket.NETLINK_ROUTE).detach())
        try:
            start = random.randrange(_SLOTS)
            for attempt in range(_ATTEMPTS):
                slot = (start + attempt) % _SLOTS
                # Ours from the moment the kernel may have made it: a
                # cancellation can land after that, before request() returns.
                self.link, self._slot = f"aslu{slot}", slot
                try:
                    await host.request(_veth(ifinfmsg, self.link, self.netns_fd),
                                       _NLM_F_CREATE_EXCL)
                except FileExistsError:  # another sandbox's: not ours to delete
                    self.link = None
                    continue
                break
            else:
                raise OSError(errno.EADDRINUSE, f"no free uplink slot in {UPLINK_NETWORK} "
                                                f"after {_ATTEMPTS} tries")
            base = UPLINK_NETWORK.network_address + 4 * self._slot
            self.gateway, self.address = str(base + 1), str(base + 2)
            self._index = await _index_of(host, ifinfmsg, self.link)
            await _address_and_up(host, ifinfmsg, self._index, self.gateway)
            await _address_and_up(inside, ifinfmsg, await _index_of(inside, ifinfmsg, SANDBOX_LINK),
                                  self.address)
            await _default_route(inside, self.gateway)
        finally:
            host.close()
            inside.close()

    def _connector(self, port: int) -> tuple[socket.socket, tuple[str, int]]:
        if self.address is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
                                 | socket.SOCK_NONBLOCK)
            return sock, (self.address, port)
        return socket_in(self.netns_fd, socket.AF_INET, socket.SOCK_STREAM), ("127.0.0.1", port)

    # -- running and ending -------------------------------------------------

    def start(self, pid: int) -> None:
        """Serve the published ports of the sandbox ``pid`` (once it runs)."""
        if self._forwarder is not None:
            self._background = Background.start(self._forwarder.serve,
                                                f"asyncsandlock publish {pid}")

    def discard(self) -> None:
        """Close the namespace fd and sweep the link: the end of a spawn that
        failed or was cancelled (no forwarder runs yet).  Nothing blocks:
        with its fd closed the namespace goes (no process ever ran in it),
        and the link with it (``_linksweep.py``)."""
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        self._close_and_sweep()

    def _close_and_sweep(self) -> None:
        index, self._index = self._index, 0
        link, self.link = self.link, None
        fd, self.netns_fd = self.netns_fd, -1
        if fd >= 0:
            os.close(fd)
        if index or link:  # by name only before we knew its index: it is ours
            sweep(index, link)

    async def aclose(self) -> None:
        """Stop forwarding and let the namespace go.  Shielded; safe twice.

        Once its processes are gone, our fd is the namespace's last holder:
        closing it has the kernel tear the namespace down on a workqueue
        (not on our thread), and with it the sandbox's end of the veth pair,
        which takes the caller's end along.  That takes 15-45 ms here, which
        no run waits for: the link sweeper (``_linksweep.py``) crosses it
        off, or deletes it if it outlives ``LINK_GRACE``.
        """
        with anyio.CancelScope(shield=True):
            background, self._background = self._background, None
            if background is not None:
                await background.stop()
            if self._forwarder is not None:
                self._forwarder.close()
                self._forwarder = None
            self._close_and_sweep()


_NLM_F_CREATE_EXCL = 0x400 | 0x200  # NLM_F_CREATE | NLM_F_EXCL
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_RTM_NEWADDR = 20
_RTM_NEWROUTE = 24


def _veth(ifinfmsg: Any, name: str, netns_fd: int) -> Any:
    """A new veth pair: ``name`` here, :data:`SANDBOX_LINK` in ``netns_fd``."""
    msg = ifinfmsg()
    msg["header"]["type"] = _RTM_NEWLINK
    peer = {"attrs": [("IFLA_IFNAME", SANDBOX_LINK), ("IFLA_NET_NS_FD", netns_fd)]}
    msg["attrs"] = [("IFLA_IFNAME", name),
                    ("IFLA_LINKINFO", {"attrs": [
                        ("IFLA_INFO_KIND", "veth"),
                        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})]
    return msg


async def _index_of(rtnl: Rtnl, ifinfmsg: Any, name: str) -> int:
    """The index of link ``name`` in ``rtnl``'s namespace."""
    query = ifinfmsg()
    query["header"]["type"] = _RTM_GETLINK
    query["attrs"] = [("IFLA_IFNAME", name)]
    (answer,) = await rtnl.request(query)
    found = ifinfmsg(answer)
    found.decode()
    return int(found["index"])


async def _address_and_up(rtnl: Rtnl, ifinfmsg: Any, index: int, address: str) -> None:
    """``address``/30 on link ``index`` (of ``rtnl``'s namespace), and the link up."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    add = ifaddrmsg()
    add["header"]["type"] = _RTM_NEWADDR
    add["family"], add["prefixlen"], add["index"] = socket.AF_INET, 30, index
    add["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    await rtnl.request(add, _NLM_F_CREATE_EXCL)
    up = ifinfmsg()
    up["header"]["type"] = _RTM_NEWLINK
    up["index"], up["flags"], up["change"] = index, _IFF_UP, _IFF_UP
    await rtnl.request(up)


async def _default_route(rtnl: Rtnl, gateway: str) -> None:
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    route = rtmsg()
    route["header"]["type"] = _RTM_NEWROUTE
    route["family"], route["dst_len"] = socket.AF_INET, 0
    route["table"], route["proto"], route["scope"], route["type"] = 254, 4, 0, 1
    route["attrs"] = [("RTA_GATEWAY", gateway)]
    await rtnl.request(route, _NLM_F_CREATE_EXCL)


async def open_network(policy: Sandbox, compiled: Compiled) -> Network | None:
    """The namespace the parent makes for one spawn of ``policy``, configured;
    None when the child makes its own (or uses the caller's).

    A host that refuses (no CAP_SYS_ADMIN or CAP_NET_ADMIN here, a seccomp
    profile denying unshare) is put to ``on_unavailable``; if it lets the
    sandbox run without, it runs on the caller's network (None).
    Cancellation or failure leaves nothing behind.
    """
    plan = compiled.plan
    if plan.net_mode != NET_JOIN or Subsystem.NETWORK_NAMESPACE in plan.degraded:
        return None
    try:
        if not holds(CAP_SYS_ADMIN, CAP_NET_ADMIN):
            raise OSError(errno.EPERM, f"network={policy.network!r}"
                          f"{' with publish' if policy.publish else ''} needs CAP_SYS_ADMIN "
                          "and CAP_NET_ADMIN in the caller's namespaces")
        netns_fd = take()  # made ahead, lo up (_netpool.py)
        fresh = netns_fd < 0
        if fresh:
            netns_fd = _check(lib.asl_netns_new(), "a new network namespace")
    except OSError as exc:
        if exc.errno not in _REFUSALS:
            raise
        await degrade(policy, compiled, Subsystem.NETWORK_NAMESPACE, exc)
        return None
    network = Network(netns_fd, policy.network, tuple(policy.publish))
    try:
        await network._configure(fresh)
    except BaseException:
        network.discard()
        raise
    finally:
        replenish()  # the pool's next one, made while the sandbox runs
    return network
