"""seccomp user-notification ioctls, :class:`NotifAction` and :class:`HandlerCtx`.

Notification ids and pid reuse
------------------------------
A notification names its target by pid, and pids are recycled.  Between
the moment the kernel queued a notification and the moment a handler reads
the target's memory, the target may have been killed and its pid handed to
an unrelated process.  ``SECCOMP_IOCTL_NOTIF_ID_VALID`` answers "is this
notification still pending?": while it is, the target is alive and blocked
in the syscall, so its pid is still its own.  A read is therefore
*followed* by an ID_VALID check, and what was read is only returned once
the check passed: a target alive after the read was alive during it.  A
write cannot be taken back, so it goes through ``/proc/PID/mem`` opened
first and checked afterwards: the open fd is bound to the target's address
space, so a pid recycled later cannot redirect it.  A handler that keeps
its ctx after ``handle()`` returned gets an error instead of memory: the
notification has been answered and the pid may no longer be the target's.

Pointer arguments are read again by the kernel when the syscall continues,
so anything a handler decides from target memory is advisory unless the
handler performs the operation itself and answers with the result (see
``docs/handlers.md``).

The receive path
----------------
RECV ignores ``O_NONBLOCK``: called with nothing queued it would block the
event loop.  :meth:`Listener.step` therefore polls the fd (timeout 0)
first; after POLLIN, RECV cannot block (a target killed in between only
turns it into ENOENT).  RECV and SEND answer ENOENT when the target died or
a signal interrupted its syscall; that is routine, never an error.  The
answer to one notification, the poll and the RECV of the next are one call
into C (``csrc/notifstep.c``): the three calls from Python cost as much
as the supervisor's own Python per notification.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .._core import ffi, lib

IOCTL_RECV: Final = 0xC0502100
IOCTL_SEND: Final = 0xC0182101
IOCTL_ID_VALID: Final = 0x40082102
IOCTL_ADDFD: Final = 0x40182103
IOCTL_SET_FLAGS: Final = 0x40082104
USER_NOTIF_FD_SYNC_WAKE_UP: Final = 1
FLAG_CONTINUE: Final = 1
_ADDFD_FLAG_SEND: Final = 1 << 1
_NOTIF = struct.Struct("=QIIiIQ6Q")  # struct seccomp_notif, 80 bytes
# Its head and its arguments, unpacked apart: the second unpack makes the
# args tuple itself, cheaper than building it from twelve fields.
_HEAD = struct.Struct("=QIIiIQ")
_ARGS = struct.Struct("=6Q")
_ARGS_AT: Final = _HEAD.size
_ADDFD = struct.Struct("=QIIII")  # struct seccomp_notif_addfd, 24 bytes
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _ulong(value: int) -> Any:
    return ffi.cast("unsigned long", value)


_REQ_RECV: Final = _ulong(IOCTL_RECV)
_REQ_SEND: Final = _ulong(IOCTL_SEND)
_REQ_ID_VALID: Final = _ulong(IOCTL_ID_VALID)
_REQ_ADDFD: Final = _ulong(IOCTL_ADDFD)
_REQ_SET_FLAGS: Final = _ulong(IOCTL_SET_FLAGS)
#: ``csrc/notifstep.c``: the supervisor's pump calls them directly.
_step = lib.asl_notif_step
_continue = lib.asl_notif_continue
_HUNG_UP: Final = 3


def set_sync_wake_up(fd: int) -> int:
    """SECCOMP_IOCTL_NOTIF_SET_FLAGS(SYNC_WAKE_UP) on listener ``fd``: 0 or the errno."""
    if int(lib.ioctl(fd, _REQ_SET_FLAGS, _ulong(USER_NOTIF_FD_SYNC_WAKE_UP))) == 0:
        return 0
    return int(ffi.errno)


class Pidfds:
    """The targets' pidfds, opened once per thread id for a listener's life.

    ``pidfd_getfd`` needs a pidfd, and opening and closing one costs more
    than the copy itself, on every guarded call.  A pidfd names one process
    (or thread) and never another: once it has exited, calls through it fail
    with ESRCH, whoever gets its id next.  A cached pidfd whose call
    succeeded therefore named a live thread with that id, which is the
    target as long as the notification is still pending (checked after it,
    as for any look at the target by id); one that failed with ESRCH is
    dropped (:meth:`forget`) and opened anew.

    A pidfd in use (:meth:`acquire` .. :meth:`release`, a handler that may
    be suspended in between) is never closed under its user, whatever is
    dropped meanwhile: its number, reused by another open, would otherwise
    name another process.  :meth:`close` (the supervisor, when it stops)
    closes the rest, and the ones in use at their release.
    """

    __slots__ = ("_fds", "_users", "closed")

    #: At most this many are kept: a sandbox that starts many short-lived
    #: processes leaves pidfds of the dead behind, which this bounds.
    LIMIT: Final = 64

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # tid -> pidfd
        self._users: dict[int, int] = {}  # pidfd -> users
        #: Once closed, nothing is cached: the caller owns what it opens.
        self.closed = False

    def get(self, tid: int) -> int:
        """The cached pidfd of ``tid``, or -1."""
        return self._fds.get(tid, -1)

    def acquire(self, tid: int) -> int:
        """The cached pidfd of ``tid`` (or -1), held until :meth:`release`."""
        fd = self._fds.get(tid, -1)
        if fd >= 0:
            self._users[fd] = self._users.get(fd, 0) + 1
        return fd

    def keep(self, tid: int, fd: int) -> bool:
        """Cache ``fd`` for ``tid``, held by the caller until :meth:`release`;
        False (the caller owns it) once closed."""
        if self.closed:
            return False
        if len(self._fds) >= self.LIMIT:
            for old in list(self._fds):
                self.forget(old)
        self.forget(tid)
        self._fds[tid] = fd
        self._users[fd] = 1
        return True

    def release(self, fd: int) -> None:
        users = self._users.pop(fd) - 1
        if users:
            self._users[fd] = users
        elif fd not in self._fds.values():  # dropped while in use
            os.close(fd)

    def forget(self, tid: int) -> None:
        fd = self._fds.pop(tid, -1)
        if fd >= 0 and fd not in self._users:
            os.close(fd)

    def close(self) -> None:
        self.closed = True
        for tid in list(self._fds):
            self.forget(tid)


class Listener:
    """The ioctls of one listener fd (the fd itself is owned elsewhere).

    Buffers are allocated once: this is the per-notification hot path.
    """

    __slots__ = ("_buf", "_cbuf", "_cid", "closed", "fd", "pidfds")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: True once the fd polled POLLHUP: every task using the filter is gone.
        self.closed = False
        self._buf = bytearray(_NOTIF.size)
        self._cbuf = ffi.from_buffer(self._buf)
        self._cid = ffi.new("uint64_t *")
        #: The targets' pidfds (closed by the supervisor when it stops).
        self.pidfds = Pidfds()

    def __repr__(self) -> str:
        return f"<Listener fd={self.fd}{' closed' if self.closed else ''}>"

    def set_sync_wake_up(self) -> int:
        """Ask the kernel to wake us, and the target after our answer, on the
        CPU that is already running (Linux 6.6+); False where unsupported.

        Supervisor and target then hand the CPU to each other like the two
        ends of a synchronous call instead of waking each other across CPUs,
        and usually the target has trapped again before we look: about 1.5x
        the notification rate on a 2-CPU VM, and a steady one instead of one
        that depends on where the scheduler put the two.  Returns 0, or
        the errno (EINVAL before Linux 6.6).
        """
        return set_sync_wake_up(self.fd)

    def step(self, names: Mapping[int, str], nid: int | None = None, val: int = 0,
             error: int = 0, flags: int = 0) -> HandlerCtx | None:
        """Answer notification ``nid`` first, when given (as :meth:`respond`),
        then return the next queued notification (``names``: syscall number
        -> name), or None when none is queued (and :attr:`closed` set if
        none ever will be again).  Never blocks."""
        rc = _step(self.fd, nid is not None, nid or 0, val, error, flags, self._cbuf)
        if rc == 1:
            return HandlerCtx._create(self, self._buf, names)
        self.stepped(rc)
        return None

    def stepped(self, rc: int) -> None:
        """After a step (``_step``, :meth:`step`) that received nothing
        (``rc`` not 1): set :attr:`closed` on a hang-up, raise on a failure."""
        if rc == 0:
            return
        if rc == _HUNG_UP:
            self.closed = True
            return
        err = ffi.errno
        what = "SEND" if rc == -1 else "RECV"
        raise OSError(err, f"SECCOMP_IOCTL_NOTIF_{what}: {os.strerror(err)}")

    def respond(self, nid: int, val: int, error: int, flags: int) -> None:
        """Answer notification ``nid`` (``error`` is a negative errno); a target
        that died meanwhile is not an error."""
        if _step(self.fd, 1, nid, val, error, flags, ffi.NULL) < 0:
            err = ffi.errno
            raise OSError(err, f"SECCOMP_IOCTL_NOTIF_SEND: {os.strerror(err)}")

    def add_fd(self, nid: int, fd: int, cloexec: bool) -> None:
        """Install a copy of ``fd`` in the target and answer with its number,
        atomically (``SECCOMP_ADDFD_FLAG_SEND``)."""
        flags = os.O_CLOEXEC if cloexec else 0
        req = ffi.from_buffer(bytearray(_ADDFD.pack(nid, _ADDFD_FLAG_SEND, fd, 0, flags)))
        if lib.ioctl(self.fd, _REQ_ADDFD, req) < 0:
            err = ffi.errno
            if err != _errno.ENOENT:
                raise OSError(err, f"SECCOMP_IOCTL_NOTIF_ADDFD: {os.strerror(err)}")

    def id_valid(self, nid: int) -> bool:
        """Whether notification ``nid`` is still pending (its target alive)."""
        self._cid[0] = nid
        if lib.ioctl(self.fd, _REQ_ID_VALID, self._cid) == 0:
            return True
        err = ffi.errno
        if err == _errno.ENOENT:
            return False
        raise OSError(err, f"SECCOMP_IOCTL_NOTIF_ID_VALID: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class NotifAction:
    """What a handler answers for a trapped syscall.  Build with the classmethods."""

    kind: str
    value: int = 0
    fd: int = -1
    cloexec: bool = False
    close: bool = False

    @classmethod
    def continue_(cls) -> NotifAction:
        """Let the syscall run as the child asked (or ask the next handler)."""
        return _CONTINUE

    @classmethod
    def errno(cls, code: int) -> NotifAction:
        """Fail the syscall with ``code`` (e.g. ``errno.EPERM``)."""
        if isinstance(code, bool) or not isinstance(code, int) or not 0 < code < 4096:
            raise ValueError(f"errno code must be an int in 1..4095, not {code!r}")
        return cls("errno", code)

    @classmethod
    def return_value(cls, value: int) -> NotifAction:
        """Skip the syscall and make it return ``value``."""
        if isinstance(value, bool) or not isinstance(value, int) or not (
                -(1 << 63) <= value < 1 << 63):
            raise ValueError(f"return value must be a 64-bit int, not {value!r}")
        return cls("return", value)

    @classmethod
    def kill(cls) -> NotifAction:
        """Kill the whole sandbox; the trapped syscall never completes."""
        return _KILL

    @classmethod
    def inject_fd(cls, fd: int, cloexec: bool = False, *, close: bool = False) -> NotifAction:
        """Install a copy of the caller's ``fd`` in the child; the syscall
        returns its number there.

        The caller keeps (and still owns) ``fd``, unless ``close`` is true:
        then the supervisor closes it once it has been injected (or the
        target died), which is what a handler that opened ``fd`` for the
        child wants.

        .. versionadded:: 0.1 the ``close`` keyword.
        """
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
            raise ValueError(f"inject_fd needs an open fd, not {fd!r}")
        return cls("inject_fd", fd=fd, cloexec=bool(cloexec), close=bool(close))


_CONTINUE = NotifAction("continue")
_KILL = NotifAction("kill")
_new = object.__new__
#: HandlerCtx._mem when no ``/proc/PID/mem`` is open, and once answered.
_LIVE: Final = -1
_ANSWERED: Final = -2


class HandlerCtx:
    """One trapped syscall, as a handler sees it.

    The memory accessors work only while the handler runs; afterwards they
    raise :class:`RuntimeError`.  Each raises :class:`ProcessLookupError`
    when the target is gone (killed, or its syscall interrupted by a signal).
    """

    __slots__ = (
        "_listener",
        "_mem",
        "_names",
        "arch",
        "args",
        "id",
        "instruction_pointer",
        "nr",
        "pid",
    )

    _listener: Listener
    #: The target's ``/proc/PID/mem`` once opened (>= 0), else _LIVE, or
    #: _ANSWERED once the handlers are done (one field for both: a store
    #: less per notification).
    _mem: int
    _names: Mapping[int, str]
    id: int
    pid: int
    nr: int
    arch: int
    instruction_pointer: int
    #: The six syscall arguments, as unsigned 64-bit ints.
    args: tuple[int, int, int, int, int, int]

    def __init__(self) -> None:
        raise TypeError("HandlerCtx objects are created by the supervisor")

    @classmethod
    def _create(cls, listener: Listener, notif: bytearray, names: Mapping[int, str]) -> HandlerCtx:
        """From a received ``struct seccomp_notif``."""
        self = _new(cls)
        self._listener = listener
        self._mem = _LIVE
        self._names = names
        self.id, self.pid, _flags, self.nr, self.arch, self.instruction_pointer = (
            _HEAD.unpack_from(notif))
        self.args = _ARGS.unpack_from(notif, _ARGS_AT)
        return self

    @property
    def syscall(self) -> str:
        """The syscall's name (e.g. ``"openat"``)."""
        return self._names.get(self.nr) or str(self.nr)

    def __repr__(self) -> str:
        state = "answered" if self._mem == _ANSWERED else "live"
        return f"<HandlerCtx {self.syscall} pid={self.pid} id={self.id:#x} {state}>"

    def is_valid(self) -> bool:
        """Whether the notification is still pending and the target alive."""
        return self._mem != _ANSWERED and self._listener.id_valid(self.id)

    def _require_live(self) -> None:
        if self._mem == _ANSWERED:
            raise RuntimeError(
                f"{self!r}: the notification was answered; its target's memory is off limits")

    def _check(self) -> None:
        if not self._listener.id_valid(self.id):
            raise ProcessLookupError(f"the target of {self!r} is gone")

    def _transfer(self, addr: int, buf: bytearray) -> int:
        """process_vm_readv of len(buf) bytes at ``addr`` into ``buf`` (in C:
        built and called from Python, the call cost three times the copy)."""
        done = int(lib.asl_peek(self.pid, addr, ffi.from_buffer(buf), len(buf)))
        if done < 0:
            raise OSError(-done, f"process_vm_readv: {os.strerror(-done)}")
        return done

    async def read(self, addr: int, size: int) -> bytes:
        """Read exactly ``size`` bytes at ``addr`` in the target.

        Raises :class:`OSError` (EFAULT) if part of the range is not mapped.
        """
        self._require_live()
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size!r}")
        buf = bytearray(size)
        try:
            done = self._transfer(addr, buf) if size else 0
        except OSError:
            self._check()
            raise
        self._check()
        if done != size:
            raise OSError(_errno.EFAULT, f"only {done} of {size} bytes at {addr:#x} are mapped")
        return bytes(buf)

    async def read_cstr(self, addr: int, max_len: int = 4096) -> bytes:
        """Read a NUL-terminated string at ``addr`` (without the NUL), at most
        ``max_len`` bytes.

        Raises :class:`OSError` (EFAULT) if the string runs into unmapped memory.
        """
        self._require_live()
        out = bytearray()
        try:
            while len(out) < max_len:
                # Stop each chunk at a page end: the next page may be unmapped.
                at = addr + len(out)
                buf = bytearray(min(max_len - len(out), _PAGE - at % _PAGE))
                got = self._transfer(at, buf)
                end = buf.find(0, 0, got)
                if end >= 0:
                    out += buf[:end]
                    break
                out += buf[:got]
                if got < len(buf):
                    raise OSError(_errno.EFAULT, f"unterminated string at {addr:#x}")
        except OSError:
            self._check()
            raise
        self._check()
        return bytes(out)

    async def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr`` in the target."""
        self._require_live()
        if self._mem == _LIVE:
            fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
            try:
                # Checked after the open: the fd now names the target's memory.
                self._check()
            except BaseException:
                os.close(fd)
                raise
            self._mem = fd
        written = os.pwrite(self._mem, data, addr)
        if written != len(data):
            raise OSError(_errno.EFAULT,
                          f"only {written} of {len(data)} bytes written at {addr:#x}")

    def _pidfds(self) -> Pidfds:
        """The pidfd cache of this notification's listener (see :class:`Pidfds`)."""
        return self._listener.pidfds

    def _close(self) -> None:
        if self._mem >= 0:
            os.close(self._mem)
        self._mem = _ANSWERED
