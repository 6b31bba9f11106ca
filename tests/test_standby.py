"""The supervisor on standby (``_standby.py``): a run whose listener never
has a notification ends without a supervisor task; the first notification
starts one, and the guard it serves still decides.

Every async test runs on asyncio and on Trio.
"""

from __future__ import annotations

import pathlib
import stat

import anyio
import pytest

from asyncsandlock import Sandbox

from conftest import system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]


def writable(work: pathlib.Path) -> Sandbox:
    # fs_writable brings the metadata guard, hence a listener.
    return system_sandbox(fs_writable=[str(work)])


async def test_a_run_that_traps_nothing_starts_no_task(tmp_path: pathlib.Path) -> None:
    proc = await writable(tmp_path).open(["/bin/true"], stdin=None, stdout=None, stderr=None)
    standby = proc._supervisor
    assert standby is not None
    # Let the listener poll POLLHUP (every task gone) before the wait: that
    # wake-up is not a notification and must start nothing either.
    await anyio.sleep(0.05)
    assert await proc.wait() == 0
    assert standby.task is None


async def test_the_first_notification_starts_the_guard(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    target.chmod(0o600)
    proc = await writable(tmp_path).open(["chmod", "0644", str(target)], stdin=None,
                                         stdout=None, stderr=None)
    standby = proc._supervisor
    assert standby is not None
    assert await proc.wait() == 0
    assert standby.task is not None  # chmod trapped: the supervisor served it
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


async def test_the_guard_still_refuses_outside(tmp_path: pathlib.Path) -> None:
    # The control for the test above: the same call on a file outside
    # fs_writable is refused by the supervisor that the notification started.
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "f"
    target.write_text("x")
    target.chmod(0o600)
    work = tmp_path / "work"
    work.mkdir()
    result = await writable(work).run(["chmod", "0644", str(target)])
    assert result.returncode != 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


async def test_many_idle_runs_at_once(tmp_path: pathlib.Path) -> None:
    sb = writable(tmp_path)
    procs = []
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            async def one() -> None:
                proc = await sb.open(["/bin/true"], stdin=None, stdout=None, stderr=None)
                procs.append(proc)
                assert await proc.wait() == 0
            tg.start_soon(one)
    assert all(p._supervisor is not None and p._supervisor.task is None for p in procs)
