"""``max_processes``' count of a sandbox's process group (``csrc/group.c``),
directly and through an escape that hid processes from the count."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from asyncsandlock.handlers import process_limit

from conftest import build_helper, system_sandbox


@pytest.fixture(scope="session")
def leaderless() -> str:
    return build_helper("leaderless")


def _state(pid: int) -> str:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


@pytest.fixture
def group() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes in a new process group (the first one's pid), killed after."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    if procs:
        os.killpg(procs[0].pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _sleeper(pgid: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], process_group=pgid)


def test_the_live_members_of_a_group_are_counted(group: list[subprocess.Popen[bytes]]) -> None:
    group.append(_sleeper())
    pgid = group[0].pid
    group.extend(_sleeper(pgid) for _ in range(3))
    others = _sleeper()  # a group of its own: not counted
    try:
        assert process_limit.count_group(pgid) == (4, 4)
    finally:
        others.kill()
        others.wait()


def test_threads_are_counted_apart(group: list[subprocess.Popen[bytes]]) -> None:
    """A process running four threads is one process, four threads."""
    script = ("import sys, threading, time\n"
              "for _ in range(3):\n"
              "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    group.append(subprocess.Popen([sys.executable, "-c", script], process_group=0,
                                  stdout=subprocess.PIPE))
    assert group[0].stdout is not None
    assert group[0].stdout.readline() == b"ready\n"
    group[0].stdout.close()
    group.append(_sleeper(group[0].pid))
    assert process_limit.count_group(group[0].pid) == (2, 5)


def test_a_zombie_is_not_counted(group: list[subprocess.Popen[bytes]]) -> None:
    group.append(_sleeper())
    pgid = group[0].pid
    group.append(_sleeper(pgid))
    os.kill(group[1].pid, signal.SIGKILL)
    # Unreaped, it keeps its pid and group: a zombie, not a process that runs.
    os.waitid(os.P_PID, group[1].pid, os.WEXITED | os.WNOWAIT)
    assert _state(group[1].pid) == "Z"
    assert process_limit.count_group(pgid) == (1, 1)


def test_nothing_is_counted_for_an_empty_group() -> None:
    # No process has group 2**22 + 1: it is above PID_MAX_LIMIT.
    assert process_limit.count_group(2**22 + 1) == (0, 0)


def test_a_process_whose_first_thread_exited_is_counted(leaderless: str) -> None:
    """Its stat says Z, yet it runs: the old scan, which skipped every Z, missed it."""
    helper = subprocess.Popen([leaderless, "2"], process_group=0, stdout=subprocess.PIPE)
    out, _ = helper.communicate(timeout=30)
    # Its two children live on in its group, which pins the group id.
    pgid = helper.pid
    try:
        assert out == b"2 0\n"
        members = [int(p.name) for p in pathlib.Path("/proc").iterdir()
                   if p.name.isdigit() and _group_of(int(p.name)) == pgid]
        assert len(members) == 2 and all(_state(pid) == "Z" for pid in members)
        # One live thread each, beside the ended first one.
        assert process_limit.count_group(pgid) == (2, 2)
    finally:
        os.killpg(pgid, signal.SIGKILL)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leaks")
async def test_max_processes_counts_processes_whose_first_thread_exited(
        leaderless: str) -> None:
    """Escape: each child ends its first thread and runs on in another, which
    made it look like a zombie to the count; 6 forks under max_processes=3."""
    sb = system_sandbox(fs_readable=[leaderless], max_processes=3)
    result = await sb.run([leaderless, "6"], timeout=60)
    # The helper itself is one of the three.
    assert result.stdout == b"2 4\n", result


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leaks")
async def test_without_max_processes_every_such_fork_succeeds(leaderless: str) -> None:
    """The control: the same forks without the limit all succeed."""
    sb = system_sandbox(fs_readable=[leaderless])
    result = await sb.run([leaderless, "6"], timeout=60)
    assert result.stdout == b"6 0\n", result
