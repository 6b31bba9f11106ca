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

Uplinks built ahead
-------------------
Building an uplink is nine rtnetlink requests (the veth pair, its owner's
alias, two addresses, two links up, a route, two index look-ups) on the caller's
thread: 3-15 ms per run when done in the run.  So a root caller keeps up to
:data:`UPLINKS_READY` of them built ahead (:class:`_Uplinks`): a background
task of the event loop (no thread) builds them one request at a time, with a
checkpoint after each (``Rtnl.request``), so the loop never waits for more
than one request; a run takes a built one (a list pop) and only adds its
``publish`` forwarder.  The keeper is woken when a run that used an uplink
has ended (:meth:`Network.aclose`), not when it takes one: its requests then
do not compete with the spawn for the loop.  When none is ready (the first
run, a burst), the run builds its own, as before.

Each uplink is used by one run only.  A namespace a sandbox has run in may
keep what the sandbox left there -- sockets, TIME_WAIT entries, neighbour and
conntrack state, changed sysctls, addresses or routes if it held
CAP_NET_ADMIN there, processes still holding it -- and nothing short of a
new namespace is a provable reset.  So a used uplink is closed and swept,
never put back.  A ready one has had nothing run in it: our fd is its only
holder (the build's netlink sockets are closed), it has no socket but the
kernel's, and its configuration is exactly what :meth:`Network._uplink`
made.

The pool lives with the event loop whose task keeps it: when the loop ends
the task is cancelled and closes every ready uplink (and one half-built);
with its fd closed the kernel tears each namespace down, and its veth pair
with it.  A SIGKILLed caller leaves nothing more: the kernel closes its fds,
and the ready namespaces and their pairs go the same way.  What can outlive
it is the link of a sandbox still running (PDEATHSIG kills the sandbox with
its caller, so only one that escaped it, or a namespace held by another
process): the link goes when that holder does; until then its slot is
skipped by name (EEXIST), and the next caller's pool sweeps it: the link's
alias names its owner, and a dead one's links are deleted
(``_linksweep.sweep_stale``).

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

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import random
import socket
import struct
from typing import TYPE_CHECKING, Any

import anyio

from ._background import Background, current_backend
from ._core import lib
from ._linksweep import owner, sweep, sweep_stale
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
#: Uplinks kept built ahead, at most (:class:`_Uplinks`).
UPLINKS_READY = 2
#: For benchmarks only: False builds each uplink in its run (no pool).
uplink_pool = True
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

    async def _configure(self, fresh: bool, building: set[int] | None = None) -> None:
        if fresh:  # not one of the pool's, whose lo is up
            _loopback_up(self.netns_fd)
        if self.network == "uplink":
            await self._uplink(building)
        if self.publish:
            self._forwarder = Forwarder(self.publish, self._connector)

    async def _uplink(self, building: set[int] | None = None) -> None:
        """The veth pair, addresses and route; ``building`` (the pool's) gets
        the fds held meanwhile."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        host = Rtnl.open()
        inside = Rtnl(socket_in(self.netns_fd, socket.AF_NETLINK, socket.SOCK_RAW,
                                socket.NETLINK_ROUTE).detach())
        if building is not None:
            building |= {host.fileno(), inside.fileno()}
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
            await _alias(host, ifinfmsg, self._index, owner())
            await _address_and_up(host, ifinfmsg, self._index, self.gateway)
            await _address_and_up(inside, ifinfmsg, await _index_of(inside, ifinfmsg, SANDBOX_LINK),
                                  self.address)
            await _default_route(inside, self.gateway)
        finally:
            if building is not None:
                building -= {host.fileno(), inside.fileno()}
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
        if self.network == "uplink":
            _uplinks.want()  # its replacement, now that the run is over
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


async def _alias(rtnl: Rtnl, ifinfmsg: Any, index: int, alias: str) -> None:
    """Name the owner of link ``index`` (``_linksweep.owner``): a link a dead
    caller left is then told from a live one's.  A request of its own: the
    kernel ignores ``IFLA_IFALIAS`` in the one that creates the link."""
    msg = ifinfmsg()
    msg["header"]["type"] = _RTM_NEWLINK
    msg["index"] = index
    msg["attrs"] = [("IFLA_IFALIAS", alias)]
    await rtnl.request(msg)


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
        if policy.network == "uplink" and (ready := _uplinks.take()) is not None:
            ready.publish = tuple(policy.publish)
            if ready.publish:
                ready._forwarder = Forwarder(ready.publish, ready._connector)
            return ready
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


def _loop() -> object:
    """The running event loop (asyncio's loop, Trio's root task)."""
    if current_backend() == "trio":
        import trio

        return trio.lowlevel.current_root_task()
    return asyncio.get_running_loop()


class _Uplinks:
    """Uplinks built ahead, and the task of one event loop that builds them.

    Single-threaded use, as every loop's: a take is a list pop, a want sets
    an event of the keeper's loop (only from that loop)."""

    def __init__(self) -> None:
        self.ready: list[Network] = []
        #: fds of the uplink being built (for tests: held()).
        self.building: set[int] = set()
        self.keeper: Background | None = None
        self.loop: object = None
        self.wake: anyio.Event | None = None
        #: The host refused a build: no pool in this process (each run then
        #: meets the refusal itself, and on_unavailable decides).
        self.off = False
        #: Whether links of dead callers were looked for (_linksweep.py).
        self.swept = False

    def take(self) -> Network | None:
        if not uplink_pool or not self.ready:
            return None
        return self.ready.pop(0)

    def want(self) -> None:
        """Have the keeper build up to :data:`UPLINKS_READY` (start it in
        this loop if none runs).  Returns at once."""
        if not uplink_pool or self.off:
            return
        loop = _loop()
        if self.keeper is None or self.keeper.done:
            self.loop, self.wake = loop, None
            self.keeper = Background.start(self._keep, "asyncsandlock uplink pool")
        elif self.loop is loop and self.wake is not None:
            self.wake.set()
        # else: the keeper of another loop refills when its own runs end

    async def _keep(self) -> None:
        try:
            if not self.swept:  # once per process: what a dead caller left
                self.swept = True
                with contextlib.suppress(OSError):
                    await sweep_stale()
            while True:
                while uplink_pool and len(self.ready) < UPLINKS_READY:
                    try:
                        self.ready.append(await self._build())
                    except OSError:
                        self.off = True
                        return
                self.wake = anyio.Event()
                await self.wake.wait()
                self.wake = None
        finally:
            self.drain()

    async def _build(self) -> Network:
        netns_fd = take()  # made ahead by the maker, lo up (_netpool.py)
        fresh = netns_fd < 0
        if fresh:
            netns_fd = _check(lib.asl_netns_new(), "a new network namespace")
        else:
            replenish()
        network = Network(netns_fd, "uplink", ())
        self.building.add(netns_fd)
        try:
            await anyio.lowlevel.checkpoint()
            await network._configure(fresh, self.building)
        except BaseException:
            _forget(network)
            raise
        finally:
            self.building.discard(netns_fd)
        return network

    def drain(self) -> None:
        """Close every ready uplink: nothing ran in one, so our fd is its
        namespace's only holder and the kernel removes it, and its veth pair
        with it (no request of ours, nothing to await)."""
        ready, self.ready = self.ready, []
        for network in ready:
            _forget(network)

    def reset(self) -> None:
        """In a forked child: the fds are copies, the keeper is the parent's."""
        self.drain()
        self.keeper, self.loop, self.wake, self.building = None, None, None, set()
        self.off = False


def _forget(network: Network) -> None:
    fd, network.netns_fd = network.netns_fd, -1
    network.link, network._index = None, 0
    if fd >= 0:
        os.close(fd)


_uplinks = _Uplinks()
os.register_at_fork(after_in_child=_uplinks.reset)


def want_uplinks() -> None:
    """Have the pool build its uplinks now, in the background (the first run
    then takes one too); a root caller only.  Returns at once."""
    _uplinks.want()


def ready_uplinks() -> frozenset[str]:
    """The caller's ends of the uplinks built ahead (for tests)."""
    return frozenset(n.link for n in _uplinks.ready if n.link is not None)


def held() -> frozenset[int]:
    """The fds the uplink pool holds (for tests: no_leaks)."""
    return frozenset({*(n.netns_fd for n in _uplinks.ready), *_uplinks.building})


async def close_uplinks() -> None:
    """Stop the keeper and close the ready uplinks (for tests, benchmarks)."""
    keeper, _uplinks.keeper = _uplinks.keeper, None
    if keeper is not None and _uplinks.loop is _loop():
        await keeper.stop()
    _uplinks.drain()
