"""Escape battery, /proc and /sys: the caller's environment, memory and fds,
and kernel settings.

Under the README policy /proc is not readable at all; many programs need it,
so every attempt is made again with ``/proc`` in ``fs_readable``
(policy ``proc``), where Landlock's ptrace scoping must keep the caller's
and any outside process's entries closed, and /proc/sys read-only.
"""

from __future__ import annotations

import os

import pytest

from escapes import (
    World,
    accepted_battery,
    attempt,
    battery,
    world_fixture,
)

pytestmark = pytest.mark.anyio

TARGETS = [
    ("caller-environ", "open", "/proc/{caller}/environ", "r"),
    ("caller-mem", "open", "/proc/{caller}/mem", "r"),
    ("caller-maps", "open", "/proc/{caller}/maps", "r"),
    ("caller-fd-open", "open", "/proc/{caller}/fd/{heldfd}", "r"),
    ("caller-fd-readlink", "readlink", "/proc/{caller}/fd/{heldfd}"),
    ("caller-root", "readdir", "/proc/{caller}/root/"),
    ("caller-cwd", "readdir", "/proc/{caller}/cwd/"),
    ("caller-exe", "open", "/proc/{caller}/exe", "r"),
    ("caller-task-environ", "open", "/proc/{caller}/task/{callertid}/environ", "r"),
    ("victim-environ", "open", "/proc/{victim}/environ", "r"),
    ("victim-mem", "open", "/proc/{victim}/mem", "r"),
    ("proc-sys-write", "open", "/proc/sys/kernel/hostname", "w"),
    ("drop-caches-write", "open", "/proc/sys/vm/drop_caches", "w"),
    ("proc-self-root-unlisted", "open", "/proc/self/root{out}/file", "r"),
]

PROC = [attempt(f"{policy}:{name}", *args, policy=policy)
        for policy in ("readme", "proc") for name, *args in TARGETS]
PROC.append(attempt("readme:caller-fd-list", "readdir", "/proc/{caller}/fd"))

# Accepted, and listed in docs/confinement.md: with /proc readable, what
# /proc shows every process of the same uid without a ptrace check.
ACCEPTED = [
    (attempt("proc:caller-fd-list", "readdir", "/proc/{caller}/fd", policy="proc", held=None),
     "/proc/PID/fd lists fd numbers to the owner's uid without a ptrace check "
     "(where they point stays closed)"),
    (attempt("proc:caller-cmdline", "open", "/proc/{caller}/cmdline", "r", policy="proc",
             held=None),
     "/proc/PID/cmdline and status are world-readable"),
]
SYS = "/sys/kernel/mm/transparent_hugepage/enabled"
if os.path.exists(SYS):
    PROC.append(attempt("sys-write", "open", SYS, "w"))


world = world_fixture()


test_held, test_control = battery(PROC)


test_accepted, test_accepted_control = accepted_battery(ACCEPTED)


async def test_proc_policy_still_shows_the_sandbox_itself(world: World) -> None:
    a = attempt("self-environ", "open", "/proc/self/environ", "r", policy="proc")
    code, _, _ = await world.confined(a)
    assert code == 0
