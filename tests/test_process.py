"""Direct tests of ``SandboxedProcess`` (``asyncsandlock/_process.py``) and of
how ``_run.py`` ends processes: closing, killing, reaping."""

from __future__ import annotations

import pathlib
import signal

import anyio
import pytest

from asyncsandlock import DEVNULL, ExitReason, Sandbox
from asyncsandlock._run import _kill_and_reap_all

from conftest import system_sandbox, warmed

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    return warmed(system_sandbox())


# -- aclose -------------------------------------------------------------------


async def test_aclose_of_a_writer_that_never_stops(sb: Sandbox, no_leaks: None) -> None:
    """Regression test for aclose() hanging: it waited for ``yes`` to end
    before closing the pipe ``yes`` blocks on, so neither ever happened."""
    with anyio.fail_after(10):
        async with await sb.open(["yes"]) as proc:
            pass
    # The read end closed first, as anyio's Process.aclose does: the next
    # write gets SIGPIPE.
    assert proc.returncode == -signal.SIGPIPE
    assert proc.reason is ExitReason.SIGNALED
    assert proc.stdout is not None and proc.stdout.fileno() == -1


async def test_aclose_of_a_writer_to_stderr(sb: Sandbox, no_leaks: None) -> None:
    with anyio.fail_after(10):
        async with await sb.open(["sh", "-c", "exec yes >&2"], stdout=None) as proc:
            pass
    assert proc.returncode == -signal.SIGPIPE


async def test_aclose_waits_for_a_process_that_ends_by_itself(sb: Sandbox,
                                                               no_leaks: None) -> None:
    """Closing the pipes first does not kill what does not write to them."""
    async with await sb.open(["sh", "-c", "sleep 0.2; exit 3"]) as proc:
        pass
    assert proc.returncode == 3
    assert proc.reason is ExitReason.EXITED


# -- killing on a deadline ------------------------------------------------------


def _is_zombie(pid: int) -> bool:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_a_process_that_ended_before_the_kill_keeps_its_reason(sb: Sandbox,
                                                                    no_leaks: None) -> None:
    """Regression test: a stage that had exited by itself (a zombie not reaped
    yet) when the deadline came was reported TIMEOUT with returncode 0."""
    proc = await sb.open(["true"], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
    running = await sb.open(["sleep", "30"], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
    with anyio.fail_after(10):
        await anyio.wait_readable(proc._pidfd)  # it has exited, nobody reaped it
    assert _is_zombie(proc.pid)
    await _kill_and_reap_all([proc, running], ExitReason.TIMEOUT)
    assert (proc.reason, proc.returncode) == (ExitReason.EXITED, 0)
    # Control: one still running when the deadline comes is the deadline's.
    assert (running.reason, running.returncode) == (ExitReason.TIMEOUT, -signal.SIGKILL)


async def test_a_deadline_reports_every_stage_killed(sb: Sandbox, no_leaks: None) -> None:
    """Regression test: stages were signalled upstream first, so a downstream
    ``cat`` could see EOF and exit 0 before its own kill; the result flipped
    from run to run.  50 pipelines, 10 at a time."""
    seen: list[list[tuple[ExitReason, int]]] = []

    async def one() -> None:
        res = await (sb.cmd(["sleep", "30"]) | sb.cmd(["cat"]) | sb.cmd(["cat"])).run(
            timeout=0.05)
        seen.append([(stage.reason, stage.returncode) for stage in res.stages])

    for _ in range(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert seen == [[(ExitReason.TIMEOUT, -signal.SIGKILL)] * 3] * 50
