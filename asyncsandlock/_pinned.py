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
pinned names gets a ruleset of the Sandbox's own, the policy's rules plus a
read rule on the run's file, which the child adds (it has the file open
either way); one such ruleset serves many runs (:func:`_run_ruleset`).  A
run with a workspace uses the workspace's ruleset, the run's own copy of
the policy's, and in a user namespace the workspace's (one for both).
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from ._core import ffi, lib
from ._fd import close_fds
from ._kernel._landlock import FS_READ_FILE, abi_version, build_ruleset
from ._kernel._overlay import detached_tmpfs
from ._plan import _LANDLOCK_PARTS, Compiled, Plan, _ruleset_spec
from ._spawn import HostsSpawn
from ._types import Protection, Subsystem
from ._unavailable import degrade
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


#: Runs whose hosts file gets its rule in one pinned ruleset before that
#: ruleset is built anew (see :func:`_run_ruleset`).
RUNS_PER_RULESET = 64


class _Held:
    """A Sandbox's pinned ruleset: the policy's rules, and one rule per run
    on that run's hosts file."""

    __slots__ = ("__weakref__", "fd", "left", "skipped")

    def __init__(self, fd: int, skipped: frozenset[Subsystem]) -> None:
        self.fd, self.left, self.skipped = fd, RUNS_PER_RULESET, skipped
        weakref.finalize(self, os.close, fd)


#: Per owner of a Sandbox's compiled state, its pinned ruleset.
_held: weakref.WeakKeyDictionary[Compiled, _Held] = weakref.WeakKeyDictionary()


def _run_ruleset(sandbox: Sandbox, compiled: Compiled) -> int:
    """A copy of ``compiled``'s pinned ruleset for one run (an fd it closes).

    Building the policy's rules costs several ms with SYSTEM_READABLE
    (~50 paths opened and added from Python), too much per run.  So one
    ruleset serves many runs, the child of each adding the rule on the file
    it attaches (``hosts_rule`` in csrc/spawn.c): the Sandbox's one file
    (:class:`_HostsFile`) once it has one, whose rule is then the same each
    time, but before that, each first child's own (concurrent first runs), a
    rule on a file gone with its run, which grants nothing.  To bound what
    could pile up, the ruleset is built anew after
    :data:`RUNS_PER_RULESET` runs (the old one goes with the last fd on it),
    which amortises the build to ~0.1 ms per run.  Runs started meanwhile
    keep their copy: Landlock takes its snapshot of the rules at ``landlock_restrict_self``."""
    skipped = frozenset(compiled.plan.degraded & set(_LANDLOCK_PARTS))
    held = _held.get(compiled)
    if held is None or held.left <= 0 or held.skipped != skipped:
        held = _held[compiled] = _Held(
            build_ruleset(_ruleset_spec(sandbox), abi_version(), skipped), skipped)
    held.left -= 1
    return os.dup(held.fd)  # CLOEXEC


class _HostsFile:
    """A Sandbox's detached tmpfs holding its hosts file (the text is the
    Sandbox's, so every run may attach a clone of the one file): made by
    the parent (``CAP_SYS_ADMIN``), or by the first child that wrote it in
    a user namespace and sent it (csrc/spawn.c, ``write_hosts``), which
    later children clone in theirs instead of mounting a tmpfs each."""

    __slots__ = ("__weakref__", "fd", "made_here", "text")

    def __init__(self, fd: int, made_here: bool, text: bytes) -> None:
        self.fd, self.made_here, self.text = fd, made_here, text
        weakref.finalize(self, os.close, fd)


#: Per owner of a Sandbox's compiled state, its hosts file.
_files: weakref.WeakKeyDictionary[Compiled, _HostsFile] = weakref.WeakKeyDictionary()


def pinned_mount(sandbox: Sandbox, compiled: Compiled,
                 workspace: bool = False) -> HostsSpawn | None:
    """For one run of ``sandbox``: its pinned names for ``_spawn.spawn``,
    whose fds the caller closes once the child is spawned (and then calls
    :func:`kept`); or None: no host name in its rules, or the host refused
    them and the policy let them go.  ``workspace``: the run has one, whose
    ruleset (a copy of the policy's, the run's own) takes the file's rule."""
    targets = net_targets(sandbox)
    plan = compiled.plan
    if targets is None or not targets.resolved or Subsystem.PINNED_NAMES in plan.degraded:
        return None
    if targets.hosts is None:
        pinned = targets.pinned()
        if not pinned:
            return None
        # Read once per Sandbox: a local file of a few KiB.
        with open(HOSTS, "rb") as f:
            targets.hosts = hosts_text(pinned, f.read())
    held = _files.get(compiled)
    if held is not None and held.text != targets.hosts:
        held = None  # resolved anew (equal Sandboxes share their compiled state)
        del _files[compiled]
    if held is None:
        try:
            held = _files[compiled] = _HostsFile(detached_hosts(targets.hosts), True,
                                                 targets.hosts)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOSYS):
                raise
            # No CAP_SYS_ADMIN: the child writes the file in a user namespace.
    # The child adds the file's rule to the run's ruleset either way.
    ruleset = -1 if workspace or plan.landlock_fd < 0 else _run_ruleset(sandbox, compiled)
    if held is not None and held.made_here:
        return HostsSpawn(lib.ASL_HOSTS_ATTACH, held.fd, ruleset, access=FS_READ_FILE)
    if held is not None:
        return HostsSpawn(lib.ASL_HOSTS_USERNS, held.fd, ruleset, targets.hosts, FS_READ_FILE)
    pair = ffi.new("int[2]")
    if (err := lib.asl_channel(pair)) < 0:
        if ruleset >= 0:
            os.close(ruleset)
        raise OSError(-err, os.strerror(-err))
    return HostsSpawn(lib.ASL_HOSTS_USERNS, -1, ruleset, targets.hosts, FS_READ_FILE,
                      sock=pair[1], ours=pair[0])


def kept(hosts: HostsSpawn, compiled: Compiled) -> None:
    """After the spawn (or the attempts) of a run given ``hosts``: keep the
    tmpfs its child wrote the file on, if it sent one and the Sandbox has
    none yet, and close our end of the channel.  The child sent it before
    exec, or died: nothing to wait for."""
    if hosts.ours < 0:
        return
    try:
        while (fd := int(lib.asl_receive_fd(hosts.ours))) >= 0:
            if compiled in _files:
                os.close(fd)  # a concurrent first run's, or a retried attempt's
            else:
                _files[compiled] = _HostsFile(fd, False, hosts.text)
    finally:
        os.close(hosts.ours)


async def pinned_names(sandbox: Sandbox, compiled: Compiled,
                       workspace: bool = False) -> HostsSpawn | None:
    """:func:`pinned_mount` for a run of ``sandbox``, or None where pinning
    would cost the child a capability its policy keeps on the caller's
    network (CAP_NET_BIND_SERVICE, for net_allow_bind's low ports): a user
    namespace reaches nothing the caller's namespace owns (a workspace's,
    made by a caller without CAP_SYS_ADMIN, has taken it already).  The
    policy decides then (``on_unavailable``), as for a host refusing the
    namespace."""
    plan = compiled.plan
    hosts = pinned_mount(sandbox, compiled, workspace)
    if hosts is None or hosts.mode == lib.ASL_HOSTS_ATTACH or workspace or not plan.keep_caps \
            or plan.net_mode == lib.ASL_NET_USERNS:
        return hosts
    close_fds(hosts.fds())
    kept(hosts, compiled)
    await degrade(sandbox, compiled, Subsystem.PINNED_NAMES, OSError(
        errno.EPERM, "pinning host names needs a user namespace here (no CAP_SYS_ADMIN), "
                     "and in one the child would lose the capability net_allow_bind's low "
                     "ports need on the caller's network"))
    return None


def pinned_protections(protections: Mapping[Subsystem, Protection],
                       plan: Plan) -> Mapping[Subsystem, Protection]:
    """A run's protections, for a run spawned with its names pinned (the
    plan's say NOT_REQUESTED unless the policy let them go)."""
    if Subsystem.PINNED_NAMES in plan.degraded:
        return protections
    return MappingProxyType({**protections, Subsystem.PINNED_NAMES: Protection.ACTIVE})
