"""One owner for a Sandbox's compiled state (``_plan.Compiled``).

The plan is frozen; what changes (degradations, refusals, caches, the
ruleset fd) belongs to one owner per Sandbox, and concurrent runs share one
decision per subsystem without a lock.
"""

from __future__ import annotations

import dataclasses
import errno
import os

import anyio
import pytest

from asyncsandlock import Sandbox, Subsystem
from asyncsandlock._plan import Compiled, owner_of, peek, probe_plan

pytestmark = pytest.mark.anyio


def test_the_plan_is_frozen_and_the_sandbox_holds_no_compiled_state() -> None:
    plan = probe_plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.degraded = frozenset({Subsystem.LANDLOCK})  # type: ignore[misc]
    assert "_compiled" not in {f.name for f in dataclasses.fields(Sandbox)}


async def test_one_owner_per_sandbox(anyio_backend: str, no_leaks: None) -> None:
    sb = Sandbox()
    assert peek(sb) is None
    first = await owner_of(sb)
    assert await owner_of(sb) is first and peek(sb) is first
    assert peek(Sandbox()) is None  # control: another Sandbox has none yet
    first.close()
    assert peek(sb) is None


async def test_concurrent_degradations_ask_once_and_replace_the_plan(anyio_backend: str) -> None:
    owner = Compiled(probe_plan())
    before = owner.plan
    asked = 0

    async def ask() -> None:
        nonlocal asked
        asked += 1
        await anyio.sleep(0.01)  # the others arrive while this one decides

    refusal = OSError(errno.EINVAL, "refused")
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(owner.degrade, Subsystem.SUPERVISOR, refusal, ask)
    assert asked == 1
    assert Subsystem.SUPERVISOR in owner.plan.degraded
    assert owner.plan is not before and Subsystem.SUPERVISOR not in before.degraded
    assert owner.refusal(Subsystem.SUPERVISOR) is refusal


async def test_a_refused_degradation_is_asked_again(anyio_backend: str) -> None:
    owner = Compiled(probe_plan())
    asked = 0

    async def refuse() -> None:
        nonlocal asked
        asked += 1
        raise RuntimeError("no")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await owner.degrade(Subsystem.SUPERVISOR, OSError(errno.EINVAL, "x"), refuse)
    assert asked == 2 and Subsystem.SUPERVISOR not in owner.plan.degraded


def test_the_owner_closes_the_ruleset_fd(no_leaks: None) -> None:
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    owner = Compiled(dataclasses.replace(probe_plan(), ruleset_fd=fd))
    os.fstat(fd)  # open while the owner lives
    owner.close()
    with pytest.raises(OSError):
        os.fstat(fd)
