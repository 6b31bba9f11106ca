"""Seed scenarios: callers in the states real deployments put them in.

Each test starts a fresh Python (``PYTHON``) that imports asyncsandlock and
runs the same workload on asyncio and on Trio with plain ``anyio.run``:

a. a caller with 8 busy threads;
b. a caller whose seccomp filter answers clone3 with ENOSYS (container
   default profiles);
c. a caller that is PID 1 of its own pid namespace;
d. a caller running as the unprivileged uid 65534.

The workload (``WORKLOAD``) checks output, a pipe inside the sandbox, a
background grandchild, a timeout, an outer cancellation and concurrent runs,
then that nothing the sandboxes started is left (no zombie, no survivor).
A script prints ``ok`` as its last line when every check held.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from conftest import PYTHON, build_helper

WORKLOAD = r'''
import os, sys, time
import anyio, anyio._backends._asyncio, anyio._backends._trio, trio
import asyncsandlock
from asyncsandlock import SYSTEM_READABLE, ExitReason, Sandbox


def stat_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid):
    fields = stat_of(pid)
    return fields is not None and fields[0] not in ("Z", "X")


async def wait_dead(pid):
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, f"{pid} survived the sandbox"
        await anyio.sleep(0.01)


def my_zombies():
    """Zombie children of this process (pids whose parent is us)."""
    me = str(os.getpid())
    out = []
    for name in os.listdir("/proc"):
        fields = stat_of(name) if name.isdigit() else None
        if fields and fields[0] == "Z" and fields[1] == me:
            out.append(int(name))
    return out


async def workload(sb):
    r = await sb.run(["sh", "-c", "echo hi; echo a b | tr a-z A-Z"], timeout=30)
    assert (r.stdout, r.returncode) == (b"hi\nA B\n", 0), r
    with anyio.fail_after(20):  # the sleep holds stdout until it is killed
        r = await sb.run(["sh", "-c", "sleep 60 & echo $!"], timeout=30)
    assert r.success, r
    await wait_dead(int(r.stdout))
    r = await sb.run(["sh", "-c", "echo started; exec sleep 60"], timeout=0.5)
    assert r.reason is ExitReason.TIMEOUT and r.stdout == b"started\n", r
    with anyio.move_on_after(0.3) as scope:
        await sb.run(["sh", "-c", "sleep 60 & sleep 60"])
    assert scope.cancelled_caught
    results = []
    async def one(i):
        results.append((await sb.run(["sh", "-c", "echo $0", str(i)], timeout=30)).stdout)
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert sorted(results) == sorted(f"{i}\n".encode() for i in range(20))
    assert my_zombies() == [], my_zombies()


def run_everywhere(sb, extra=None):
    for backend in ("asyncio", "trio"):
        anyio.run(workload, sb, backend=backend)
        if extra is not None:
            anyio.run(extra, sb, backend=backend)
'''


def run_script(body: str, *argv: str, prefix: tuple[str, ...] = (),
               timeout: float = 90) -> str:
    """Run WORKLOAD + ``body`` in a fresh interpreter; return its stdout."""
    proc = subprocess.run([*prefix, PYTHON, "-c", WORKLOAD + body, *argv],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1:] == ["ok"], proc.stdout + proc.stderr
    return proc.stdout


def test_caller_with_eight_running_threads() -> None:
    run_script(r'''
import hashlib, threading
stop = threading.Event()
spins = [0] * 8
data = bytes(1 << 18)

def busy(i):
    # Allocate, free and hash constantly: the spawn must not depend on locks
    # (malloc's, stdio's) that another thread may hold at clone time.  The
    # hashing runs without the GIL, so the event loop is not starved.
    while not stop.is_set():
        _ = [bytes(64) for _ in range(10)]
        hashlib.sha256(data).digest()
        spins[i] += 1

threads = [threading.Thread(target=busy, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
try:
    assert threading.active_count() == 9
    run_everywhere(Sandbox(fs_readable=SYSTEM_READABLE))
    assert all(t.is_alive() for t in threads)
    assert all(spins), spins
finally:
    stop.set()
    for t in threads:
        t.join()
print("ok")
''')


@pytest.fixture(scope="session")
def clone3_enosys() -> str:
    return build_helper("clone3_enosys")


def test_caller_where_clone3_is_enosys(clone3_enosys: str) -> None:
    run_script(r'''
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
# Without the filter clone3(NULL, 0) is EINVAL; under it, ENOSYS.
assert libc.syscall(435, None, 0) == -1 and ctypes.get_errno() == errno.ENOSYS
run_everywhere(Sandbox(fs_readable=SYSTEM_READABLE))
print("ok")
''', prefix=(clone3_enosys,))


def test_caller_as_pid_1() -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root")
    run_script(r'''
assert os.getpid() == 1, os.getpid()


def others():
    """Every process in this pid namespace but us (zombies included)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and p != "1"]


async def leftovers(sb):
    # Orphans of the sandbox are re-parented to us: they must be killed and
    # reaped, or they pile up as zombies (nobody else would reap them here).
    for script in ("sleep 60 &", "sleep 60 & sleep 60 & exit 3", "(sleep 60 &) ; true"):
        with anyio.fail_after(20):  # the sleeps hold stdout until they are killed
            await sb.run(["sh", "-c", script], timeout=30)
        assert others() == [], (script, others())
    with anyio.move_on_after(0.3):
        await sb.run(["sh", "-c", "(sleep 60 &); sleep 60"])
    assert others() == [], others()


run_everywhere(Sandbox(fs_readable=SYSTEM_READABLE), leftovers)
assert others() == [], others()
print("ok")
''', prefix=("unshare", "--pid", "--fork", "--mount-proc"))


@pytest.fixture
def world_tmp() -> Iterator[pathlib.Path]:
    """A scratch tree under /tmp that uid 65534 can reach (pytest's
    tmp_path sits under a 0700 directory)."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="asyncsandlock-seed-", dir="/tmp"))
    try:
        base.chmod(0o755)
        for name in ("rw", "ro"):
            (base / name).mkdir()
            (base / name).chmod(0o777)
        yield base
    finally:
        shutil.rmtree(base)


def test_caller_as_unprivileged_uid(world_tmp: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    run_script(r'''
import errno, pathlib
base = pathlib.Path(sys.argv[1])
rw, ro = base / "rw", base / "ro"
# /root (where this interpreter lives) is 0700: import everything first.
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
assert os.getresuid() == (65534, 65534, 65534)
sb = Sandbox(fs_readable=[*SYSTEM_READABLE, ro], fs_writable=[rw])


async def confined(sb):
    r = await sb.run(["sh", "-c", "id -u; id -g"], timeout=30)
    assert r.stdout == b"65534\n65534\n", r
    r = await sb.run(["sh", "-c", f"echo in > {rw}/f && cat {rw}/f"], timeout=30)
    assert r.stdout == b"in\n", r
    # DAC would allow each of these (0777 and 1777 directories): Landlock refuses.
    for target in (ro / "f", base / "f", pathlib.Path("/tmp") / f"asl-seed-{os.getpid()}"):
        r = await sb.run(["sh", "-c", f"echo out > {target}"], timeout=30)
        assert r.returncode != 0 and not target.exists(), (target, r)
    r = await sb.run(["ls", str(base)], timeout=30)
    assert r.returncode != 0, r
    # A step that fails as this uid only: chdir into root's 0700 home.
    try:
        await sb.run(["true"], cwd="/root")
    except PermissionError as exc:
        assert exc.step == "chdir" and exc.errno == errno.EACCES, exc
    else:
        raise AssertionError("chdir into /root worked as uid 65534")
    (rw / "f").unlink()


run_everywhere(sb, confined)
print("ok")
''', str(world_tmp))
