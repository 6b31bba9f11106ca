"""``max_memory`` in a cgroup (``memory_mechanism="cgroup"``, ``_cgroup.py``):
a budget the kernel enforces for the whole sandbox, in a child group of the
caller's own memory cgroup, removed after every run.

Every test runs on both backends: cgroup v1 where this process has a v1
memory group of its own it may write (skipped elsewhere), cgroup v2 where
its v2 group delegates ``memory`` (skipped elsewhere, with the reason).
Nothing is made outside the caller's own group; the tests check that the
group itself is as it was.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from collections.abc import Iterator

import anyio
import pytest

from asyncsandlock import (
    ExitReason,
    PolicyError,
    Protection,
    Sandbox,
    SpawnError,
    Subsystem,
    _cgroup,
    _run,
)
from asyncsandlock._cgroup import (
    PREFIX,
    MemoryBackend,
    MemoryGroup,
    probe_cgroup_v1_memory,
    probe_cgroup_v2,
)

from conftest import build_helper, system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

PYTHON_ROOTS = (sys.base_prefix, sys.prefix)
ALLOCATOR = "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n"

_V1 = probe_cgroup_v1_memory()
_V2 = probe_cgroup_v2(("memory",))


_NO_V1 = f"no own cgroup v1 memory group: {_V1.reason}"
_NO_V2 = f"no delegated cgroup v2 group: {_V2.reason}"


@pytest.fixture(params=[
    pytest.param(1, marks=pytest.mark.skipif(_V1.directory is None, reason=_NO_V1)),
    pytest.param(2, marks=pytest.mark.skipif(_V2.directory is None, reason=_NO_V2)),
], ids=["v1", "v2"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The caller's own group of that version, the backend of every run of
    the test; checked to be as it was (its limits, no group of ours left)."""
    version = int(request.param)
    directory = _V1.directory if version == 1 else _V2.directory
    assert directory is not None
    files = _cgroup._V1 if version == 1 else _cgroup._V2
    monkeypatch.setattr(_cgroup, "memory_backend",
                        lambda: MemoryBackend(directory, files, ""))
    limit = os.path.join(directory, files.limit)
    with open(limit) as file:
        before = file.read()
    ours_before = _ours(directory)
    yield directory
    with open(limit) as file:
        assert file.read() == before, "the caller's own group was changed"
    assert _ours(directory) == ours_before, "groups left behind"


def _ours(directory: str) -> set[str]:
    """The groups of this process in ``directory``."""
    mine = f"{PREFIX}{os.getpid()}-"
    return {name for name in os.listdir(directory) if name.startswith(mine)}


@pytest.fixture(scope="session")
def memhog() -> str:
    return build_helper("memhog")


def _in(*readable: str, **kwargs: object) -> Sandbox:
    return system_sandbox(fs_readable=readable, memory_mechanism="cgroup", **kwargs)


@pytest.fixture
def peaks(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The peak of each group, read as it is removed."""
    found: list[int | None] = []
    close = MemoryGroup.aclose

    async def aclose(self: MemoryGroup) -> None:
        found.append(self.peak())
        await close(self)
    monkeypatch.setattr(MemoryGroup, "aclose", aclose)
    return found


async def test_a_python_allocator_is_stopped_in_the_kernel(backend: str,
                                                           peaks: list[int | None]) -> None:
    """Killed with MEMORY_LIMIT; the group never held more than the budget
    (no overshoot: the kernel charges before it hands a page out)."""
    result = await _in(*PYTHON_ROOTS, max_memory="100M").run([sys.executable, "-c", ALLOCATOR],
                                                            timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT and result.returncode == -9, result
    assert result.protections[Subsystem.RESOURCE_LIMITS] is Protection.ACTIVE
    assert peaks and peaks[0] is not None and peaks[0] <= 100 << 20


async def test_python_within_the_budget_runs(backend: str) -> None:
    """Control: the same interpreter, doing little, under the same budget."""
    result = await _in(*PYTHON_ROOTS, max_memory="100M").run(
        [sys.executable, "-c", "print(sum(range(10**6)))"], timeout=60)
    assert result.success and result.stdout == b"499999500000\n", result
    assert result.protections[Subsystem.RESOURCE_LIMITS] is Protection.ACTIVE


async def test_a_c_program_over_the_budget_is_stopped(backend: str, memhog: str) -> None:
    result = await _in(memhog, max_memory="100M").run([memhog, "8192", "150", "1", "30"],
                                                      timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT and result.returncode == -9, result


async def test_reserved_address_space_is_not_charged(backend: str, memhog: str) -> None:
    """Control: 8 GiB reserved PROT_NONE and 10 MB touched fit in 100 MB."""
    result = await _in(memhog, max_memory="100M").run([memhog, "8192", "10", "1", "0"],
                                                      timeout=60)
    assert result.success and result.stdout == b"done\n", result


async def test_ten_processes_share_one_budget(backend: str, memhog: str) -> None:
    """Ten processes of 30 MB each under 200 MB: the whole sandbox is
    stopped (v1's OOM killer takes one process; the sandbox goes with it)."""
    started = time.monotonic()
    result = await _in(memhog, max_memory="200M").run([memhog, "0", "30", "10", "30"],
                                                      timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT, result
    assert time.monotonic() - started < 20


async def test_ten_processes_within_the_budget_run(backend: str, memhog: str) -> None:
    """Control: the same ten under a budget that holds them all."""
    result = await _in(memhog, max_memory="600M").run([memhog, "0", "30", "10", "0"],
                                                      timeout=60)
    assert result.success and result.stdout == b"done\n", result


async def test_the_watcher_is_not_used(backend: str, memhog: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """max_memory alone in a cgroup: nothing is sampled for it."""
    calls: list[object] = []
    monkeypatch.setattr(_run, "watch_limits", lambda *args, **kwargs: calls.append(args))
    result = await _in(memhog, max_memory="100M").run([memhog, "0", "150", "1", "30"],
                                                      timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT and calls == []


async def test_cpu_limits_are_still_sampled(backend: str) -> None:
    """With cpu_time too, the watcher runs for it (memory stays the kernel's)
    and the report says SAMPLED: not everything is the kernel's."""
    result = await _in(*PYTHON_ROOTS, max_memory="100M", cpu_time=30).run(
        [sys.executable, "-c", ALLOCATOR], timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT, result
    assert result.protections[Subsystem.RESOURCE_LIMITS] is Protection.SAMPLED


async def test_groups_are_removed_after_a_timeout(backend: str) -> None:
    result = await _in(max_memory="100M").run(["sleep", "30"], timeout=0.5)
    assert result.reason is ExitReason.TIMEOUT


async def test_groups_are_removed_after_a_cancellation(backend: str) -> None:
    with anyio.move_on_after(0.5):
        await _in(max_memory="100M").run(["sleep", "30"])


async def test_groups_are_removed_after_a_failed_spawn(backend: str, tmp_path: object) -> None:
    """The command exists but the sandbox may not run it: the spawn fails
    inside, after the group was made."""
    hidden = os.path.join(str(tmp_path), "true")
    with open("/bin/true", "rb") as src, open(hidden, "wb") as dst:
        dst.write(src.read())
    os.chmod(hidden, 0o755)
    with pytest.raises(SpawnError):
        await _in(max_memory="100M").run([hidden])


async def test_an_open_process_is_limited_too(backend: str, memhog: str) -> None:
    proc = await _in(memhog, max_memory="50M").open([memhog, "0", "100", "1", "30"])
    async with proc:
        with anyio.fail_after(30):
            await proc.wait()
    assert proc.reason is ExitReason.MEMORY_LIMIT


async def test_groups_of_dead_callers_are_swept(backend: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller killed by SIGKILL leaves its (empty) groups: the next caller's
    first run removes those whose owner is gone, and no other."""
    gone = await anyio.run_process(["true"])
    dead = os.path.join(backend, f"{PREFIX}{gone.returncode + 2**22 + 7}-123-0")
    start = _cgroup._start_time(os.getpid())
    live = os.path.join(backend, f"{PREFIX}{os.getpid()}-{start}-999999")
    stranger = os.path.join(backend, f"{PREFIX}not-ours")
    for path in (dead, live, stranger):
        os.mkdir(path)
    try:
        monkeypatch.setattr(_cgroup, "_swept", set())
        monkeypatch.setattr(_cgroup, "SWEEP_AFTER", -60.0)  # any age
        result = await _in(max_memory="100M").run(["true"])
        assert result.success, result
        assert not os.path.exists(dead)
        assert os.path.exists(live) and os.path.exists(stranger)
    finally:
        for path in (dead, live, stranger):
            if os.path.exists(path):
                os.rmdir(path)


async def test_a_group_that_cannot_be_made_is_sampled(backend: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused at run time (a limit on groups, say): the watcher enforces the
    budget instead, and the report says SAMPLED."""
    monkeypatch.setattr(MemoryGroup, "make", classmethod(lambda cls, limit: None))
    result = await _in(*PYTHON_ROOTS, max_memory="100M").run([sys.executable, "-c", ALLOCATOR],
                                                            timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT, result
    assert result.protections[Subsystem.RESOURCE_LIMITS] is Protection.SAMPLED


async def test_the_sandbox_cannot_leave_its_group(backend: str) -> None:
    """Escape: moving itself to the caller's group is refused (cgroupfs is
    not writable in the sandbox)..."""
    script = (f"open({os.path.join(backend, 'cgroup.procs')!r}, 'w').write('0')\n"
              "print('moved')\n")
    result = await _in(*PYTHON_ROOTS, max_memory="100M").run([sys.executable, "-c", script],
                                                            timeout=60)
    assert result.returncode != 0 and b"moved" not in (result.stdout or b""), result


async def test_leaving_the_group_is_possible_where_granted(backend: str) -> None:
    """...control: the same write with the caller's group granted writable
    succeeds -- which is why no policy should grant cgroupfs."""
    script = (f"open({os.path.join(backend, 'cgroup.procs')!r}, 'w').write('0')\n"
              "print('moved')\n")
    result = await _in(*PYTHON_ROOTS, max_memory="100M", fs_writable=(backend,)).run(
        [sys.executable, "-c", script], timeout=60)
    assert result.stdout == b"moved\n", result


def test_the_mechanism_is_validated() -> None:
    with pytest.raises(PolicyError, match="memory_mechanism"):
        Sandbox(memory_mechanism="kernel")
    assert Sandbox().memory_mechanism == "sampled"


def test_without_a_backend_the_cgroup_is_not_promised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no group can be made, a policy asking for one is sampled."""
    from asyncsandlock._limits import limits_protection
    monkeypatch.setattr(_cgroup, "memory_backend",
                        lambda: MemoryBackend(None, None, "none here"))
    sb = Sandbox(max_memory="1G", memory_mechanism="cgroup")
    assert limits_protection(sb) is Protection.SAMPLED


def test_the_backend_says_why_not() -> None:
    found = _cgroup.memory_backend()
    assert (found.directory is None) == bool(found.reason)
    if found.directory is not None:
        assert found.files is not None


@pytest.mark.parametrize("extra", [
    {"uid": 65534},
    {"network": "loopback"},
    {"extra_fds_count": 12},
], ids=["uid", "userns", "fds"])
async def test_the_group_is_entered_whatever_the_child_became(backend: str, memhog: str,
                                                              extra: dict[str, object]) -> None:
    """The child moves itself in last before exec: after it changed its ids,
    entered namespaces and moved its fds (the parent's fd of cgroup.procs
    kept clear of the child's numbers)."""
    count = int(str(extra.pop("extra_fds_count", 0)))
    fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]
    try:
        sb = _in(memhog, max_memory="100M", **extra)
        over = await sb.run([memhog, "0", "150", "1", "30"], timeout=60, extra_fds=fds)
        assert over.reason is ExitReason.MEMORY_LIMIT, over
        under = await sb.run([memhog, "0", "10", "1", "0"], timeout=60, extra_fds=fds)
        assert under.success, under
    finally:
        for fd in fds:
            os.close(fd)


async def test_a_young_group_of_a_dead_owner_is_left(backend: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Its pid may be a caller's in another pid namespace, about to use it."""
    dead = os.path.join(backend, f"{PREFIX}{2**22 + 11}-123-0")
    os.mkdir(dead)
    try:
        monkeypatch.setattr(_cgroup, "_swept", set())
        assert (await _in(max_memory="100M").run(["true"])).success
        assert os.path.exists(dead)
    finally:
        os.rmdir(dead)


CALLER = """
import anyio, sys
from asyncsandlock import Sandbox, SYSTEM_READABLE

async def main():
    sb = Sandbox(fs_readable=SYSTEM_READABLE, max_memory="100M", memory_mechanism="cgroup")
    async with await sb.open(["sleep", "60"]) as proc:
        print(proc.pid, flush=True)
        await proc.wait()

anyio.run(main)
"""


async def test_a_caller_killed_by_sigkill_leaves_an_empty_group_swept_later(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What SIGKILL leaves: the reaper kills the sandbox, its group stays
    (empty, in the caller's own group); the next caller's first group sweeps it."""
    caller = await anyio.open_process([sys.executable, "-c", CALLER])
    try:
        assert caller.stdout is not None
        with anyio.fail_after(30):
            line = await caller.stdout.receive()
        pid = int(line)
        owned = f"{PREFIX}{caller.pid}-"
        left = [name for name in os.listdir(backend) if name.startswith(owned)]
        assert len(left) == 1
        with open(os.path.join(backend, left[0], "cgroup.procs")) as procs:
            assert procs.read().split() == [str(pid)]  # the sandbox is in it
    finally:
        caller.kill()
        await caller.aclose()
    group = os.path.join(backend, left[0])
    with anyio.fail_after(10):
        while True:  # the reaper kills the sandbox within ~10 ms
            with open(os.path.join(group, "cgroup.procs")) as procs:
                if not procs.read().split():
                    break
            await anyio.sleep(0.01)
    assert os.path.isdir(group)
    monkeypatch.setattr(_cgroup, "_swept", set())
    monkeypatch.setattr(_cgroup, "SWEEP_AFTER", -60.0)  # any age
    assert (await _in(max_memory="100M").run(["true"])).success
    assert not os.path.exists(group)


def test_the_command_line_chooses_the_mechanism() -> None:
    from asyncsandlock._cli import _parser, _sandbox
    ns = _parser().parse_args(["run", "-m", "64M", "--memory-mechanism", "cgroup", "true"])
    assert _sandbox(ns, interactive=False).memory_mechanism == "cgroup"
    ns = _parser().parse_args(["run", "-m", "64M", "true"])
    assert _sandbox(ns, interactive=False).memory_mechanism == "sampled"


_V2_FILES = ("memory.max", "memory.swap.max", "memory.oom.group", "memory.events",
             "memory.peak", "cgroup.procs")


def test_the_v2_files_on_a_stand_in(tmp_path: pathlib.Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no v2 group is delegated (here), what the v2 backend writes and
    reads, on a directory standing in for one: the same logic as v1's, with
    v2's names; no eventfd (the kernel kills the whole group)."""
    made = os.mkdir

    def mkdir(path: str, mode: int = 0o777) -> None:
        made(path, mode)
        for name in _V2_FILES:
            (pathlib.Path(path) / name).write_text("")
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(_cgroup, "memory_backend",
                        lambda: MemoryBackend(str(tmp_path), _cgroup._V2, ""))
    group = MemoryGroup.make(100 << 20)
    assert group is not None
    try:
        where = pathlib.Path(group.path)
        assert where.parent == tmp_path and where.name.startswith(f"{PREFIX}{os.getpid()}-")
        assert (where / "memory.max").read_text() == str(100 << 20)
        assert (where / "memory.swap.max").read_text() == "0"
        assert (where / "memory.oom.group").read_text() == "1"
        assert group.notify == -1 and group.procs >= 0
        assert _cgroup.reason_at_reap(group, None) is None
        (where / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n"
                                             "oom_group_kill 1\n")
        (where / "memory.peak").write_text(str(100 << 20))
        assert _cgroup.reason_at_reap(group, None) is ExitReason.MEMORY_LIMIT
        assert _cgroup.reason_at_reap(group, ExitReason.TIMEOUT) is ExitReason.TIMEOUT
        assert group.peak() == 100 << 20
    finally:
        for name in _V2_FILES:
            (pathlib.Path(group.path) / name).unlink()
        group.discard()
    assert not os.path.exists(group.path) and group.procs == -1


def test_check_tells_where_max_memory_can_be_the_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncsandlock import _check
    monkeypatch.setattr(_check, "memory_backend",
                        lambda: MemoryBackend(None, None, "cgroup v2: none; cgroup v1: none"))
    assert _check._memory_cgroup_row() == ("memory cgroup", "none",
                                           "cgroup v2: none; cgroup v1: none")
    monkeypatch.setattr(_check, "memory_backend",
                        lambda: MemoryBackend("/sys/fs/cgroup/x", _cgroup._V1, ""))
    assert _check._memory_cgroup_row()[1] == "v1, own group /sys/fs/cgroup/x"
