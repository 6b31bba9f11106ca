"""Spawns take turns with the event loop (``asyncsandlock/_pacing.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import asyncsandlock._run
from asyncsandlock import Sandbox
from asyncsandlock._pacing import SpawnTurn, _gate

from conftest import system_sandbox, warmed

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    return warmed(system_sandbox())


class Ticks:
    """Counts loop iterations (one checkpoint per iteration) and records the
    iteration in which each spawn happens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0
        self.spawns: list[int] = []
        real = asyncsandlock._run.spawn

        def spawn(*args: Any, **kwargs: Any) -> Any:
            self.spawns.append(self.now)
            return real(*args, **kwargs)

        monkeypatch.setattr(asyncsandlock._run, "spawn", spawn)

    async def tick(self, until: Callable[[], bool]) -> None:
        while not until():
            await anyio.lowlevel.checkpoint()
            self.now += 1


async def test_one_spawn_per_loop_iteration(sb: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                            no_leaks: None) -> None:
    """Regression test for spawns holding the loop: runs started together
    spawned back to back in one iteration, other tasks waiting for all."""
    ticks = Ticks(monkeypatch)
    runs = 40
    done = 0

    async def one() -> None:
        nonlocal done
        assert (await sb.run(["true"], timeout=30)).success
        done += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticks.tick, lambda: done == runs)
        for _ in range(runs):
            tg.start_soon(one)
    assert len(ticks.spawns) == runs
    assert len(set(ticks.spawns)) == runs, "two spawns in one loop iteration"


async def test_pipeline_stages_take_turns_too(sb: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                              no_leaks: None) -> None:
    ticks = Ticks(monkeypatch)
    finished = False

    async def pipelines() -> None:
        nonlocal finished
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(lambda: (sb.cmd(["echo", "x"]) | sb.cmd(["cat"])).run(timeout=30))
        finished = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticks.tick, lambda: finished)
        tg.start_soon(pipelines)
    assert len(ticks.spawns) == 10
    assert len(set(ticks.spawns)) == 10


async def test_cancelled_waiters_leave_the_gate_usable(sb: Sandbox, no_leaks: None) -> None:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(sb.run, ["sleep", "10"])
            await anyio.lowlevel.checkpoint()
            scope.cancel()
    assert scope.cancelled_caught
    with anyio.fail_after(10):
        assert (await sb.run(["echo", "after"])).stdout == b"after\n"


async def test_a_waiter_cancelled_as_it_is_handed_the_gate_hands_it_on() -> None:
    gate = _gate()
    reached = False

    async def waiter(scope: anyio.CancelScope) -> None:
        nonlocal reached
        with scope:
            async with SpawnTurn():
                reached = True

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg, SpawnTurn():
        tg.start_soon(waiter, scope)
        await anyio.wait_all_tasks_blocked()
        assert len(gate.waiters) == 1
        scope.cancel()
        gate.pass_on()  # the gate reaches the waiter after its cancellation
        await anyio.wait_all_tasks_blocked()
        assert not reached
        assert not gate.taken and not gate.waiters  # it was handed on, not kept
        gate.taken = True  # this task still holds its own turn
    # The gate opens in a later loop iteration; two checkpoints, as on Trio
    # the task that opens it may run after this one in the next batch.
    await anyio.lowlevel.checkpoint()
    await anyio.lowlevel.checkpoint()
    assert not gate.taken
    async with SpawnTurn():  # usable again
        assert gate.taken
