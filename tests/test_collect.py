"""A run of one process driven by the calling task on one epoll set
(``_collect.py``): everything it reads, its deadline, its cancellation, and
the listener on standby that it watches in place of the event loop.

Every async test runs on asyncio and on Trio.
"""

from __future__ import annotations

import functools
import pathlib
import stat
import threading
import time

import anyio
import pytest

from asyncsandlock import ExitReason, Sandbox, _collect

from conftest import system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture
def collected(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the runs that went through collect() (the tests below must
    not pass by taking the general path)."""
    calls: list[int] = []
    real = _collect.collect

    async def counting(*args: object, **kwargs: object) -> None:
        calls.append(1)
        await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("asyncsandlock._run.collect", counting)
    return calls


async def test_both_streams_far_beyond_a_pipe_buffer(collected: list[int]) -> None:
    # 3 MB and 2 MB: the child blocks unless both pipes are drained while it
    # runs, and each wake-up reads at most a bounded amount per stream.
    script = "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2; echo end"
    result = await system_sandbox().run(["sh", "-c", script], timeout=30)
    assert result.returncode == 0
    assert len(result.stdout) == 3000000 + 4 and result.stdout.endswith(b"end\n")
    assert len(result.stderr) == 2000000
    assert collected


async def test_a_flood_meets_its_deadline(collected: list[int]) -> None:
    started = time.monotonic()
    result = await system_sandbox(max_output=1 << 20).run(["yes"], timeout=0.5)
    assert time.monotonic() - started < 3
    assert result.reason is ExitReason.TIMEOUT
    assert len(result.stdout) == 1 << 20 and result.stdout_truncated > 0
    assert collected


async def test_other_tasks_run_during_a_flood(collected: list[int]) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await system_sandbox(max_output=1 << 16).run(["yes"], timeout=0.5)
        tg.cancel_scope.cancel()
    assert ticks >= 20  # ~100 expected: the loop was not held by the reads
    assert collected


async def test_cancelled_mid_run_leaves_nothing(collected: list[int]) -> None:
    with anyio.move_on_after(0.3):
        await system_sandbox().run(["sleep", "30"])
    # no_leaks checks the fds and processes; the run went through collect()
    assert collected


async def test_output_limit_kill(collected: list[int]) -> None:
    sb = system_sandbox(max_output=4096, on_output_limit="kill")
    result = await sb.run(["yes"], timeout=10)
    assert result.reason is ExitReason.OUTPUT_LIMIT
    assert len(result.stdout) == 4096
    assert collected


async def test_a_notification_is_served_from_the_runs_own_epoll_set(
        tmp_path: pathlib.Path, collected: list[int]) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    target.chmod(0o600)
    sb: Sandbox = system_sandbox(fs_writable=[str(tmp_path)])
    result = await sb.run(["chmod", "0644", str(target)], timeout=10)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert collected
    # Its control, the same guard refusing outside fs_writable, is
    # test_standby.py's test_the_guard_still_refuses_outside: a run() too.


async def test_no_thread(collected: list[int]) -> None:
    before = threading.active_count()
    await system_sandbox().run(["sh", "-c", "echo out; echo err >&2"], timeout=10)
    assert threading.active_count() == before
    assert collected


async def test_input_takes_the_general_path(collected: list[int]) -> None:
    result = await system_sandbox().run(["cat"], input=b"fed", timeout=10)
    assert result.stdout == b"fed"
    assert not collected  # a stdin pipe to feed: the task-group path


@pytest.mark.parametrize("pipes", [True, False])
async def test_another_waiter_may_reap_first(pipes: bool) -> None:
    # run() hands its process out through task_status; a caller waiting on
    # it may reap it (and close the pidfd) before the collecting task looks.
    sb = system_sandbox()
    stdio = {} if pipes else {"stdout": None, "stderr": None}
    for _ in range(20):
        async with anyio.create_task_group() as tg:
            proc = await tg.start(functools.partial(sb.run, ["/bin/true"], timeout=10, **stdio))
            with anyio.fail_after(10):
                assert await proc.wait() == 0
