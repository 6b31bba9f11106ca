"""Pinned names: the ``/etc/hosts`` a sandbox with host rules sees.

A rule such as ``"api.example.com:443"`` is checked against the addresses
the name resolved to once, for the Sandbox (``NetTargets.resolve`` in
``handlers/net.py``).  Were the child to resolve the name itself, it could
get other addresses (DNS answers change, round-robin), which the guard
would then refuse.  So the child sees a synthetic hosts file that maps each
allowed name to exactly the checked addresses, ahead of the host's own
lines: the C library's resolver finds the name there (``files`` comes
before ``dns`` in nsswitch.conf), with no DNS traffic.

How it reaches the child
------------------------
As the workspace does (``_kernel/_overlay.py``): the parent writes the
file on a small detached tmpfs of its own, and each spawn takes a detached
bind mount of just that file (``open_tree(OPEN_TREE_CLONE)``); the child attaches it
over ``/etc/hosts`` in a mount namespace of its own (``mount_hosts`` in
csrc/spawn.c).  The host's mount table never changes, and the mount is
gone with the child's namespace.  This needs ``CAP_SYS_ADMIN`` (a root
caller); without it the names are not pinned (see docs/network.md).

Landlock skips a mount point when it walks up from a mount's root (see
``Layer.spawn_args`` in ``_workspace.py``): the policy's rule on
``/etc/hosts`` names the file under the mount, not ours.  So a run with
pinned names gets a ruleset of its own, the policy's rules plus read access
to our file (~0.1 ms, only for policies with host names).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ._kernel._landlock import abi_version, build_ruleset
from ._kernel._overlay import detached_tmpfs
from ._plan import _LANDLOCK_PARTS, Plan, _ruleset_spec
from .handlers.net import net_targets

if TYPE_CHECKING:
    from ._policy import Sandbox

HOSTS = "/etc/hosts"
#: The file's name on its tmpfs (``_spawn.spawn`` clones it from there).
FILE = "hosts"
MARK = b"# asyncsandlock: the names of net_allow, pinned to the addresses checked"
#: The synthetic file's tmpfs: a hosts file is a few KiB.
_SIZE = 1 << 20


def hosts_text(pinned: Mapping[str, Sequence[object]], original: bytes) -> bytes:
    """The synthetic hosts file: each pinned name with its addresses, then
    the host's ``original`` lines without the pinned names (a line left
    with no name is dropped), so that only the checked addresses answer."""
    names = {name.lower() for name in pinned}
    out = [MARK]
    out += [f"{address} {name}".encode() for name, addresses in pinned.items()
            for address in addresses]
    for line in original.splitlines():
        fields = line.partition(b"#")[0].split()
        if len(fields) < 2:
            continue
        kept = [n for n in fields[1:] if n.decode("ascii", "replace").lower() not in names]
        if kept:
            out.append(b" ".join([fields[0], *kept]))
    return b"\n".join(out) + b"\n"


def detached_hosts(text: bytes) -> int:
    """A detached tmpfs of its own holding ``text`` as ``hosts`` (mode
    0644); its mount fd.  Each spawn attaches a clone of that one file
    (``open_tree`` in ``_spawn.spawn``): a mount the child attached cannot
    be attached again, should the spawn be retried (``confined_spawn``).
    Writing it is writing to memory: short."""
    mount = detached_tmpfs(_SIZE)
    try:
        fd = os.open(FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                     dir_fd=mount)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o644)  # whatever our umask
        finally:
            os.close(fd)
    except BaseException:
        os.close(mount)
        raise
    return mount


def pinned_mount(sandbox: Sandbox, plan: Plan) -> tuple[int, int] | None:
    """For one run of ``sandbox``: the hosts file's tmpfs (a mount fd, see
    :func:`detached_hosts`) and the run's Landlock ruleset (-1 without
    Landlock), fds the caller closes once the child is spawned; or None: no
    host name in its rules, or a caller that may not
    mount (EPERM: the names are then not pinned)."""
    targets = net_targets(sandbox)
    if targets is None or not targets.resolved:
        return None
    if targets.hosts is None:
        pinned = targets.pinned()
        if not pinned:
            return None
        # Read once per Sandbox: a local file of a few KiB.
        with open(HOSTS, "rb") as f:
            targets.hosts = hosts_text(pinned, f.read())
    try:
        mount = detached_hosts(targets.hosts)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            return None
        raise
    if plan.landlock_fd < 0:
        return mount, -1
    with contextlib.ExitStack() as on_fail:
        on_fail.callback(os.close, mount)
        spec = _ruleset_spec(sandbox)
        # The file's inode: the same in every clone of the mount.
        spec = replace(spec, readable=(*spec.readable, f"/proc/self/fd/{mount}/{FILE}"))
        ruleset = build_ruleset(spec, abi_version(),
                                frozenset(plan.degraded & set(_LANDLOCK_PARTS)))
        on_fail.pop_all()
    return mount, ruleset
