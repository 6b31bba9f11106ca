"""seccomp user-notification ioctls, :class:`NotifAction` and :class:`HandlerCtx`.

Notification ids and pid reuse
------------------------------
A notification names its target by pid, and pids are recycled.  Between
the moment the kernel queued a notification and the moment a handler reads
the target's memory, the target may have been killed and its pid handed to
an unrelated process.  ``SECCOMP_IOCTL_NOTIF_ID_VALID`` answers "is this
notification still pending?": while it is, the target is alive and blocked
in the syscall, so its pid is still its own.  Every read or write of target
memory is therefore *followed* by an ID_VALID check, and what was read is
only returned once the check passed.  A handler that keeps its ctx after
``handle()`` returned gets an error instead of memory: the notification has
been answered and the pid may no longer be the target's.

Pointer arguments are read again by the kernel when the syscall continues,
so anything a handler decides from target memory is advisory unless the
handler performs the operation itself and answers with the result (see
``docs/handlers.md``).
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from dataclasses import dataclass
from typing import Final

from ._core import ffi
from ._sys import ioctl

IOCTL_RECV: Final = 0xC0502100
IOCTL_SEND: Final = 0xC0182101
IOCTL_ID_VALID: Final = 0x40082102
IOCTL_ADDFD: Final = 0x40182103
IOCTL_SET_FLAGS: Final = 0x40082104
USER_NOTIF_FD_SYNC_WAKE_UP: Final = 1
_FLAG_CONTINUE: Final = 1
_ADDFD_FLAG_SEND: Final = 1 << 1
_NOTIF = struct.Struct("=QIIiIQ6Q")  # struct seccomp_notif, 80 bytes
_RESP = struct.Struct("=QqiI")  # struct seccomp_notif_resp, 24 bytes
_ADDFD = struct.Struct("=QIIII")  # struct seccomp_notif_addfd, 24 bytes


@dataclass(frozen=True, slots=True)
class Notification:
    """One received ``struct seccomp_notif``."""

    id: int
    pid: int
    nr: int
    arch: int
    instruction_pointer: int
    args: tuple[int, int, int, int, int, int]


class Listener:
    """The ioctls of one listener fd (the fd itself is owned elsewhere)."""

    __slots__ = ("_buf", "_cbuf", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray(_NOTIF.size)
        self._cbuf = ffi.from_buffer(self._buf)

    def recv(self) -> Notification | None:
        """Receive one notification; None if its target went away (ENOENT).

        Only call once the fd polled readable: RECV ignores O_NONBLOCK.
        """
        # The kernel insists on a zeroed buffer, or RECV fails with EINVAL.
        self._buf[:] = bytes(_NOTIF.size)
        try:
            ioctl(self.fd, IOCTL_RECV, self._cbuf)
        except OSError as exc:
            if exc.errno in (_errno.ENOENT, _errno.EINTR):
                return None
            raise
        nid, pid, _flags, nr, arch, ip, *args = _NOTIF.unpack(self._buf)
        return Notification(nid, pid, nr, arch, ip, tuple(args))  # type: ignore[arg-type]

    def respond(self, nid: int, *, val: int = 0, error: int = 0, cont: bool = False) -> None:
        """Answer a notification; a target that died meanwhile is not an error."""
        resp = ffi.from_buffer(bytearray(_RESP.pack(nid, val, error, _FLAG_CONTINUE if cont else 0)))
        try:
            ioctl(self.fd, IOCTL_SEND, resp)
        except OSError as exc:
            if exc.errno != _errno.ENOENT:
                raise

    def add_fd(self, nid: int, fd: int, cloexec: bool) -> None:
        """Install ``fd`` in the target and answer with its number, atomically."""
        flags = os.O_CLOEXEC if cloexec else 0
        req = ffi.from_buffer(bytearray(_ADDFD.pack(nid, _ADDFD_FLAG_SEND, fd, 0, flags)))
        try:
            ioctl(self.fd, IOCTL_ADDFD, req)
        except OSError as exc:
            if exc.errno != _errno.ENOENT:
                raise

    def id_valid(self, nid: int) -> bool:
        """Whether notification ``nid`` is still pending (its target alive)."""
        try:
            ioctl(self.fd, IOCTL_ID_VALID, ffi.new("uint64_t *", nid))
        except OSError as exc:
            if exc.errno == _errno.ENOENT:
                return False
            raise
        return True


@dataclass(frozen=True, slots=True)
class NotifAction:
    """What a handler answers for a trapped syscall.  Build with the classmethods."""

    kind: str
    value: int = 0
    fd: int = -1
    cloexec: bool = False

    @classmethod
    def continue_(cls) -> NotifAction:
        """Let the syscall run as the child asked (or ask the next handler)."""
        return _CONTINUE

    @classmethod
    def errno(cls, code: int) -> NotifAction:
        """Fail the syscall with ``code`` (e.g. ``errno.EPERM``)."""
        if not isinstance(code, int) or not 0 < code < 4096:
            raise ValueError(f"errno code must be an int in 1..4095, not {code!r}")
        return cls("errno", code)

    @classmethod
    def return_value(cls, value: int) -> NotifAction:
        """Skip the syscall and make it return ``value``."""
        if not isinstance(value, int):
            raise ValueError(f"return value must be an int, not {value!r}")
        return cls("return", value)

    @classmethod
    def kill(cls) -> NotifAction:
        """Kill the whole sandbox; the syscall never completes."""
        return _KILL

    @classmethod
    def inject_fd(cls, fd: int, cloexec: bool = False) -> NotifAction:
        """Install a copy of the caller's ``fd`` in the child; the syscall
        returns its number there.  The caller keeps (and still owns) ``fd``."""
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"inject_fd needs an open fd, not {fd!r}")
        return cls("inject_fd", fd=fd, cloexec=cloexec)


_CONTINUE = NotifAction("continue")
_KILL = NotifAction("kill")


class HandlerCtx:
    """One trapped syscall, as a handler sees it.

    The memory accessors work only while the handler runs; afterwards they
    raise :class:`RuntimeError`.
    """

    __slots__ = ("_listener", "_live", "_mem", "args", "arch", "id", "instruction_pointer", "nr",
                 "pid", "syscall")

    def __init__(self, listener: Listener, notif: Notification, syscall: str) -> None:
        self._listener = listener
        self._live = True
        self._mem: int | None = None
        self.id = notif.id
        self.pid = notif.pid
        self.nr = notif.nr
        self.arch = notif.arch
        self.instruction_pointer = notif.instruction_pointer
        self.args = notif.args
        self.syscall = syscall

    def __repr__(self) -> str:
        state = "live" if self._live else "answered"
        return f"<HandlerCtx {self.syscall} pid={self.pid} id={self.id:#x} {state}>"

    def is_valid(self) -> bool:
        """Whether the notification is still pending and the target alive."""
        return self._live and self._listener.id_valid(self.id)

    def _memfd(self) -> int:
        if not self._live:
            raise RuntimeError("this HandlerCtx was answered; its target's memory is off limits")
        if self._mem is None:
            self._mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
            self._check()
        return self._mem

    def _check(self) -> None:
        if not self._listener.id_valid(self.id):
            raise ProcessLookupError(f"the target of notification {self.id:#x} is gone")

    async def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes at ``addr`` in the target."""
        data = os.pread(self._memfd(), size, addr)
        self._check()
        return data

    async def read_cstr(self, addr: int, max_len: int = 4096) -> bytes:
        """Read a NUL-terminated string at ``addr`` (without the NUL)."""
        fd = self._memfd()
        out = bytearray()
        while len(out) < max_len:
            # Stop chunks at page ends: the next page may be unmapped.
            chunk = min(max_len - len(out), 4096 - (addr + len(out)) % 4096)
            data = os.pread(fd, chunk, addr + len(out))
            end = data.find(b"\0")
            if end >= 0:
                out += data[:end]
                break
            if not data:
                break
            out += data
        self._check()
        return bytes(out)

    async def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr`` in the target."""
        fd = self._memfd()
        self._check()
        os.pwrite(fd, data, addr)

    def _close(self) -> None:
        self._live = False
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None
