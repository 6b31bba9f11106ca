"""Lifecycle: results, errors, timeouts, cancellation, streaming, leaks.

Every async test runs on asyncio and on Trio.  "Gone" below means the
process no longer exists or is a zombie (dead, waiting for whoever inherited
it); the pid's start time is compared where known so that a reused pid is
not mistaken for the original process.
"""

from __future__ import annotations

import errno
import gc
import os
import pathlib
import random
import signal
import subprocess
import time

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from asyncsandlock import (
    DEVNULL,
    STDOUT,
    ExitReason,
    Handler,
    HandlerCtx,
    NotifAction,
    Sandbox,
    SandboxedProcess,
    SandboxedProcessError,
    SandboxError,
    SpawnError,
    _reaper,
)

from conftest import PYTHON, child_pids, system_sandbox, thread_ids, warmed

pytestmark = pytest.mark.anyio


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` (None if it is gone or a zombie)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


async def assert_gone(pid: int, started: str | None = None, within: float = 10.0) -> None:
    """Poll until ``pid`` is dead: an orphan is reaped by whoever inherits it."""
    deadline = time.monotonic() + within
    while True:
        now = start_time(pid)
        if now is None or (started is not None and now != started):
            return
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        await anyio.sleep(0.01)


# -- Result -----------------------------------------------------------------


async def test_result_of_a_successful_run() -> None:
    result = await system_sandbox().run(["sh", "-c", "echo out; echo err >&2"], timeout=30)
    assert list(result.args) == ["sh", "-c", "echo out; echo err >&2"]
    assert result.returncode == 0
    assert result.reason is ExitReason.EXITED
    assert result.signal is None
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.success
    assert result.duration > 0
    result.check_returncode()


async def test_result_duration_covers_the_run() -> None:
    result = await system_sandbox().run(["sleep", "0.2"], timeout=30)
    assert result.duration >= 0.2


async def test_exit_status() -> None:
    result = await system_sandbox().run(["sh", "-c", "exit 3"], timeout=30)
    assert (result.returncode, result.reason, result.signal) == (3, ExitReason.EXITED, None)
    assert not result.success
    with pytest.raises(SandboxedProcessError) as info:
        result.check_returncode()
    assert info.value.returncode == 3


async def test_killed_by_a_signal() -> None:
    result = await system_sandbox().run(["sh", "-c", "kill -9 $$"], timeout=30)
    assert result.returncode == -signal.SIGKILL
    assert result.reason is ExitReason.SIGNALED
    assert result.signal == signal.SIGKILL
    assert not result.success


async def test_check_true_raises_with_the_output() -> None:
    sb = system_sandbox()
    with pytest.raises(SandboxedProcessError) as info:
        await sb.run(["sh", "-c", "echo partial; echo oops >&2; exit 7"], check=True, timeout=30)
    exc = info.value
    assert isinstance(exc, subprocess.CalledProcessError)
    assert isinstance(exc, SandboxError)
    assert exc.returncode == 7
    assert exc.output == b"partial\n"
    assert exc.stderr == b"oops\n"
    assert list(exc.cmd) == ["sh", "-c", "echo partial; echo oops >&2; exit 7"]
    ok = await sb.run(["true"], check=True, timeout=30)
    assert ok.success


async def test_stderr_to_stdout() -> None:
    result = await system_sandbox().run(["sh", "-c", "echo a; echo b >&2; echo c"],
                                        stderr=STDOUT, timeout=30)
    assert result.stdout == b"a\nb\nc\n"
    assert result.stderr is None


async def test_env_clean_env_and_cwd(tmp_path: pathlib.Path) -> None:
    os.environ["ASYNCSANDLOCK_TEST_INHERITED"] = "yes"
    try:
        sb = system_sandbox(env={"FROM_POLICY": "p"}, clean_env=False)
        result = await sb.run(["sh", "-c", "echo $FROM_POLICY $FROM_RUN "
                                           "$ASYNCSANDLOCK_TEST_INHERITED; pwd"],
                              env={"FROM_RUN": "r"}, cwd=tmp_path, timeout=30)
        assert result.stdout == f"p r yes\n{tmp_path}\n".encode()
        # The default: the caller's secrets stay out, PATH & co. come in.
        clean = system_sandbox(env={"ONLY": "1"})
        result = await clean.run(["/usr/bin/env"], timeout=30)
        expected = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TERM") if k in os.environ}
        expected.setdefault("PATH", os.defpath)
        got = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
        assert got == {**expected, "ONLY": "1"}
    finally:
        del os.environ["ASYNCSANDLOCK_TEST_INHERITED"]


# -- start-up failures --------------------------------------------------------


async def test_missing_command(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[object] = []
    import asyncsandlock._run

    real = asyncsandlock._run.spawn
    monkeypatch.setattr(asyncsandlock._run, "spawn",
                        lambda *a, **k: spawned.append(a) or real(*a, **k))
    before = child_pids()
    for name in ("no-such-command-asyncsandlock", "/nonexistent/asyncsandlock"):
        with pytest.raises(FileNotFoundError) as info:
            await system_sandbox().run([name, "arg"], timeout=30)
        exc = info.value
        assert isinstance(exc, SpawnError)
        assert exc.step == "execve"
        assert exc.errno == errno.ENOENT
        assert name in str(exc)
    assert spawned == [], "a process was started for a missing command"
    assert child_pids() == before


async def test_chdir_failure_names_the_step(tmp_path: pathlib.Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    sb = system_sandbox(cwd=gone)
    gone.rmdir()  # valid when the policy was made; not any more
    before = child_pids()
    with pytest.raises(FileNotFoundError) as info:
        await sb.run(["true"], timeout=30)
    assert isinstance(info.value, SpawnError)
    assert info.value.step == "chdir"
    assert info.value.errno == errno.ENOENT
    assert child_pids() == before  # the failed child was reaped


# -- timeout and cancellation -------------------------------------------------


async def test_timeout_keeps_the_output_so_far() -> None:
    sb = system_sandbox()
    result = await sb.run(["sh", "-c", "echo before; echo err >&2; exec sleep 60"], timeout=1)
    assert result.reason is ExitReason.TIMEOUT
    assert result.returncode == -signal.SIGKILL
    assert result.signal == signal.SIGKILL
    assert result.stdout == b"before\n"
    assert result.stderr == b"err\n"
    assert not result.success
    with pytest.raises(SandboxedProcessError) as info:
        await sb.run(["sleep", "60"], timeout=0.2, check=True)
    assert info.value.reason == ExitReason.TIMEOUT.value


async def test_timeout_kills_descendants(tmp_path: pathlib.Path, no_leaks: None) -> None:
    sb = system_sandbox(fs_writable=[tmp_path])
    pidfile = tmp_path / "pid"
    result = await sb.run(["sh", "-c", f'sleep 60 & echo $! > {pidfile}; wait'], timeout=1)
    assert result.reason is ExitReason.TIMEOUT
    await assert_gone(int(pidfile.read_text()))
    del sb


async def test_cancellation_kills_and_reaps(tmp_path: pathlib.Path, no_leaks: None) -> None:
    sb = system_sandbox(fs_writable=[tmp_path])
    pidfile = tmp_path / "pids"
    script = f"echo $$ > {pidfile}.tmp; sleep 60 & echo $! >> {pidfile}.tmp; " \
             f"mv {pidfile}.tmp {pidfile}; wait"
    with anyio.CancelScope() as outer:
        async with anyio.create_task_group() as tg:
            proc = await tg.start(sb.run, ["sh", "-c", script])
            while not pidfile.exists():  # written (renamed) once both pids are known
                await anyio.sleep(0.01)
                assert proc.returncode is None
            pids = [int(p) for p in pidfile.read_text().split()]
            started = [start_time(p) for p in pids]
            assert None not in started
            outer.cancel()
    assert outer.cancelled_caught
    assert proc.returncode == -signal.SIGKILL
    assert proc.reason is ExitReason.KILLED
    assert pids[0] == proc.pid
    assert proc.pid not in child_pids()
    for pid, when in zip(pids, started, strict=True):
        await assert_gone(pid, when)
    # The policy keeps its Landlock ruleset fd until it is freed, and the
    # cancellation's traceback holds it in a reference cycle.
    del sb
    gc.collect()


async def test_cancellation_by_deadline(no_leaks: None) -> None:
    sb = system_sandbox()
    with anyio.move_on_after(0.5) as scope:
        await sb.run(["sh", "-c", "sleep 60 & sleep 60"])
    assert scope.cancelled_caught
    del sb


async def test_an_already_cancelled_scope_starts_nothing(tmp_path: pathlib.Path,
                                                        no_leaks: None) -> None:
    """Regression test for run()/open()/pipelines starting their command (far
    enough for side effects) inside a scope that was already cancelled."""
    sb = system_sandbox(fs_writable=[tmp_path])
    await sb.run(["true"])  # the plan is compiled: no await left before the spawn

    def touch(name: str) -> list[str]:
        return ["sh", "-c", f"touch {tmp_path / name}"]

    for i in range(10):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await sb.run(touch(f"run{i}"))
        assert scope.cancelled_caught
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with await sb.open(touch(f"open{i}")):
                pass
        assert scope.cancelled_caught
        with anyio.CancelScope() as scope:
            scope.cancel()
            await (sb.cmd(touch(f"stage{i}")) | sb.cmd(["cat"])).run()
        assert scope.cancelled_caught
    await anyio.sleep(0.2)  # a command that had started would have touched by now
    assert list(tmp_path.iterdir()) == []
    # Control: the same commands outside a cancelled scope do their side effect.
    assert (await sb.run(touch("control"), timeout=10)).success
    assert (tmp_path / "control").exists()
    del sb
    gc.collect()


class _Untouched(Handler):
    """Traps a syscall the commands do not make: the run has a supervisor."""

    syscalls = ("getppid",)

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        return NotifAction.continue_()


@pytest.fixture(scope="module")
def supervised() -> Sandbox:
    return warmed(system_sandbox(handlers=[_Untouched()]))


async def test_cancellation_as_the_command_ends_keeps_or_propagates(supervised: Sandbox,
                                                                    no_leaks: None) -> None:
    """Regression test for output lost when cancellation raced the end of a
    run: the drain tasks were cancelled (after reading, or before) while the
    shielded reaping hid the cancellation from run(), which returned an
    EXITED Result with stdout=b''.  Here the scope is cancelled right as the
    command is seen to exit, 0 to 3 loop turns later."""
    outcomes = {"returned": 0, "cancelled": 0}
    for turns in [0, 1, 2, 3] * 50:
        result = None

        async def run(*, task_status: anyio.abc.TaskStatus[SandboxedProcess]) -> None:
            nonlocal result
            result = await supervised.run(["echo", "hello"], task_status=task_status)

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                proc = await tg.start(run)
                while not proc._exited():
                    await anyio.lowlevel.checkpoint()
                for _ in range(turns):
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
        if result is None:
            assert scope.cancelled_caught
            outcomes["cancelled"] += 1
        else:
            assert (result.reason, result.stdout) == (ExitReason.EXITED, b"hello\n")
            outcomes["returned"] += 1
    assert outcomes["cancelled"] > 0, outcomes


async def test_cancellation_racing_the_end_keeps_or_propagates(supervised: Sandbox,
                                                               no_leaks: None) -> None:
    """The same as a soak: 25 tasks x 60 runs, each under a deadline drawn
    around the time the previous run of the task took."""
    outcomes = {"returned": 0, "cancelled": 0}
    rng = random.Random(9)

    async def runs() -> None:
        typical = 0.05
        for _ in range(60):
            result = None
            began = anyio.current_time()
            with anyio.move_on_after(rng.uniform(0.8, 1.2) * typical) as scope:
                result = await supervised.run(["echo", "hello"])
            if result is None:
                assert scope.cancelled_caught
                outcomes["cancelled"] += 1
                typical *= 1.05
            else:
                assert (result.reason, result.stdout) == (ExitReason.EXITED, b"hello\n")
                outcomes["returned"] += 1
                typical = anyio.current_time() - began

    async with anyio.create_task_group() as tg:
        for _ in range(25):
            tg.start_soon(runs)
    assert min(outcomes.values()) >= 100, outcomes  # both ends of the race were run


async def test_background_grandchild_dies_with_the_run() -> None:
    sb = system_sandbox()
    # Holding the stdout pipe: run() returns only because the sleep is killed
    # (fail_after turns a regression into a failure rather than a hang).
    with anyio.fail_after(20):
        result = await sb.run(["sh", "-c", "sleep 100 & echo $!"], timeout=30)
    assert result.success
    await assert_gone(int(result.stdout))
    # Not holding it: run() returns at once and the sleep must still die.
    result = await sb.run(["sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!"], timeout=30)
    assert result.success
    await assert_gone(int(result.stdout))


async def test_background_grandchild_dies_when_closed() -> None:
    async with await system_sandbox().open(["sh", "-c", "sleep 100 & echo $!"],
                                           stdin=DEVNULL) as proc:
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive()
        pid = int(line)
        started = start_time(pid)
        assert started is not None  # nobody waited yet, so the group was left alone
    assert proc.returncode == 0
    await assert_gone(pid, started)


async def test_setsid_grandchild_dies_with_the_run(try_syscall: str) -> None:
    """A double-forked daemon that tries setsid() and setpgid() to leave."""
    sb = system_sandbox(fs_readable=[os.path.dirname(try_syscall)])
    result = await sb.run([try_syscall, "daemonize"], stdin=DEVNULL, timeout=30)
    assert result.success, result
    daemon = int(result.stdout)
    try:
        await assert_gone(daemon)
    finally:
        if start_time(daemon) is not None:  # escaped: don't leave it running
            os.kill(daemon, signal.SIGKILL)


async def test_child_dies_with_its_parent() -> None:
    """PR_SET_PDEATHSIG: a caller that vanishes takes its sandboxes along."""
    script = (
        "import os, sys, anyio\n"
        "from asyncsandlock import Sandbox, SYSTEM_READABLE, DEVNULL\n"
        "async def main():\n"
        "    proc = await Sandbox(fs_readable=SYSTEM_READABLE).open(\n"
        "        ['sleep', '100'], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)\n"
        "    print(proc.pid, flush=True)\n"
        "    os._exit(0)\n"
        "anyio.run(main)\n"
    )
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    await assert_gone(int(out.stdout))


# -- stdio --------------------------------------------------------------------


async def test_large_outputs_on_both_streams_do_not_deadlock() -> None:
    # Alternate between the streams so that a reader of one at a time blocks.
    chunk = 200_000
    script = (f"head -c {chunk} /dev/zero; head -c {chunk} /dev/zero >&2; "
              f"head -c {chunk} /dev/zero; head -c {chunk} /dev/zero >&2")
    result = await system_sandbox().run(["sh", "-c", script], timeout=60)
    assert result.success
    assert result.stdout == bytes(2 * chunk)
    assert result.stderr == bytes(2 * chunk)


async def test_input_is_fed() -> None:
    sb = system_sandbox()
    assert (await sb.run(["sh", "-c", "read a; echo got $a"], input=b"hi\n",
                         timeout=30)).stdout == b"got hi\n"
    big = os.urandom(1 << 20)
    result = await sb.run(["cat"], input=big, timeout=60)
    assert result.stdout == big
    # A command that ignores its input must not make run() fail.
    ignored = await sb.run(["true"], input=big, timeout=30)
    assert ignored.success


async def test_stdin_is_inherited_or_devnull() -> None:
    sb = system_sandbox()
    result = await sb.run(["sh", "-c", "cat; echo done"], stdin=DEVNULL, timeout=30)
    assert result.stdout == b"done\n"


async def test_open_streams(no_leaks: None) -> None:
    sb = system_sandbox()
    async with await sb.open(["cat"]) as proc:
        assert isinstance(proc, SandboxedProcess)
        assert proc.returncode is None
        assert proc.stdin is not None and proc.stdout is not None
        for word in (b"ping\n", b"pong\n"):
            await proc.stdin.send(word)
            received = b""
            while len(received) < len(word):
                received += await proc.stdout.receive()
            assert received == word
        await proc.stdin.aclose()
        with pytest.raises(anyio.EndOfStream):
            await proc.stdout.receive()
        assert await proc.wait() == 0
    assert proc.returncode == 0
    result = await proc.result()
    assert result.success and result.stdout is None
    del sb, proc


async def test_open_terminate(no_leaks: None) -> None:
    sb = system_sandbox()
    async with await sb.open(["sleep", "60"], stdin=DEVNULL) as proc:
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM
    assert proc.reason is ExitReason.KILLED
    assert (await proc.result()).signal == signal.SIGTERM
    del sb, proc


async def test_open_to_a_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "out"
    with target.open("wb") as out:
        result = await system_sandbox().run(["echo", "to a file"], stdout=out, timeout=30)
    assert result.stdout is None
    assert target.read_bytes() == b"to a file\n"


async def test_task_group_start_gives_the_process(no_leaks: None) -> None:
    sb = system_sandbox()
    async with anyio.create_task_group() as tg:
        proc = await tg.start(sb.run, ["sleep", "60"])
        assert isinstance(proc, SandboxedProcess)
        assert start_time(proc.pid) is not None
        assert proc.returncode is None
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert proc.reason is ExitReason.KILLED
    del sb, proc


# -- resources ----------------------------------------------------------------


async def test_no_leaks_over_200_runs(no_leaks: None) -> None:
    before = thread_ids()
    sb = system_sandbox()
    for i in range(200):
        # Alternate between a fed stdin pipe and /dev/null.
        feed = {"input": b"x"} if i % 2 else {"stdin": DEVNULL}
        result = await sb.run(["sh", "-c", "echo $0", str(i)], timeout=30, **feed)
        assert result.stdout == f"{i}\n".encode()
        assert thread_ids() <= before
    del sb


async def test_many_concurrent_runs(no_leaks: None) -> None:
    before = thread_ids()
    sb = system_sandbox()
    results: dict[int, bytes | None] = {}

    async def one(sb: Sandbox, i: int) -> None:
        results[i] = (await sb.run(["sh", "-c", "echo $0", str(i)], timeout=60)).stdout
        assert thread_ids() <= before

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, sb, i)
    assert results == {i: f"{i}\n".encode() for i in range(100)}
    assert thread_ids() <= before
    del sb


async def test_one_policy_from_many_tasks_shares_its_plan() -> None:
    sb = system_sandbox()

    def fds() -> int:  # the reaper's are not the policy's
        return len(os.listdir("/proc/self/fd")) - len(_reaper.held()[1])

    before = fds()
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(sb.run, ["true"])
    after_first = fds()
    for _ in range(20):
        await sb.run(["true"])
    # The ruleset is built once and kept: more runs add no fds.
    assert after_first <= before + 1
    assert fds() == after_first


THREADS_SCRIPT = """
import os, anyio
from asyncsandlock import Sandbox, SYSTEM_READABLE

def threads():
    return len(os.listdir("/proc/self/task"))

async def main(sb):
    assert threads() == 1
    for _ in range(20):
        await sb.run(["true"])
        assert threads() == 1
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(sb.run, ["sh", "-c", "echo x"])
    async with await sb.open(["cat"]) as proc:
        await proc.stdin.send(b"x")
        assert await proc.stdout.receive() == b"x"
        assert threads() == 1
    with anyio.move_on_after(0.2):
        await sb.run(["sleep", "10"])
    assert threads() == 1

sb = Sandbox(fs_readable=SYSTEM_READABLE)
for backend in ("asyncio", "trio"):
    anyio.run(main, sb, backend=backend)
print("ok")
"""


def test_caller_thread_count_stays_one() -> None:
    """Under plain anyio.run (no pytest runner), the caller never gets a thread."""
    out = subprocess.run([PYTHON, "-c", THREADS_SCRIPT], capture_output=True, timeout=60)
    assert out.stdout == b"ok\n", out.stderr.decode()


def test_policy_is_reusable_across_event_loops() -> None:
    sb = system_sandbox()
    for backend in ("asyncio", "trio"):
        result = anyio.run(sb.run, ["echo", backend], backend=backend)
        assert result.stdout == f"{backend}\n".encode()

