"""``max_memory``: a budget of resident memory for the whole sandbox (all
its processes together), not address space and not per process; exceeding
it stops the sandbox with ``ExitReason.MEMORY_LIMIT``."""

from __future__ import annotations

import sys
import time

import anyio
import pytest

from asyncsandlock import ExitReason, PolicyError, Sandbox, Subsystem, _watch
from asyncsandlock._enforcement import unenforced

from conftest import build_helper, system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

PYTHON_ROOTS = (sys.base_prefix, sys.prefix)

#: Takes 1 MiB after another (touched: bytes objects are written) forever.
ALLOCATOR = "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n"


@pytest.fixture(scope="session")
def memhog() -> str:
    return build_helper("memhog")


def _in(helper: str, **kwargs: object) -> Sandbox:
    return system_sandbox(fs_readable=[helper], **kwargs)


async def test_reserved_address_space_is_not_charged(memhog: str) -> None:
    """8 GiB reserved PROT_NONE and 10 MB touched run under a 100 MB budget
    (under RLIMIT_AS the reservation alone failed)."""
    result = await _in(memhog, max_memory="100M").run([memhog, "8192", "10", "1", "1"],
                                                      timeout=60)
    assert result.success and result.stdout == b"done\n", result


async def test_touched_memory_is_charged(memhog: str) -> None:
    """Control: memory really used beyond the budget stops the sandbox."""
    started = time.monotonic()
    result = await _in(memhog, max_memory="100M").run([memhog, "8192", "150", "1", "30"],
                                                      timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT and result.returncode == -9
    assert time.monotonic() - started < 10


@pytest.fixture(params=["probes", "walks", "paths"])
def discovery(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the watcher finds a sandbox's new processes and reads them: by
    probing the pids handed out since its last look alone (no walk of /proc
    in the test's time), by walking /proc at every look (as where
    ns_last_pid cannot be read), or with no fds held (past its fd budget:
    each file opened by path at each look)."""
    if request.param == "probes":
        monkeypatch.setattr(_watch, "WALK_INTERVAL", 3600.0)
    elif request.param == "walks":
        monkeypatch.setattr(_watch._Watcher, "last_pid", lambda self: None)
    else:
        monkeypatch.setattr(_watch, "FD_BUDGET", 0)
    return str(request.param)


async def test_ten_processes_share_one_budget(memhog: str, discovery: str) -> None:
    """Ten processes of 30 MB each under 200 MB: stopped, though each alone
    is far below the budget."""
    started = time.monotonic()
    result = await _in(memhog, max_memory="200M").run([memhog, "0", "30", "10", "30"],
                                                      timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT, result
    assert time.monotonic() - started < 10


async def test_ten_processes_within_the_budget_run(memhog: str) -> None:
    """Control: the same ten under a budget that holds them all."""
    result = await _in(memhog, max_memory="600M").run([memhog, "0", "30", "10", "1"],
                                                      timeout=60)
    assert result.success and result.stdout == b"done\n", result


async def test_processes_whose_first_thread_ended_are_charged(memhog: str,
                                                             discovery: str) -> None:
    """Escape: a process whose first thread has ended shows no memory in its
    stat; its memory is read through a live thread instead."""
    result = await _in(memhog, max_memory="200M").run(
        [memhog, "0", "30", "10", "30", "leaderless"], timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT, result


async def test_a_python_allocator_is_stopped() -> None:
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_memory="100M")
    result = await sb.run([sys.executable, "-c", ALLOCATOR], timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT and not result.success


async def test_python_within_the_budget_runs() -> None:
    """Control: the same interpreter, doing little, under the same budget."""
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_memory="100M")
    result = await sb.run([sys.executable, "-c", "print(sum(range(10**6)))"], timeout=60)
    assert result.success, result


async def test_untouched_allocations_are_not_charged() -> None:
    """An anonymous mapping is pages the kernel has not handed out yet:
    512 MB of them fit in 256 MB (RLIMIT_AS refused them: MemoryError)."""
    script = "import mmap\nm = mmap.mmap(-1, 512 << 20)\nm[0] = 1\nprint('allocated')\n"
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_memory="256M")
    result = await sb.run([sys.executable, "-c", script], timeout=60)
    assert result.stdout == b"allocated\n", result


async def test_an_open_process_is_watched_too(memhog: str) -> None:
    proc = await _in(memhog, max_memory="50M").open([memhog, "0", "100", "1", "30"])
    async with proc:
        with anyio.fail_after(30):
            await proc.wait()
    assert proc.reason is ExitReason.MEMORY_LIMIT


@pytest.mark.parametrize("value", [0, -1, "12Q", "-5M", True, 1.5j])
async def test_bad_max_memory_is_a_policy_error(value: object) -> None:
    with pytest.raises(PolicyError, match="max_memory"):
        Sandbox(max_memory=value)  # type: ignore[arg-type]


def test_without_a_process_group_the_watched_limits_are_reported_unenforced() -> None:
    """Nested (no group of its own), the watcher cannot find the processes."""
    sb = Sandbox(max_memory="1G", cpu_time=5, max_cpu=50)
    fields = ("max_memory", "cpu_time", "max_cpu")
    assert unenforced(sb, Subsystem.PROCESS_GROUP) == ("timeout", *fields)
    assert unenforced(sb, Subsystem.RESOURCE_LIMITS) == fields
    assert unenforced(Sandbox(), Subsystem.RESOURCE_LIMITS) == ()


async def test_a_failing_watcher_stops_what_it_watched(memhog: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: if /proc cannot be read, the sandboxes are killed, not
    left running unwatched."""
    class Broken:
        def __getattr__(self, name: str) -> object:
            def broken(*args: object) -> int:
                raise OSError(5, "reading /proc")  # EIO
            return broken

    monkeypatch.setattr(_watch, "lib", Broken())
    result = await _in(memhog, max_memory="50M").run([memhog, "0", "1", "1", "30"], timeout=60)
    assert result.reason is ExitReason.KILLED


async def test_an_orphan_is_still_charged(memhog: str, discovery: str) -> None:
    """Escape: the memory is taken by a process whose parent exited (it is
    re-parented out of the sandbox's process tree); it is still a member of
    the sandbox's process group, which nothing inside can leave."""
    script = f"({memhog} 0 100 1 30 &) ; sleep 30"
    result = await _in(memhog, max_memory="60M").run(["sh", "-c", script], timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT, result


async def test_an_orphan_within_the_budget_runs(memhog: str) -> None:
    """Control: the same orphan under a budget that holds it."""
    script = f"({memhog} 0 10 1 1 &) ; sleep 2"
    result = await _in(memhog, max_memory="60M").run(["sh", "-c", script], timeout=60)
    assert result.success, result


@pytest.fixture(scope="session")
def vmshare() -> str:
    return build_helper("vmshare")


@pytest.mark.parametrize("then", ["pause", "exec"])
async def test_memory_taken_through_a_shared_mm_is_charged(vmshare: str, then: str) -> None:
    """Escape: a process sharing its parent's mm (clone(CLONE_VM), not a
    thread) fills it while the parent never runs again, then pauses or
    execs (leaving the memory to the parent alone).  The watcher skips the
    statm of a sandbox none of whose processes ran since its last look:
    this one did, so it is read, and stopped."""
    result = await _in(vmshare, max_memory="100M").run([vmshare, "150", then], timeout=30)
    assert result.reason is ExitReason.MEMORY_LIMIT, result


async def test_memory_taken_through_a_shared_mm_control(vmshare: str) -> None:
    """Control: the same under a budget that holds it runs on (to its timeout)."""
    result = await _in(vmshare, max_memory="400M").run([vmshare, "150", "exec"], timeout=3)
    assert result.reason is ExitReason.TIMEOUT, result
