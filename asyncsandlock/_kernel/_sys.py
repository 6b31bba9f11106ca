"""Raw system calls the parent makes through the C core's libc."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any, Final

from .._core import ffi, lib
from ._syscalls import AARCH64, X86_64

_TABLES: Final[dict[str, tuple[Mapping[str, int], int]]] = {
    # machine: (syscall table, AUDIT_ARCH_* value seen in seccomp_data.arch)
    "x86_64": (X86_64, 0xC000003E),
    "aarch64": (AARCH64, 0xC00000B7),
}

MACHINE: Final = platform.machine()
if MACHINE not in _TABLES:  # pragma: no cover - import-time guard
    raise ImportError(f"asyncsandlock supports x86_64 and aarch64, not {MACHINE}")
SYSCALLS: Final[Mapping[str, int]] = _TABLES[MACHINE][0]
AUDIT_ARCH: Final[int] = _TABLES[MACHINE][1]


def syscall(name: str, *args: Any) -> int:
    """Call syscall ``name`` with long/pointer ``args``; raise OSError on failure."""
    cargs = [a if isinstance(a, ffi.CData) else ffi.cast("long", a) for a in args]
    rc = int(lib.syscall(SYSCALLS[name], *cargs))
    if rc == -1:
        err = ffi.errno
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return rc


def ioctl(fd: int, request: int, arg: Any) -> int:
    """ioctl(2) with a pointer or integer argument; raise OSError on failure."""
    carg = arg if isinstance(arg, ffi.CData) else ffi.cast("unsigned long", arg)
    rc = int(lib.ioctl(fd, ffi.cast("unsigned long", request), carg))
    if rc == -1:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return rc
