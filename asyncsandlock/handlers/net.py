"""The network guard: ``connect`` and addressed sends, checked and performed
on the child's behalf.

What Landlock cannot say
------------------------
Landlock (up to ABI 7) restricts TCP connect and bind by *port*.  Rules that
name a host or an address, per-port UDP rules, ICMP rules and ``net_deny``
need the destination address, which lives in the child's memory where BPF
cannot read it.  When the policy has such rules the filter sends ``connect``
here, and ``sendto`` when its address argument is not NULL; ``sendmsg`` and
``sendmmsg`` come always when UDP or ICMP is restricted, since their address
is inside a ``msghdr`` (see ``_send`` in ``_kernel/_bpf.py``).  TCP data on a
connected socket (``write``, ``send``, ``sendto`` without an address),
``recv*`` and everything else never stop here.

Check once, act on what was checked
-----------------------------------
The guard reads the sockaddr (and a send's data) *once* into its own memory,
checks that copy against the rules, takes a copy of the child's socket
(``pidfd_getfd``: the same open socket) and makes the call itself with the
bytes it checked.  It never answers "continue": the kernel would then read
the address again from memory that another thread of the child may have
rewritten meanwhile, and look up the fd number again, which the child may
have pointed at another socket with ``dup2``.

Blocking as the kernel would
----------------------------
A non-blocking socket gets what the kernel says: ``EINPROGRESS`` from a TCP
connect, ``EAGAIN`` from a full send buffer.  For a blocking socket the
guard must not block the event loop: a TCP connect is started with
``O_NONBLOCK`` set on the open socket for the duration of the one call (the
flag belongs to the open file, which the child shares: another thread of the
child using that same socket during those few microseconds would see it
non-blocking), then the guard waits for the socket to become writable on the
loop and answers with ``SO_ERROR``.  Sends use ``MSG_DONTWAIT`` and wait for
writability when the socket is full.  ``SO_SNDTIMEO`` is not honoured.

The common case in C
--------------------
Once the guard has decided a destination (its verdict is memoised in C by
the socket's kind and the sockaddr's family, port and address bytes), a
connect to it is answered by ``csrc/netfast.c`` from the supervisor's pump,
without this module (see ``_netfast.py``): the same steps in the same
order, on the bytes read once and the child's own socket.  What C cannot
decide comes here.

Unix sockets
------------
A guarded ``connect`` or addressed send on a unix socket is refused (EACCES)
unless ``allow_unix_sockets``: a socket from ``socketpair`` could otherwise
re-target its datagrams to any pathname socket on the host.  With it, a
pathname is resolved as the child would (``Target.resolve``) and reached
through ``/proc/self/fd/N`` (no second lookup by name); an *abstract* name is
refused (EPERM): made by the supervisor, the connection would escape
Landlock's abstract-socket scoping.  ``SCM_RIGHTS`` in a sendmsg carries the
child's fds, fetched with ``pidfd_getfd``; ``SCM_CREDENTIALS`` is refused
(the kernel would check the credentials against the supervisor's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio

from .._core import ffi, lib
from .._exceptions import PolicyError
from .._handler import ExceptionPolicy, Handler
from .._kernel._notify import HandlerCtx, NotifAction
from .._kernel._sys import syscall
from .._netspec import Address, NetPolicy, NetRule, needs_guard
from .._objects import AT_FDCWD, Target, int_arg, object_path, real_roots, within
from .._refusal import UnavailableHandler

if TYPE_CHECKING:
    from .._policy import Sandbox

_SOCKADDR_MAX: Final = 128  # sizeof(struct sockaddr_storage)
_MSGHDR: Final = struct.Struct("=QI4xQQQQi4x")  # struct msghdr on 64-bit Linux
_MMSGHDR_SIZE: Final = _MSGHDR.size + 8  # + unsigned msg_len, padded
_IOVEC: Final = struct.Struct("=QQ")
_CMSGHDR: Final = struct.Struct("=Qii")
_UIO_MAXIOV: Final = 1024
#: Most bytes one guarded send copies: a datagram is at most 64 KiB; a
#: stream send (rare here: TCP sends with an address) is sent in part, as
#: the kernel may do.
_SEND_MAX: Final = 1 << 20
_CONTROL_MAX: Final = 1 << 16
_SCM_RIGHTS: Final = 1
_SCM_CREDENTIALS: Final = 2
_MSG_DONTWAIT: Final = 0x40
_ICMP: Final = (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6)
#: Out-parameters of the C calls, read back before the loop runs anything else.
_INFO: Final = ffi.new("int[4]")
_STARTED: Final = ffi.new("int *")
_DONE: Final = NotifAction.return_value(0)
#: A socket's kind as the verdict memo (``csrc/netfast.c``) numbers it.
_KINDS: Final = {"tcp": 0, "udp": 1, "icmp": 2}


class NetTargets:
    """A policy's network rules, its host names resolved once (on the
    Sandbox's first run; a new Sandbox resolves anew)."""

    __slots__ = ("allow", "allow_unix", "deny", "hosts", "policy", "resolved", "resolving",
                 "unix_roots", "verdicts")

    #: What :attr:`policy` said of a destination, keyed by the socket's
    #: kind and the bytes of its sockaddr that the rules look at (family,
    #: port, address), in C: the connect fast path (``_netfast.py``)
    #: answers from it without Python.  It starts over when full.
    verdicts: Any

    def __init__(self, allow: Iterable[NetRule], deny: Iterable[NetRule],
                 allow_unix: bool, unix_roots: tuple[str, ...] = ()) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.allow_unix = allow_unix
        #: ``unix_allow``, canonical: the pathname sockets the child may reach.
        self.unix_roots = unix_roots
        #: Until resolved, a rule naming a host opens nothing.
        self.policy = NetPolicy(self.allow, self.deny)
        self.verdicts = ffi.gc(_c_alloc(lib.asl_verdicts_new()), lib.asl_verdicts_free)
        self.resolved = not self.policy.names()
        #: Set when a resolution under way ends (concurrent first runs wait for it).
        self.resolving: anyio.Event | None = None
        #: The synthetic hosts file of the pinned names (``_pinned.py``), once made.
        self.hosts: bytes | None = None

    async def resolve(self, on_unavailable: UnavailableHandler) -> None:
        """Resolve the host names of the rules; a name that does not resolve
        is a :class:`PolicyError`.  ``on_unavailable``: the policy's, for the
        resolver's own sandbox."""
        while not self.resolved:
            if self.resolving is not None:  # another run of this Sandbox is resolving
                await self.resolving.wait()
                continue
            done = self.resolving = anyio.Event()
            try:
                found = {name: await _lookup(name, on_unavailable)
                         for name in self.policy.names()}
                self.policy = NetPolicy(self.allow, self.deny, found)
                lib.asl_verdicts_clear(self.verdicts)
                self.resolved = True
            finally:  # a failure: the next run tries again
                self.resolving = None
                done.set()

    def pinned(self) -> dict[str, tuple[Address, ...]]:
        """Each allowed name and the addresses it was resolved to."""
        out: dict[str, tuple[Address, ...]] = {}
        for rule in self.policy.allow:
            if rule.host is not None and rule.nets is not None:
                out.setdefault(rule.host, tuple(net.network_address for net in rule.nets))
        return out


async def _lookup(name: str, on_unavailable: UnavailableHandler) -> tuple[Address, ...]:
    """The addresses of ``name``, as the C library's resolver finds them
    (``/etc/hosts``, DNS... per nsswitch.conf): ``getent ahosts`` run in a
    sandbox of its own that may only read the system and speak DNS.  Not
    ``getaddrinfo`` here: asyncio and Trio both run it on a worker thread,
    and the library makes no thread; nor is an untrusted name resolved in
    the caller's process."""
    from .._policy import SYSTEM_READABLE, Sandbox

    getent = shutil.which("getent") or "/usr/bin/getent"
    resolver = Sandbox(fs_readable=SYSTEM_READABLE, net_allow=["tcp://:53", "udp://*"],
                       on_unavailable=on_unavailable, name="resolver")
    result = await resolver.run([getent, "ahosts", name], timeout=30)
    addresses: dict[Address, None] = {}
    for line in (result.stdout or b"").decode("ascii", "replace").splitlines():
        with contextlib.suppress(ValueError, IndexError):
            addresses[ipaddress.ip_address(line.split()[0].partition("%")[0])] = None
    if result.returncode != 0 or not addresses:
        raise PolicyError("net_allow", f"host {name!r} does not resolve "
                                       f"(getent ahosts: exit status {result.returncode})")
    return tuple(addresses)


def _destination(raw: bytes) -> tuple[int, Address | None, int]:
    """(family, address, port) of a sockaddr; EINVAL where the kernel would."""
    if len(raw) < 2:
        raise OSError(errno.EINVAL, "short sockaddr")
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_INET:
        if len(raw) < 16:
            raise OSError(errno.EINVAL, "short sockaddr_in")
        return family, ipaddress.IPv4Address(raw[4:8]), int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        if len(raw) < 24:
            raise OSError(errno.EINVAL, "short sockaddr_in6")
        return family, ipaddress.IPv6Address(raw[8:24]), int.from_bytes(raw[2:4], "big")
    return family, None, 0


def _c_alloc(pointer: Any) -> Any:
    if pointer == ffi.NULL:
        raise MemoryError
    return pointer


def _c_result(rc: int) -> int:
    """A C core result: itself, or OSError for -errno."""
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


class _Call:
    """One trapped call's socket: the child's, copied into our fd table."""

    def __init__(self, targets: NetTargets, target: Target, number: int,
                 address: tuple[int, int] | None = None) -> None:
        """``address``: (pointer, length) of a sockaddr to read with the
        socket, in the same C call and under the same check (:attr:`raw`)."""
        self.targets = targets
        self.target = target
        if number < 0:
            raise OSError(errno.EBADF, "bad file descriptor")
        # The copy, and its family, type, protocol and file flags, in one C
        # call (ENOTSOCK for anything but a socket): this is every connect.
        info = _INFO  # read before anything else can run on the loop
        #: The sockaddr read with the socket (``address``), else empty.
        self.raw = b""
        if address is None:
            self.fd = target.own(target.through_pidfd(
                lambda pidfd: _c_result(lib.asl_net_take(pidfd, number, info))))
            target.confirm()
        else:
            pointer, length = address
            if not 0 <= length <= _SOCKADDR_MAX:
                raise OSError(errno.EINVAL, "bad address length")
            ctx = target.ctx
            buf = bytearray(length)
            into = ffi.from_buffer(buf)
            listener = ctx._listener.fd
            self.fd = target.own(target.through_pidfd(lambda pidfd: _c_result(lib.asl_net_fetch(
                listener, ctx.id, pidfd, number, ctx.pid, pointer, length, into, info))))
            self.raw = bytes(buf)
        self.family = info[0]
        self.kind = ("tcp" if info[1] == socket.SOCK_STREAM
                     else "icmp" if info[2] in _ICMP else "udp")
        #: The file's flags when we took it (the child may change them later).
        self.flags = info[3]

    def blocking(self, flags: int = 0) -> bool:
        return not (fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_NONBLOCK
                    or flags & _MSG_DONTWAIT)

    def address(self, raw: bytes, *, sending: bool = False) -> bytes:
        """``raw`` if the rules let this socket reach it, in the form to hand
        the kernel (a unix path: as ``/proc/self/fd/N``); else OSError."""
        if self.family == socket.AF_UNIX:
            return self._unix(raw)
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.EAFNOSUPPORT, "not an inet socket")
        # The rules look at the family, port and address only (not at
        # sin_zero, a v6 flow label or scope): those bytes key a verdict
        # (-2: not a full sockaddr_in or sockaddr_in6).
        verdicts, kind = self.targets.verdicts, _KINDS[self.kind]
        verdict = lib.asl_verdict_get(verdicts, kind, raw, len(raw))
        if verdict != -2:
            if verdict == -1:
                _, ip, port = _destination(raw)
                verdict = ip is not None and self.targets.policy.allows(self.kind, ip, port)
                lib.asl_verdict_put(verdicts, kind, raw, len(raw), verdict)
            if not verdict:
                _, ip, port = _destination(raw)
                raise OSError(errno.EACCES, f"{self.kind} to {ip} port {port} is not allowed")
            return raw
        family, ip, port = _destination(raw)
        if family == socket.AF_UNSPEC:
            if not sending or self.family == socket.AF_INET6:
                # connect(AF_UNSPEC) dissolves a connection; an IPv6 send
                # ignores an AF_UNSPEC address: neither reaches anything.
                return raw
            # An IPv4 UDP send reads an AF_UNSPEC address as a sockaddr_in.
            family, ip, port = _destination(b"\x02\x00" + raw[2:])
        if ip is None:
            raise OSError(errno.EAFNOSUPPORT, "not an inet address")
        if not self.targets.policy.allows(self.kind, ip, port):
            raise OSError(errno.EACCES, f"{self.kind} to {ip} port {port} is not allowed")
        return raw

    def _unix(self, raw: bytes) -> bytes:
        targets = self.targets
        if not (targets.allow_unix or targets.unix_roots):
            raise OSError(errno.EACCES, "unix sockets are not allowed")
        if len(raw) < 3 or int.from_bytes(raw[:2], "little") != socket.AF_UNIX:
            raise OSError(errno.EINVAL, "not a unix pathname")
        if raw[2] == 0:
            raise OSError(errno.EPERM, "abstract unix socket from the supervisor")
        path = raw[2:].partition(b"\0")[0]
        held = self.target.resolve(AT_FDCWD, path, follow=True)
        # The object we will connect to, where it is now (not the name the
        # child gave: a symlink on the way may lead anywhere).
        if not targets.allow_unix and not within(object_path(held), targets.unix_roots):
            raise OSError(errno.EACCES, "unix socket outside unix_allow")
        return struct.pack("=H", socket.AF_UNIX) + f"/proc/self/fd/{held}".encode() + b"\0"

    async def sending(self, blocking: bool, send: Callable[[], int]) -> int:
        """``send()`` (non-blocking); on EAGAIN, for a blocking call, wait
        until the socket is writable and try again."""
        tries = 0
        while True:
            try:
                return send()
            except BlockingIOError:
                if not blocking:
                    raise
            tries += 1
            if tries > 1:
                # A unix datagram to a full receiver polls writable all the
                # while: back off rather than spin on the loop.
                await anyio.sleep(min(0.001 * tries, 0.05))
            await anyio.wait_writable(self.fd)


async def _read_addr(ctx: HandlerCtx, pointer: int, length: int) -> bytes:
    if not 0 <= length <= _SOCKADDR_MAX:
        raise OSError(errno.EINVAL, "bad address length")
    return await ctx.read(pointer, length) if length else b""


class _RuleGuard(Handler):
    """A guard deciding by the policy's network rules (``targets``)."""

    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.DENY_EPERM

    def __init__(self, targets: NetTargets) -> None:
        self.targets = targets

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rules={len(self.targets.allow)}>"


class NetGuard(_RuleGuard):
    """``connect`` to what the rules allow, made by the supervisor."""

    syscalls: ClassVar[tuple[str, ...]] = ("connect",)

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        try:
            with Target(ctx) as target:
                # The socket first, as the kernel does (EBADF, ENOTSOCK before
                # a bad address), then the address, in one C call with one
                # check that the notification is still pending after both.
                call = _Call(self.targets, target, int_arg(ctx.args[0]),
                             (ctx.args[1], int_arg(ctx.args[2])))
                checked = call.address(call.raw)
                return await _connect(call, checked)
        except OSError as exc:
            return NotifAction.errno(exc.errno or errno.EPERM)


async def _connect(call: _Call, raw: bytes) -> NotifAction:
    """connect() as the child asked, in C (``csrc/guardcall.c``): a blocking
    TCP connect made non-blocking for the call, and waited for on the loop
    only when the handshake is not over yet (EINPROGRESS for a non-blocking
    socket, as the kernel says it)."""
    wait = call.kind == "tcp" and not call.flags & os.O_NONBLOCK
    rc = lib.asl_net_connect(call.fd, raw, len(raw), wait, _STARTED)
    if rc == 1:
        # _STARTED read before the wait: other calls use it meanwhile.
        rc = await _connected(call.fd, _STARTED[0], raw)
    return NotifAction.errno(-rc) if rc else _DONE


async def _connected(fd: int, started: int, raw: bytes) -> int:
    """The end of a connect under way on ``fd`` (``started``: the errno
    connect gave, ``raw``: the address it was given): 0 or -errno, once the
    socket is writable and the handshake over."""
    while True:
        await anyio.wait_writable(fd)
        rc = int(lib.asl_net_connected(fd, started, raw, len(raw)))
        if rc != 1:
            return rc


async def finish_connect(fd: int, started: int, raw: bytes) -> NotifAction:
    """Answer a connect the C fast path started (``_netfast.py``) once its
    handshake is over; ``fd``, the copy of the child's socket, is ours to
    close."""
    try:
        rc = await _connected(fd, started, raw)
    finally:
        os.close(fd)
    return NotifAction.errno(-rc) if rc else _DONE


class SendGuard(_RuleGuard):
    """``sendto`` with an address, ``sendmsg`` and ``sendmmsg``: sent by the
    supervisor, with the data and address it read once, where the rules
    allow the address."""

    syscalls: ClassVar[tuple[str, ...]] = ("sendto", "sendmsg", "sendmmsg")

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        try:
            with Target(ctx) as target:
                if ctx.syscall == "sendto":
                    return await self._sendto(ctx, target)
                call = _Call(self.targets, target, int_arg(ctx.args[0]))
                flags = int_arg(ctx.args[2])
                if ctx.syscall == "sendmsg":
                    msg = await _Message.read(ctx, ctx.args[1])
                    sent = await msg.send(call, flags)
                    return NotifAction.return_value(sent)
                return await self._sendmmsg(ctx, call, int_arg(ctx.args[2]) & 0xFFFFFFFF,
                                            int_arg(ctx.args[3]))
        except OSError as exc:
            return NotifAction.errno(exc.errno or errno.EPERM)

    async def _sendto(self, ctx: HandlerCtx, target: Target) -> NotifAction:
        raw = await _read_addr(ctx, ctx.args[4], int_arg(ctx.args[5]))
        size = min(ctx.args[2], _SEND_MAX)
        data = await ctx.read(ctx.args[1], size) if size else b""
        call = _Call(self.targets, target, int_arg(ctx.args[0]))
        flags = int_arg(ctx.args[3])
        dest = call.address(raw, sending=True) if raw else b""
        buf, to = ffi.from_buffer(data), ffi.from_buffer(dest) if dest else 0
        sent = await call.sending(call.blocking(flags), lambda: syscall(
            "sendto", call.fd, buf, len(data), flags | _MSG_DONTWAIT, to, len(dest)))
        return NotifAction.return_value(sent)

    async def _sendmmsg(self, ctx: HandlerCtx, call: _Call, count: int,
                        flags: int) -> NotifAction:
        count = min(count, _UIO_MAXIOV)
        vector = ctx.args[1]
        sent = 0
        for i in range(count):
            at = vector + i * _MMSGHDR_SIZE
            try:
                msg = await _Message.read(ctx, at)
                size = await msg.send(call, flags)
            except OSError:
                if sent:
                    break  # as the kernel: the count so far; the error is lost
                raise
            await ctx.write(at + _MSGHDR.size, struct.pack("=I", size))
            sent += 1
        return NotifAction.return_value(sent)


class _Message:
    """A ``struct msghdr`` of the child, read once: address, data, control."""

    __slots__ = ("control", "data", "name")

    def __init__(self, name: bytes, data: bytes, control: bytes) -> None:
        self.name, self.data, self.control = name, data, control

    @classmethod
    async def read(cls, ctx: HandlerCtx, pointer: int) -> _Message:
        header = await ctx.read(pointer, _MSGHDR.size)
        name_p, name_len, iov_p, iov_len, ctl_p, ctl_len, _ = _MSGHDR.unpack(header)
        name = await _read_addr(ctx, name_p, name_len) if name_p else b""
        if iov_len > _UIO_MAXIOV:
            raise OSError(errno.EMSGSIZE, "too many iovecs")
        data = bytearray()
        if iov_len:
            vecs = await ctx.read(iov_p, iov_len * _IOVEC.size)
            for base, length in _IOVEC.iter_unpack(vecs):
                take = min(length, _SEND_MAX - len(data))
                if take:
                    data += await ctx.read(base, take)
        if ctl_len > _CONTROL_MAX:
            raise OSError(errno.ENOBUFS, "control data too large")
        control = await ctx.read(ctl_p, ctl_len) if ctl_p and ctl_len else b""
        return cls(name, bytes(data), control)

    def ancillary(self, call: _Call) -> list[tuple[int, int, bytes]]:
        """The control messages, the child's fds in SCM_RIGHTS made ours."""
        out = []
        at = 0
        while at + _CMSGHDR.size <= len(self.control):
            length, level, kind = _CMSGHDR.unpack_from(self.control, at)
            if length < _CMSGHDR.size or at + length > len(self.control):
                raise OSError(errno.EINVAL, "bad control message")
            payload = self.control[at + _CMSGHDR.size:at + length]
            if level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS:
                raise OSError(errno.EPERM, "SCM_CREDENTIALS through the supervisor")
            if level == socket.SOL_SOCKET and kind == _SCM_RIGHTS:
                fds = struct.unpack(f"={len(payload) // 4}i", payload[:len(payload) // 4 * 4])
                payload = struct.pack(f"={len(fds)}i", *(call.target.fd(fd) for fd in fds))
            out.append((level, kind, payload))
            at += (length + 7) & ~7
        return out

    async def send(self, call: _Call, flags: int) -> int:
        dest = call.address(self.name, sending=True) if self.name else b""
        ancillary = self.ancillary(call) if self.control else []
        sock = socket.socket(fileno=call.fd)
        try:
            address = _python_address(call.family, dest)
            return await call.sending(call.blocking(flags), lambda: (
                sock.sendmsg([self.data], ancillary, flags | _MSG_DONTWAIT, address)
                if address is not None else
                sock.sendmsg([self.data], ancillary, flags | _MSG_DONTWAIT)))
        finally:
            sock.detach()


def _python_address(family: int, raw: bytes) -> tuple[Any, ...] | bytes | None:
    """The checked sockaddr ``raw`` in the form socket.sendmsg takes."""
    if not raw:
        return None
    if family == socket.AF_UNIX:
        return raw[2:].partition(b"\0")[0]
    kind, ip, port = _destination(raw)
    if kind == socket.AF_INET:
        return (str(ip), port)
    if kind == socket.AF_INET6:
        flow = struct.unpack_from("!I", raw, 4)[0]
        scope = struct.unpack_from("=I", raw, 24)[0] if len(raw) >= 28 else 0
        return (str(ip), port, flow, scope)
    raise OSError(errno.EAFNOSUPPORT, "not an inet address")


def net_guards(sandbox: Sandbox) -> list[Handler]:
    """The network guards ``sandbox``'s rules need (none where Landlock's
    port rules and the filter's socket checks say it all)."""
    allow, deny = sandbox.net_rules(), sandbox.net_deny_rules()
    connect, sends = needs_guard(allow, deny)
    if sandbox.unix_allow and not sandbox.allow_unix_sockets:
        # A unix datagram's destination is a sendto/sendmsg address too.
        connect = sends = True
    if not connect:
        return []
    targets = NetTargets(allow, deny, sandbox.allow_unix_sockets,
                         real_roots(map(str, sandbox.unix_allow)))
    guards: list[Handler] = [NetGuard(targets)]
    if sends:
        guards.append(SendGuard(targets))
    return guards


#: Per Sandbox, its guard's rules or None, as its built-in handlers (built
#: once per Sandbox) have them: asked twice on every spawn's path.
_targets: weakref.WeakKeyDictionary[Sandbox, NetTargets | None] = weakref.WeakKeyDictionary()


def net_targets(sandbox: Sandbox) -> NetTargets | None:
    """The rules ``sandbox``'s network guard checks (None: no guard)."""
    try:
        return _targets[sandbox]
    except KeyError:
        pass
    from . import builtin_handlers

    found = next((handler.targets for handler in builtin_handlers(sandbox)
                  if isinstance(handler, NetGuard)), None)
    _targets[sandbox] = found
    return found


def unresolved(sandbox: Sandbox) -> bool:
    """True while ``sandbox``'s rules name hosts not resolved yet: a check
    without a coroutine, for every spawn's path."""
    targets = net_targets(sandbox)
    return targets is not None and not targets.resolved


async def resolve_names(sandbox: Sandbox) -> None:
    """Resolve the host names of ``sandbox``'s rules, once per Sandbox."""
    targets = net_targets(sandbox)
    if targets is not None:
        await targets.resolve(sandbox.on_unavailable)
