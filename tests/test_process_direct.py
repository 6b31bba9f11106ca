"""Direct tests of ``SandboxedProcess`` through its public surface: states,
exit statuses and reasons, signals to the whole sandbox, waiting, closing."""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import anyio
import pytest

from asyncsandlock import DEVNULL, ExitReason, Sandbox, SandboxedProcess

from conftest import system_sandbox, warmed

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

QUIET = {"stdin": DEVNULL, "stdout": DEVNULL, "stderr": DEVNULL}


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    return warmed(system_sandbox(fs_readable=(sys.base_prefix, sys.prefix)))


def _is_zombie(pid: int) -> bool:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] == "Z"


async def _until_zombie(pid: int) -> None:
    """Until ``pid`` has ended by itself, unreaped (seen through a pidfd of our own)."""
    fd = os.pidfd_open(pid)
    try:
        with anyio.fail_after(10):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)
    assert _is_zombie(pid)


def test_no_public_constructor() -> None:
    with pytest.raises(TypeError, match=r"Sandbox\.open"):
        SandboxedProcess()


async def test_repr_running_then_ended(sb: Sandbox) -> None:
    proc = await sb.open(["sleep", "30"], **QUIET)
    assert repr(proc) == f"<SandboxedProcess pid={proc.pid} 'sleep' running>"
    assert proc.returncode is None
    proc.kill()
    await proc.wait()
    assert repr(proc) == f"<SandboxedProcess pid={proc.pid} 'sleep' killed returncode=-9>"
    async with await sb.open(["sh", "-c", "exit 3"], **QUIET) as proc:
        pass
    assert repr(proc) == f"<SandboxedProcess pid={proc.pid} 'sh' exited returncode=3>"


@pytest.mark.parametrize(("cmd", "code", "reason"), [
    (["sh", "-c", "exit 3"], 3, ExitReason.EXITED),
    (["true"], 0, ExitReason.EXITED),
    (["sh", "-c", "kill -TERM $$"], -signal.SIGTERM, ExitReason.SIGNALED),
    (["sh", "-c", "kill -KILL $$"], -signal.SIGKILL, ExitReason.SIGNALED),
], ids=["exit-3", "exit-0", "own-sigterm", "own-sigkill"])
async def test_returncode_and_reason_of_an_end_by_itself(sb: Sandbox, cmd: list[str],
                                                         code: int, reason: ExitReason) -> None:
    proc = await sb.open(cmd, **QUIET)
    assert await proc.wait() == code
    assert (proc.returncode, proc.reason) == (code, reason)
    result = await proc.result()
    assert (result.returncode, result.reason) == (code, reason)
    assert result.signal == (-code if code < 0 else None)


@pytest.mark.parametrize(("end", "code"), [
    (SandboxedProcess.kill, -signal.SIGKILL),
    (SandboxedProcess.terminate, -signal.SIGTERM),
], ids=["kill", "terminate"])
async def test_kill_and_terminate_are_killed(sb: Sandbox, end: object, code: int) -> None:
    proc = await sb.open(["sleep", "30"], **QUIET)
    end(proc)  # type: ignore[operator]
    assert await proc.wait() == code
    assert proc.reason is ExitReason.KILLED


async def test_a_signal_from_the_caller_is_a_signal(sb: Sandbox) -> None:
    """send_signal() is not kill(): the process died of a signal, not of a decision."""
    proc = await sb.open(["sleep", "30"], **QUIET)
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == -signal.SIGTERM
    assert proc.reason is ExitReason.SIGNALED


async def test_signals_after_the_end_change_nothing(sb: Sandbox) -> None:
    proc = await sb.open(["sh", "-c", "exit 4"], **QUIET)
    await proc.wait()
    proc.kill()
    proc.terminate()
    proc.send_signal(signal.SIGKILL)
    assert (proc.returncode, proc.reason) == (4, ExitReason.EXITED)
    assert await proc.wait() == 4


async def test_a_kill_after_the_end_but_before_the_wait_keeps_the_reason(sb: Sandbox) -> None:
    proc = await sb.open(["true"], **QUIET)
    await _until_zombie(proc.pid)
    proc.kill()
    assert await proc.wait() == 0
    assert proc.reason is ExitReason.EXITED


# Forks a grandchild; both report SIGUSR1.  The grandchild exits on it; the
# command (its parent) waits up to 2 s for that and says whether it happened.
FAMILY = r"""
import os, signal, sys, time
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    def grandchild(*_):
        os.write(1, b"grandchild got it\n")
        os._exit(0)
    signal.signal(signal.SIGUSR1, grandchild)
    os.write(w, b"x")
    while True:
        time.sleep(1)
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
os.read(r, 1)
print("ready", flush=True)
while not got:
    time.sleep(0.01)
print("parent got it", flush=True)
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    if os.waitpid(pid, os.WNOHANG)[0]:
        print("grandchild exited", flush=True)
        break
    time.sleep(0.01)
else:
    print("grandchild alive", flush=True)
"""


async def _signal_family(sb: Sandbox, send: str) -> set[bytes]:
    async with await sb.open([sys.executable, "-c", FAMILY], stdin=DEVNULL,
                             stderr=DEVNULL) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            out = await proc.stdout.receive()
            assert out == b"ready\n"
            if send == "group":
                proc.send_signal(signal.SIGUSR1)
            else:
                # The control: the command alone, not its group.
                pidfd = os.pidfd_open(proc.pid)
                signal.pidfd_send_signal(pidfd, signal.SIGUSR1)
                os.close(pidfd)
            # Until the command's last word (the grandchild, if alive, keeps
            # the pipe open until the sandbox is closed).
            while not out.endswith((b"grandchild exited\n", b"grandchild alive\n")):
                out += await proc.stdout.receive()
    return set(out.splitlines())


async def test_send_signal_reaches_a_grandchild(sb: Sandbox) -> None:
    lines = await _signal_family(sb, "group")
    assert lines == {b"ready", b"parent got it", b"grandchild got it", b"grandchild exited"}


async def test_a_signal_to_the_command_alone_misses_the_grandchild(sb: Sandbox) -> None:
    lines = await _signal_family(sb, "command")
    assert lines == {b"ready", b"parent got it", b"grandchild alive"}


async def test_wait_twice_and_concurrently(sb: Sandbox) -> None:
    proc = await sb.open(["sh", "-c", "sleep 0.1; exit 5"], **QUIET)
    codes: list[int] = []

    async def waiter() -> None:
        codes.append(await proc.wait())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(waiter)
    assert codes == [5, 5, 5]
    assert await proc.wait() == 5
    # A wait on an ended process is still a checkpoint: it can be cancelled.
    with anyio.CancelScope() as scope:
        scope.cancel()
        await proc.wait()
    assert scope.cancelled_caught


async def test_result(sb: Sandbox) -> None:
    proc = await sb.open(["sh", "-c", "echo out; exit 2"], stdin=DEVNULL)
    assert proc.stdout is not None
    assert await proc.stdout.receive() == b"out\n"
    result = await proc.result()
    # The streams belong to the caller: the result captures nothing.
    assert (result.stdout, result.stderr) == (None, None)
    assert result.args == ("sh", "-c", "echo out; exit 2")
    assert (result.returncode, result.reason, result.success) == (2, ExitReason.EXITED, False)
    assert result.duration > 0
    assert result.protections is proc.protections
    assert await proc.result() == result
    await proc.aclose()


async def test_aclose_is_idempotent(sb: Sandbox) -> None:
    proc = await sb.open(["cat"])
    streams = (proc.stdin, proc.stdout, proc.stderr)
    assert all(s is not None and s.fileno() >= 0 for s in streams)
    await proc.aclose()
    # cat read EOF on its closed stdin and ended by itself.
    assert (proc.returncode, proc.reason) == (0, ExitReason.EXITED)
    assert all(s is not None and s.fileno() == -1 for s in streams)
    await proc.aclose()
    async with proc:
        pass
    assert proc.returncode == 0


async def test_aclose_cancelled_kills_and_reaps(sb: Sandbox) -> None:
    proc = await sb.open(["sleep", "30"], **QUIET)
    with anyio.move_on_after(0.1) as scope:
        await proc.aclose()
    assert scope.cancelled_caught
    assert (proc.returncode, proc.reason) == (-signal.SIGKILL, ExitReason.KILLED)
