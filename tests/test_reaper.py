"""The reaper: every process of every sandbox dies within 1 s of its caller.

A caller (a fresh Python, ``CALLER``) starts sandboxes whose command leaves a
double-forked sleeper behind -- an orphan that PR_SET_PDEATHSIG does not
reach -- prints the pids, and is then killed, or exits.  The control runs the
same caller with the reaper turned off (``ASYNCSANDLOCK_TEST_NO_REAPER``, for
tests only): the sleeper survives.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import anyio
import pytest

from asyncsandlock import SpawnError, _reaper

from conftest import PYTHON, system_sandbox

CALLER = r'''
import os, sys, time
import anyio, anyio._backends._asyncio, anyio._backends._trio, trio
from asyncsandlock import DEVNULL, SYSTEM_READABLE, Sandbox, _reaper

backend, mode = sys.argv[1], sys.argv[2]
if mode == "uid":  # /root is 0700: everything is imported first
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
# The sandbox's first process is `sleep` (exec'd); `sh -c 'sleep &'` leaves a
# second sleeper whose parent has exited: a grandchild re-parented away.
SCRIPT = "sh -c 'sleep 300 & echo $!'; echo $$; exec sleep 300"


async def sandbox(sb):
    proc = await sb.open(["sh", "-c", SCRIPT], stdin=DEVNULL, stderr=DEVNULL)
    data = b""
    while data.count(b"\n") < 2:
        data += await proc.stdout.receive()
    return [int(pid) for pid in data.split()]


async def main():
    sb = Sandbox(fs_readable=SYSTEM_READABLE)
    if mode == "idle":  # the caller's sandboxes are all done when it exits
        await sb.run(["true"])
        print(_reaper.held()[0], flush=True)
        return
    pids = await sandbox(sb)
    old = _reaper.held()[0]
    if mode == "stopped":
        # The reaper stopped while records piled up: the next watch cannot
        # be written and must replace it, telling the new one both sandboxes.
        os.kill(old, 19)  # SIGSTOP
        fd = _reaper._state.reaper.fd
        with __import__("contextlib").suppress(BlockingIOError):
            while True:
                os.write(fd, bytes(8))  # {0, 0}: no op
    pids += await sandbox(sb)
    extra = []
    if mode == "stopped":
        extra = [old]
    if mode == "fork":  # a forked copy of the caller outlives it
        child = os.fork()
        if child == 0:
            time.sleep(300)
            os._exit(0)
        extra = [child]
    print(*pids, _reaper.held()[0], *extra, flush=True)
    if mode == "exit":  # leave with both sandboxes running
        return
    await anyio.sleep(300)


anyio.run(main, backend=backend)
'''


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def survivors(pids: list[int], within: float) -> list[int]:
    """Those of ``pids`` still alive after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


class Caller:
    """The CALLER script running; ``line`` is what it printed."""

    def __init__(self, backend: str, mode: str, *, reaper: bool = True,
                 prefix: tuple[str, ...] = ()) -> None:
        env = dict(os.environ)
        if not reaper:
            env["ASYNCSANDLOCK_TEST_NO_REAPER"] = "1"
        self.proc = subprocess.Popen([*prefix, PYTHON, "-c", CALLER, backend, mode], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line:
            self.proc.wait()
            assert self.proc.stderr is not None
            raise AssertionError(self.proc.stderr.read().decode())
        self.line = [None if word == "None" else int(word) for word in line.split()]
        self.started = [pid for pid in self.line if pid is not None]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)
        self.proc.wait()

    def finish(self) -> None:
        """Kill whatever the test left (a control's survivors, a failure's)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def callers() -> Iterator[list[Caller]]:
    made: list[Caller] = []
    yield made
    for caller in made:
        caller.finish()


BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@BACKENDS
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_every_sandbox_process_dies_with_the_caller(backend: str, sig: int,
                                                     callers: list[Caller]) -> None:
    caller = Caller(backend, "run")
    callers.append(caller)
    reaper = caller.line[4]
    assert reaper is not None and alive(reaper)
    assert all(alive(pid) for pid in caller.started)
    caller.signal(sig)
    assert survivors(caller.started, 1.0) == []


@BACKENDS
def test_control_without_the_reaper_the_grandchild_survives(backend: str,
                                                             callers: list[Caller]) -> None:
    caller = Caller(backend, "run", reaper=False)
    callers.append(caller)
    grandchild, root, grandchild2, root2, reaper = caller.line
    assert reaper is None and all(alive(pid) for pid in caller.started)
    caller.signal(signal.SIGKILL)
    # PDEATHSIG still kills the first processes: only the orphans are left.
    assert survivors([root, root2], 1.0) == []
    time.sleep(0.5)
    assert survivors([grandchild, grandchild2], 0) == [grandchild, grandchild2]


@BACKENDS
def test_caller_as_uid_65534(backend: str, callers: list[Caller]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    caller = Caller(backend, "uid")
    callers.append(caller)
    reaper = caller.line[4]
    assert reaper is not None
    assert os.stat(f"/proc/{reaper}").st_uid == 65534
    caller.signal(signal.SIGKILL)
    assert survivors(caller.started, 1.0) == []


@BACKENDS
def test_control_as_uid_65534_without_the_reaper(backend: str, callers: list[Caller]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    caller = Caller(backend, "uid", reaper=False)
    callers.append(caller)
    grandchild = caller.line[0]
    caller.signal(signal.SIGKILL)
    time.sleep(1.0)
    assert alive(grandchild)


@BACKENDS
def test_caller_exiting_normally_with_sandboxes_running(backend: str,
                                                        callers: list[Caller]) -> None:
    caller = Caller(backend, "exit")
    callers.append(caller)
    assert caller.proc.wait(timeout=30) == 0
    # The reaper too: it exits once it has killed them.
    assert survivors(caller.started, 1.0) == []


@BACKENDS
def test_reaper_exits_with_a_caller_that_has_nothing_running(backend: str,
                                                             callers: list[Caller]) -> None:
    caller = Caller(backend, "idle")
    callers.append(caller)
    (reaper,) = caller.started
    assert caller.proc.wait(timeout=30) == 0
    assert survivors([reaper], 1.0) == []


@BACKENDS
def test_ctrl_c_to_the_callers_group_leaves_the_reaper_working(backend: str,
                                                                callers: list[Caller]) -> None:
    """A terminal signals the whole foreground group: the reaper is not in it."""
    caller = Caller(backend, "run")
    callers.append(caller)
    os.killpg(caller.proc.pid, signal.SIGINT)
    caller.proc.wait(timeout=30)
    assert survivors(caller.started, 1.0) == []


@BACKENDS
def test_a_forked_copy_of_the_caller_does_not_keep_the_reaper_waiting(
        backend: str, callers: list[Caller]) -> None:
    caller = Caller(backend, "fork")
    callers.append(caller)
    *sandboxes, reaper, copy = caller.started
    caller.signal(signal.SIGKILL)
    assert survivors([*sandboxes, reaper], 1.0) == []
    assert alive(copy)  # the copy lives on, without holding the pipe open


@BACKENDS
def test_a_stopped_reaper_is_replaced(backend: str, callers: list[Caller]) -> None:
    caller = Caller(backend, "stopped")
    callers.append(caller)
    *sandboxes, reaper, old = caller.started
    assert reaper != old
    assert survivors([old], 1.0) == []  # killed, not left to act on a stale set
    caller.signal(signal.SIGKILL)
    assert survivors([*sandboxes, reaper], 1.0) == []


@BACKENDS
def test_caller_as_pid_1(backend: str, callers: list[Caller]) -> None:
    """PID 1's death kills its whole pid namespace: no reaper is needed."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root")
    caller = Caller(backend, "run", prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    callers.append(caller)
    assert caller.line[4] is None  # no reaper
    caller.started = []  # pids of the inner namespace: not ours to kill
    unshare = caller.proc.pid
    children = pathlib.Path(f"/proc/{unshare}/task/{unshare}/children").read_text()
    (inner,) = (int(pid) for pid in children.split())
    namespace = os.readlink(f"/proc/{inner}/ns/pid")

    def members() -> list[int]:
        out = []
        for name in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if (name.isdigit() and os.readlink(f"/proc/{name}/ns/pid") == namespace
                        and alive(int(name))):
                    out.append(int(name))
        return out

    assert len(members()) == 5  # the caller, two sleepers per sandbox
    os.kill(inner, signal.SIGKILL)
    caller.proc.wait(timeout=30)
    assert survivors(members(), 1.0) == []


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leaks")
async def test_the_sandbox_cannot_signal_the_reaper(anyio_backend: str) -> None:
    sb = system_sandbox()
    await sb.run(["true"])  # the reaper exists from the first spawn on
    reaper, _fds = _reaper.held()
    assert reaper is not None
    r = await sb.run(["sh", "-c", f"kill -9 {reaper}"])
    assert r.returncode != 0 and b"not permitted" in r.stderr, r
    assert alive(reaper)
    # Control: the same kill from outside works; the next spawn finds the
    # pipe broken and starts a new reaper.
    outside = subprocess.run(["sh", "-c", f"kill -9 {reaper}"])
    assert outside.returncode == 0
    assert survivors([reaper], 1.0) == []
    await sb.run(["true"])
    replaced, _fds = _reaper.held()
    assert replaced is not None and replaced != reaper and alive(replaced)
    with anyio.fail_after(5):
        assert (await sb.run(["echo", "ok"])).stdout == b"ok\n"


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("when", ["first", "replacing", "replacing-supervised"])
async def test_no_reaper_means_no_sandbox(anyio_backend: str, when: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox that could outlive its caller is not left running.  When no
    reaper can be started (fork refused): before the first spawn, nothing is
    started; when the reaper died and cannot be replaced, the command just
    spawned is killed and reaped (its listener closed).  Either way the run
    fails with step "reaper"."""

    def refused(cls: type, records: bytes) -> None:
        raise SpawnError(errno.EAGAIN, "cannot start the reaper process", step="reaper")

    monkeypatch.setattr(_reaper, "_state", _reaper._State())
    if when.startswith("replacing"):
        _reaper.prepare()
        dead, _fds = _reaper.held()
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        assert survivors([dead], 5.0) == []
    monkeypatch.setattr(_reaper._Reaper, "start", classmethod(refused))
    sb = system_sandbox(max_processes=8 if when.endswith("supervised") else None)
    try:
        await sb.run(["sleep", "60"])
    except SpawnError as exc:  # not pytest.raises: its traceback would keep sb's fds open
        failed = (exc.step, exc.errno)
    assert failed == ("reaper", errno.EAGAIN)
    assert _reaper.held() == (None, frozenset()) and _reaper._state.watched == {}
