"""Built-in supervised policies, one module each."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from .._handler import Handler
from .._kernel._bpf import GUARDED, NET_GUARDED
from .listen import ListenGuard
from .metadata import MetadataGuard
from .net import NetGuard, SendGuard, net_guards
from .own_process import OwnProcessGuard
from .process_limit import ProcessLimit
from .watch import WatchGuard

if TYPE_CHECKING:
    from .._policy import Sandbox

_built: weakref.WeakKeyDictionary[Sandbox, tuple[Handler, ...]] = weakref.WeakKeyDictionary()


def builtin_handlers(sandbox: Sandbox) -> tuple[Handler, ...]:
    """The built-in handlers ``sandbox``'s policy needs.  ``open_process``
    registers them before the user's handlers, so they are asked first and a
    denial of theirs decides.

    The guards answer for syscalls the filter would otherwise deny outright
    (see ``GUARDED`` in ``_kernel/_bpf.py``): each is here only when the policy
    grants something it can check.  Built once per policy (the guards
    canonicalize its paths) and shared by its runs.
    """
    handlers = _built.get(sandbox)
    if handlers is None:
        found: list[Handler] = []
        if sandbox.fs_writable or sandbox.workdir is not None:
            found.append(MetadataGuard(map(str, sandbox.fs_writable),
                                       None if sandbox.workdir is None else str(sandbox.workdir)))
        if sandbox.net_allow_bind or sandbox.allow_unix_sockets or sandbox.unix_allow:
            found.append(ListenGuard(sandbox.bind_ports()))
        found += net_guards(sandbox)
        if sandbox.max_processes is not None or sandbox.max_threads is not None:
            found.append(ProcessLimit(sandbox.max_processes, sandbox.max_threads))
        if found or sandbox.handlers:
            # Where there is a supervisor anyway, these cost nothing more;
            # alone they would make one for calls few programs make
            # (inotify_add_watch, scheduling calls on another of the
            # sandbox's own processes): the filter denies those instead.
            if sandbox.fs_readable or sandbox.fs_writable:
                workdir = () if sandbox.workdir is None else (sandbox.workdir,)
                found.append(WatchGuard(map(str, (*sandbox.fs_readable,
                                                  *sandbox.fs_writable, *workdir))))
            found.append(OwnProcessGuard())
        handlers = _built[sandbox] = tuple(found)
    return handlers


def guarded_syscalls(sandbox: Sandbox) -> frozenset[str]:
    """The guarded syscalls (``GUARDED``, ``NET_GUARDED``) that ``sandbox``'s
    built-in guards decide: trapped with a supervisor, denied by the filter
    without one."""
    return frozenset(name for handler in builtin_handlers(sandbox)
                     for name in handler.syscalls) & (GUARDED | NET_GUARDED)


__all__ = [
    "ListenGuard",
    "MetadataGuard",
    "NetGuard",
    "OwnProcessGuard",
    "ProcessLimit",
    "SendGuard",
    "WatchGuard",
    "builtin_handlers",
    "guarded_syscalls",
]
