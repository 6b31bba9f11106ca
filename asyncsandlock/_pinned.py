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
caller).

A caller without it (the detached tmpfs is refused with EPERM) hands the
text to the child instead: the child makes a user namespace of its own
(ONE, shared with ``uid``/``gid`` and ``network`` where those need one),
with a mount namespace it owns, writes the text on a tmpfs it mounts there
and attaches a read-only bind mount of the file over ``/etc/hosts``
(``pin_hosts`` in csrc/spawn.c).  Its ids are the caller's, mapped to
themselves, unless ``uid``/``gid`` ask for others.  Where the host refuses
user namespaces, the child's ``hosts`` step fails, and the refusal goes to
``on_unavailable`` as :attr:`Subsystem.PINNED_NAMES`; a policy that lets it
go runs with the names unpinned (the report names ``net_allow``).

Landlock skips a mount point when it walks up from a mount's root (see
``Layer.spawn_args`` in ``_workspace.py``): the policy's rule on
``/etc/hosts`` names the file under the mount, not ours.  So a run with
pinned names gets a ruleset of its own, the policy's rules plus read access
to our file (~0.1 ms, only for policies with host names); in a user
namespace the child adds the rule on the file it wrote to that ruleset.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from ._kernel._landlock import FS_READ_FILE, abi_version, build_ruleset
from ._kernel._overlay import detached_tmpfs
from ._plan import _LANDLOCK_PARTS, Plan, _ruleset_spec
from ._spawn import HostsSpawn
from ._types import Protection, Subsystem
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


def pinned_mount(sandbox: Sandbox, plan: Plan) -> HostsSpawn | None:
    """For one run of ``sandbox``: its pinned names for ``_spawn.spawn``,
    whose fds the caller closes once the child is spawned; or None: no host
    name in its rules, or the host refused them and the policy let them go."""
    targets = net_targets(sandbox)
    if targets is None or not targets.resolved or Subsystem.PINNED_NAMES in plan.degraded:
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
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            raise
        # No CAP_SYS_ADMIN: the child writes the file in a user namespace
        # of its own, and adds its rule to the run's own ruleset.
        mount = -1
    readable: tuple[str, ...] = () if mount < 0 else (f"/proc/self/fd/{mount}/{FILE}",)
    if plan.landlock_fd < 0:
        return HostsSpawn(mount, -1, targets.hosts if mount < 0 else b"")
    with contextlib.ExitStack() as on_fail:
        if mount >= 0:
            on_fail.callback(os.close, mount)
        spec = _ruleset_spec(sandbox)
        # The file's inode: the same in every clone of the mount.
        spec = replace(spec, readable=(*spec.readable, *readable))
        ruleset = build_ruleset(spec, abi_version(),
                                frozenset(plan.degraded & set(_LANDLOCK_PARTS)))
        on_fail.pop_all()
    if mount >= 0:
        return HostsSpawn(mount, ruleset)
    return HostsSpawn(-1, ruleset, targets.hosts, FS_READ_FILE)


def pinned_protections(protections: Mapping[Subsystem, Protection],
                       plan: Plan) -> Mapping[Subsystem, Protection]:
    """A run's protections, for a run spawned with its names pinned (the
    plan's say NOT_REQUESTED unless the policy let them go)."""
    if Subsystem.PINNED_NAMES in plan.degraded:
        return protections
    return MappingProxyType({**protections, Subsystem.PINNED_NAMES: Protection.ACTIVE})
