"""Escape battery, other processes: signals, ptrace, process memory, fds of
other processes, scheduling and limits of other processes, and clone flags.

Targets: the caller (the test process; only harmless forms: signal 0,
PTRACE_SEIZE, reads) and a throwaway ``sleep`` of the caller's uid in its own
process group (``victim``), whose limits, niceness, affinity, scheduling
policy and I/O priority are part of the world's state.
"""

from __future__ import annotations

import errno
import select

import pytest

from escapes import (
    DENIED,
    Attempt,
    World,
    attempt,
    battery,
    ids,
    world_fixture,
)

pytestmark = pytest.mark.anyio

OTHER = {*DENIED, errno.ESRCH}
P = "4"  # issue 8, item 4

PROCESS = [
    # signals (Landlock's scope)
    attempt("kill-caller", "kill", "{caller}", "0"),
    attempt("kill-caller-group", "kill", "-{callerpgid}", "0"),
    attempt("kill-victim", "kill", "{victim}", "9"),
    attempt("kill-victim-group", "kill", "-{victimpgid}", "9"),
    attempt("tgkill-caller", "tgkill", "{caller}", "{callertid}", "0"),
    attempt("tkill-caller", "tkill", "{callertid}", "0"),
    attempt("sigqueue-caller", "sigqueue", "{caller}", "0"),
    attempt("tgsigqueue-caller", "sigqueue", "{caller}", "{callertid}", "0"),
    attempt("pidfd-send-signal-caller", "pidfd-signal", "{caller}", "0"),
    attempt("pidfd-send-signal-victim", "pidfd-signal", "{victim}", "9"),
    # ptrace and process memory
    attempt("ptrace-attach-victim", "ptrace", "attach", "{victim}"),
    attempt("ptrace-seize-victim", "ptrace", "seize", "{victim}"),
    attempt("ptrace-seize-caller", "ptrace", "seize", "{caller}"),
    attempt("process-vm-readv-caller", "vm", "read", "{caller}", "{calleraddr}"),
    attempt("process-vm-readv-victim", "vm", "read", "{victim}", "{victimaddr}"),
    attempt("process-vm-writev-victim", "vm", "write", "{victim}", "{victimaddr}"),
    attempt("process-vm-writev-caller", "vm-write", "{caller}", "{calleraddr}"),
    attempt("pidfd-getfd-caller", "pidfd-getfd", "{caller}", "{heldfd}"),
    attempt("pidfd-getfd-victim", "pidfd-getfd", "{victim}", "0"),
    attempt("kcmp-caller-victim", "kcmp", "{caller}", "{victim}", "1", item=P),
    # limits and scheduling of another process
    attempt("prlimit64-victim", "prlimit", "{victim}", "100", held=OTHER, item=P),
    attempt("setpriority-victim", "setpriority", "0", "{victim}", "10", held=OTHER, item=P),
    attempt("setpriority-victim-group", "setpriority", "1", "{victimpgid}", "10", held=OTHER,
            item=P),
    attempt("sched-setaffinity-victim", "affinity", "{victim}", "0", held=OTHER, item=P),
    attempt("sched-setscheduler-victim", "setscheduler", "{victim}", "3", held=OTHER, item=P),
    attempt("sched-setparam-victim", "setparam", "{victim}", held=OTHER, item=P),
    attempt("sched-setattr-victim", "setattr", "{victim}", "5", held=OTHER, item=P),
    attempt("ioprio-set-victim", "ioprio", "1", "{victim}", "7", held=OTHER, item=P),
    attempt("ioprio-set-victim-group", "ioprio", "2", "{victimpgid}", "7", held=OTHER, item=P),
    attempt("migrate-pages-victim", "migrate-pages", "{victim}", held=OTHER, item=P),
    attempt("move-pages-victim", "move-pages", "{victim}", "{victimaddr}", held=OTHER, item=P),
    attempt("process-madvise-victim", "process-madvise", "{victim}", "{victimaddr}", held=OTHER,
            item=P),
    # a child of the caller, outside the sandbox's bookkeeping
    attempt("clone-parent", "clone-parent", held={errno.EPERM, errno.EINVAL}, item="7"),
]

# The same calls on the sandbox's own process keep working.
WORKS = [
    attempt("prlimit64-self", "prlimit", "0", "100"),
    attempt("setpriority-self", "setpriority", "0", "0", "10"),
    attempt("sched-setaffinity-self", "affinity", "0", "0"),
    attempt("sched-setscheduler-self", "setscheduler", "0", "3"),
    attempt("sched-setattr-self", "setattr", "0", "5"),
    attempt("ioprio-set-self", "ioprio", "1", "0", "7"),
    attempt("kill-self-group", "kill", "0", "0"),
]


world = world_fixture()


test_held, test_control = battery(PROCESS)


@pytest.mark.parametrize("a", WORKS, ids=ids(WORKS))
async def test_own_process_keeps_working(world: World, a: Attempt, no_leaks: None) -> None:
    code, stdout, _ = await world.confined(a)
    assert code == 0, (a.id, code, stdout)


SIGIO = attempt("sigio-to-victim", "sigio", "{victim}", held=None)


def victim_died(world: World) -> bool:
    """Whether the victim exits within 0.5 s (a signal is delivered, then acted on)."""
    return bool(select.select([world.victim_fd], [], [], 0.5)[0])


async def test_sigio_to_victim_held(world: World, no_leaks: None) -> None:
    """F_SETOWN names the victim; the SIGIO (fatal to sleep) is sent by the
    kernel on the next write, where Landlock's scope must drop it."""
    code, _, _ = await world.confined(SIGIO)
    assert code == 0  # setting an owner is allowed; the signal is not
    assert not victim_died(world)


def test_sigio_to_victim_control(world: World) -> None:
    code, _ = world.unconfined(SIGIO)
    assert code == 0
    assert victim_died(world)
