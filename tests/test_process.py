"""Direct tests of ``SandboxedProcess`` (``asyncsandlock/_process.py``) and of
how ``_run.py`` ends processes: closing, killing, reaping."""

from __future__ import annotations

import signal

import anyio
import pytest

from asyncsandlock import ExitReason, Sandbox

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
