"""The child's ``uid``/``gid`` and ``no_coredump``: how the child takes them
(csrc/spawn.c, ``set_identity``) and what its spawn request carries.

A caller holding CAP_SETUID and CAP_SETGID (root, most containers) sets them
in the child: ``setgroups(0)``, ``setresgid``, ``setresuid``.  Any other
caller cannot, but may own a user namespace: the child makes one and maps
the requested ids to the caller's own, so that ``uid=0`` is a root that owns
nothing outside it.  A host that refuses the namespace is a refusal of
:attr:`Subsystem.IDENTITY`, for ``on_unavailable`` to decide.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from ._core import ffi, lib
from ._kernel._caps import permitted_mask

_CAP_SETGID = 6
_CAP_SETUID = 7
_SETIDS = 1 << _CAP_SETUID | 1 << _CAP_SETGID

#: (uid, gid, enum asl_identity)
Identity = tuple[int, int, int]


def plan_identity(uid: int | None, gid: int | None) -> Identity | None:
    """How a child of this process takes ``uid``/``gid``; None: it keeps ours."""
    if uid is None:
        return None
    how = lib.ASL_IDENTITY_SET if permitted_mask() & _SETIDS == _SETIDS \
        else lib.ASL_IDENTITY_USERNS
    return (uid, uid if gid is None else gid, how)


def keeps_caps(identity: Identity | None, net_mode: int = lib.ASL_NET_HOST) -> bool:
    """Whether the child may keep a capability (CAP_NET_BIND_SERVICE): not
    once setresuid to a non-zero uid has emptied its sets, nor in a user
    namespace, whose capabilities reach nothing of the host's network; but
    uid 0 of the user namespace that also owns the sandbox's own network
    (``ASL_NET_USERNS``: one namespace for both) may bind its low ports."""
    return identity is None or (identity[0] == 0 and identity[2] == lib.ASL_IDENTITY_SET) \
        or root_of_network(identity, net_mode)


def root_of_network(identity: Identity | None, net_mode: int) -> bool:
    """Whether the child is uid 0 of a user namespace that owns its network
    namespace: the one namespace an unprivileged caller's child makes for
    both (csrc/spawn.c, ``identity_first``)."""
    return identity is not None and identity[0] == 0 and \
        identity[2] == lib.ASL_IDENTITY_USERNS and net_mode == lib.ASL_NET_USERNS


def core_rlimit(no_coredump: bool) -> tuple[tuple[int, int, int], ...]:
    """A hard RLIMIT_CORE of 0: unlike PR_SET_DUMPABLE, which execve sets
    back, it holds across exec, and without CAP_SYS_RESOURCE it cannot be
    raised again."""
    return ((resource.RLIMIT_CORE, 0, 0),) if no_coredump else ()


def fill_request(req: Any, identity: Identity | None) -> tuple[Any, ...]:
    """Set ``req``'s identity fields; returns the buffers it points into."""
    if identity is None:
        req.identity = lib.ASL_IDENTITY_NONE
        return ()
    uid, gid, how = identity
    req.identity, req.uid, req.gid = how, uid, gid
    if how != lib.ASL_IDENTITY_USERNS:
        return ()
    uid_map = ffi.new("char[]", f"{uid} {os.geteuid()} 1\n".encode())
    gid_map = ffi.new("char[]", f"{gid} {os.getegid()} 1\n".encode())
    req.uid_map, req.gid_map = uid_map, gid_map
    return (uid_map, gid_map)
