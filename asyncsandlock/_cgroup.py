"""Whether a cgroup v2 backend for the watched limits could run here.

Where the caller may create child groups of its own cgroup v2 group (a
delegated subtree, or root on a cgroup v2 host), ``memory.max`` with
``memory.events``, and ``cpu.max``, would enforce ``max_memory`` and
``max_cpu`` in the kernel, with no overshoot and no sampling.  That backend
is not built (docs/limits.md: this was written on a cgroup v1 hybrid host
whose unified hierarchy has no controllers, where nothing of it could be
tested); this module only tells whether it could run, and why not.  It only
reads: it creates, moves and writes nothing.
"""

from __future__ import annotations

import os
from typing import NamedTuple

#: The controllers such a backend needs enabled for the children.
CONTROLLERS = ("memory", "cpu")


class CgroupV2(NamedTuple):
    """What :func:`probe_cgroup_v2` found."""

    #: The group a sandbox's child group would be made in; None if there is none.
    directory: str | None
    #: Why there is none ("" when there is one).
    reason: str


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def _own_group() -> CgroupV2:
    """The directory of this process's cgroup v2 group, whatever it enables."""
    mounts = _read("/proc/self/mountinfo")
    groups = _read("/proc/self/cgroup")
    if mounts is None or groups is None:
        return CgroupV2(None, "/proc/self/mountinfo or /proc/self/cgroup cannot be read")
    # Field 5 is the mount point; the filesystem type follows the " - ".
    roots = [line.split()[4] for line in mounts.splitlines()
             if line.partition(" - ")[2].split()[:1] == ["cgroup2"]]
    if not roots:
        return CgroupV2(None, "no cgroup2 file system is mounted (a cgroup v1 host)")
    path = next((line[3:] for line in groups.splitlines() if line.startswith("0::")), None)
    if path is None:
        return CgroupV2(None, "this process is in no cgroup v2 group")
    return CgroupV2(os.path.normpath(os.path.join(roots[0], path.lstrip("/"))), "")


def probe_cgroup_v2() -> CgroupV2:
    """The cgroup v2 group of this process, if it has :data:`CONTROLLERS`
    enabled for its children and this process may make groups in it."""
    found = _own_group()
    directory = found.directory
    if directory is None:
        return found
    available = (_read(os.path.join(directory, "cgroup.controllers")) or "").split()
    enabled = (_read(os.path.join(directory, "cgroup.subtree_control")) or "").split()
    if missing := [name for name in CONTROLLERS if name not in enabled]:
        names = ", ".join(missing)
        if any(name not in available for name in missing):
            return CgroupV2(None, f"the {names} controllers are not on the cgroup v2 hierarchy "
                                  f"at {directory} (a hybrid host has them on cgroup v1)")
        return CgroupV2(None, f"{directory} does not enable {names} for its children "
                              "(cgroup.subtree_control)")
    if not os.access(directory, os.W_OK):
        return CgroupV2(None, f"{directory} is not delegated to this process (not writable)")
    return found
