"""Policy -> Landlock ruleset fd, built once in the parent.

Only ``landlock_restrict_self`` happens in the child: the ruleset is an fd
that every child inherits (it is CLOEXEC, so it is gone after exec).

Each ABI version adds access rights; asking for a right the kernel does not
know is EINVAL, so handled masks are cut to the running ABI, and what was
cut is reported as a missing :class:`Subsystem` so that the policy decides
(see ``_plan.py``) instead of the rule silently weakening.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._core import ffi, lib
from .._holes import Entries, Rule, entries_rules, is_denied, layout_resolved, resolve
from .._types import Subsystem
from ._sys import syscall

# Filesystem rights (uapi/linux/landlock.h), newest first with their ABI.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_CREATE_RULESET_VERSION = 1 << 0

_FS_ABI1 = (1 << 13) - 1
_FS_ALL_BY_ABI = {1: _FS_ABI1, 2: _FS_ABI1 | FS_REFER, 3: _FS_ABI1 | FS_REFER | FS_TRUNCATE,
                  4: _FS_ABI1 | FS_REFER | FS_TRUNCATE}
_FS_ALL = _FS_ABI1 | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV
_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# Writable trees are not executable (list a path in fs_readable too for that),
# and never get device nodes or device ioctls: a root child could otherwise
# mknod a disk and read it.
WRITE = (FS_READ_FILE | FS_READ_DIR | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE
         | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER
         | FS_TRUNCATE)
# Devices every program expects: opening them reaches no user data.
DEVICES = {"/dev/null": READ | FS_WRITE_FILE | FS_TRUNCATE, "/dev/zero": READ,
           "/dev/full": READ | FS_WRITE_FILE, "/dev/random": READ, "/dev/urandom": READ}

# Rights a kernel without them cannot enforce, and the subsystem that names them.
_OPTIONAL_FS = ((FS_REFER, 2, Subsystem.LANDLOCK_REFER),
                (FS_TRUNCATE, 3, Subsystem.LANDLOCK_TRUNCATE),
                (FS_IOCTL_DEV, 5, Subsystem.LANDLOCK_IOCTL_DEV))


def abi_version() -> int:
    """The kernel's Landlock ABI; raises OSError when Landlock is unavailable."""
    return syscall("landlock_create_ruleset", ffi.NULL, 0, _CREATE_RULESET_VERSION)


@dataclass(frozen=True, slots=True)
class RulesetSpec:
    """What a ruleset must enforce, before it meets a kernel."""

    readable: tuple[str, ...]
    writable: tuple[str, ...]
    connect_ports: frozenset[int] | None  # None: any port (no CONNECT_TCP handling)
    bind_ports: frozenset[int] | None  # None: any port (no BIND_TCP handling)
    scoped: bool = True
    #: fs_denied: holes carved out of the grants (see _holes.py).
    denied: tuple[str, ...] = ()

    def wanted(self) -> dict[Subsystem, int]:
        """Subsystems this spec needs beyond ABI 1, with the ABI that brings each."""
        need = {sub: abi for _, abi, sub in _OPTIONAL_FS}
        need[Subsystem.LANDLOCK_NET] = 4
        if self.scoped:
            need[Subsystem.LANDLOCK_SCOPE] = 6
        return need


def missing(spec: RulesetSpec, abi: int) -> list[Subsystem]:
    """The parts of ``spec`` that a kernel with ``abi`` cannot enforce."""
    return [sub for sub, need in spec.wanted().items() if abi < need]


class Recipe:
    """What :func:`build_ruleset` did, kept to make copies of the ruleset:
    the create attributes, each path rule with the ``O_PATH`` fd of its
    object (held open: a copy names the very objects the original does,
    whatever was renamed since), each port rule.  A copy costs one
    ``landlock_create_ruleset`` and one ``landlock_add_rule`` per rule,
    ~2 us each, against the path walks, opens and ``fstat`` of a build.

    Landlock cannot copy a ruleset or take a rule back, so a run that needs
    the policy's rules plus one (a workspace's overlay root) needs a ruleset
    of its own: this is how it gets one cheaply.  :meth:`close` (or garbage
    collection) closes the fds.
    """

    __slots__ = ("__weakref__", "_finalizer", "_packed", "attr", "fs_mask", "paths", "ports")

    def __init__(self) -> None:
        self.attr = b""
        #: The filesystem rights the ruleset handles (the running ABI's).
        self.fs_mask = 0
        self.paths: list[tuple[int, int]] = []
        self.ports: list[tuple[int, int]] = []
        #: The path rules' packed attributes, one C buffer (made by build()).
        self._packed: Any = None
        self._finalizer = weakref.finalize(self, _close_all, self.paths)

    def build(self) -> int:
        """A new ruleset fd with the same rules."""
        fd = syscall("landlock_create_ruleset", ffi.from_buffer(self.attr), len(self.attr), 0)
        try:
            if self._packed is None:
                self._packed = ffi.new("char[]", b"".join(
                    struct.pack("=Qi", rights, target) for target, rights in self.paths) or b"\0")
            # All rules in one call into C (csrc/holes.c): cffi's argument
            # conversion per call was most of a copy's cost.
            got = lib.asl_landlock_add_rules(fd, self._packed, len(self.paths))
            if got < 0:
                raise OSError(-got, f"landlock_add_rule: {os.strerror(-got)}")
            for right, port in self.ports:
                _add_port(fd, right, port)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        self._finalizer()


def _close_all(fds: list[tuple[int, int]]) -> None:
    for fd, _ in fds:
        os.close(fd)
    fds.clear()


def build_ruleset(spec: RulesetSpec, abi: int, skipped: frozenset[Subsystem],
                  recipe: Recipe | None = None) -> int:
    """Create the ruleset fd for ``spec`` on a kernel with ``abi``.

    ``skipped`` lists optional subsystems the policy agreed to run without;
    every other one must be supported or this raises OSError(EOPNOTSUPP).
    ``recipe``: an empty :class:`Recipe` to record the ruleset in.
    """
    for sub in missing(spec, abi):
        if sub not in skipped:
            raise OSError(errno.EOPNOTSUPP, f"{sub.value} needs a newer Landlock ABI than {abi}")
    fs_mask = _FS_ALL if abi >= 5 else _FS_ALL_BY_ABI[min(abi, 4)]
    net_mask = 0
    if abi >= 4 and Subsystem.LANDLOCK_NET not in skipped:
        net_mask = ((NET_BIND_TCP if spec.bind_ports is not None else 0)
                    | (NET_CONNECT_TCP if spec.connect_ports is not None else 0))
    scope = 0
    if abi >= 6 and spec.scoped and Subsystem.LANDLOCK_SCOPE not in skipped:
        scope = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    attr = struct.pack("=QQQ", fs_mask, net_mask, scope)[:24 if abi >= 6 else 16]
    fd = syscall("landlock_create_ruleset", ffi.from_buffer(attr), len(attr), 0)
    keep = None if recipe is None else recipe.paths
    if recipe is not None:
        recipe.attr, recipe.fs_mask = attr, fs_mask
    try:
        _add_grants(fd, spec.readable, READ & fs_mask, spec.denied, keep)
        _add_grants(fd, spec.writable, WRITE & fs_mask, spec.denied, keep)
        for path, rights in DEVICES.items():
            if (os.path.exists(path) and path not in spec.writable
                    and not (spec.denied and is_denied(path, spec.denied))):
                _add_path(fd, path, rights & fs_mask, keep=keep)
        if net_mask:
            ports = [(NET_BIND_TCP, port) for port in sorted(spec.bind_ports or ())]
            ports += [(NET_CONNECT_TCP, port) for port in sorted(spec.connect_ports or ())]
            for right, port in ports:
                _add_port(fd, right, port)
            if recipe is not None:
                recipe.ports[:] = ports
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add_grants(ruleset: int, grants: tuple[str, ...], rights: int,
                denied: tuple[str, ...], keep: list[tuple[int, int]] | None = None) -> None:
    """Rules for ``grants`` less the holes of ``denied``: the grant's rights
    on each rule of :func:`carve` that it covers whole, listing on the
    directories on the way to a hole."""
    holes = frozenset(resolve(path) for path in denied)  # once, not once per grant
    for grant in grants:
        for part in layout_resolved(grant, holes):
            if isinstance(part, Entries):
                if keep is None:
                    _add_entries(ruleset, part, rights)
                    continue
                rules: Iterable[Rule] = entries_rules(part)  # a Recipe keeps each fd
            elif part.whole and part.path == grant:  # no hole in it
                _add_path(ruleset, grant, rights, keep=keep)
                continue
            else:
                rules = (part,)
            for rule in rules:
                # FileNotFoundError: removed since it was listed, nothing left to grant.
                with contextlib.suppress(FileNotFoundError):
                    # O_NOFOLLOW: an entry swapped for a symbolic link since it
                    # was listed must not carry the rule to the link's target.
                    _add_path(ruleset, rule.path,
                              rights if rule.whole else rights & FS_READ_DIR,
                              os.O_NOFOLLOW, keep)


def _add_entries(ruleset: int, part: Entries, rights: int) -> None:
    """The siblings of holes, ``part``, granted ``rights`` in one call into C
    (csrc/holes.c): the directory listed there, each entry opened by its
    name relative to it."""
    try:
        # O_NOFOLLOW: the directory was resolved; one swapped for a link
        # since is refused (ELOOP) rather than followed.
        where = os.open(part.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                        | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # removed since: nothing left to grant
    try:
        skip = b"".join(os.fsencode(name) + b"\0" for name in part.skip)
        got = lib.asl_landlock_entries(ruleset, where, skip, len(skip), rights, _FILE_ONLY)
    finally:
        os.close(where)
    if got < 0:
        raise OSError(-got, f"{part.directory}: granting its entries: {os.strerror(-got)}")


def _add_path(ruleset: int, path: str, rights: int, flags: int = 0,
              keep: list[tuple[int, int]] | None = None) -> None:
    """A rule on ``path``; ``keep``: a :class:`Recipe`'s list, which takes
    the object's fd (and closes it) instead of this call."""
    target = os.open(path, os.O_PATH | os.O_CLOEXEC | flags)
    try:
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            rights &= _FILE_ONLY
        _add_rule(ruleset, target, rights)
    except BaseException:
        os.close(target)
        raise
    if keep is None:
        os.close(target)
    else:
        keep.append((target, rights))


def _add_rule(ruleset: int, target: int, rights: int) -> None:
    """A rule granting ``rights`` beneath the object open as ``target``."""
    # struct landlock_path_beneath_attr is packed: 12 bytes.
    attr = ffi.from_buffer(bytearray(struct.pack("=Qi", rights, target)))
    syscall("landlock_add_rule", ruleset, _RULE_PATH_BENEATH, attr, 0)


def _add_port(ruleset: int, right: int, port: int) -> None:
    attr = ffi.new("uint64_t[2]", [right, port])
    syscall("landlock_add_rule", ruleset, _RULE_NET_PORT, attr, 0)
