"""Direct tests of the compiled plan (``asyncsandlock/_plan.py``): what is
derived from a policy is derived once per Sandbox, shared by its runs, and
released with it."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
from types import MappingProxyType
from typing import Any

import anyio
import pytest

import asyncsandlock
import asyncsandlock._plan
from asyncsandlock import Handler, HandlerCtx, NotifAction, Protection, Subsystem

from conftest import PYTHON, build_helper, system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

_plan = asyncsandlock._plan


class PassUname(Handler):
    syscalls = ("uname",)

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        return NotifAction.continue_()


def rulesets() -> int:
    """How many Landlock ruleset fds this process holds.

    Sandboxes of earlier tests that are garbage now are collected first: one
    collected in the middle of a test would close its ruleset there.
    """
    gc.collect()
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[landlock-ruleset]"
    return count


async def run_many(sb: asyncsandlock.Sandbox, n: int) -> list[asyncsandlock.Result]:
    """``n`` runs of ``sb`` started at once."""
    results: list[asyncsandlock.Result] = []

    async def one() -> None:
        results.append(await sb.run(["uname", "-s"], timeout=60))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


@pytest.mark.parametrize("handlers", [(), (PassUname(),)], ids=["plain", "supervised"])
async def test_twenty_concurrent_first_runs_compile_once(handlers: tuple[Handler, ...]) -> None:
    sb = system_sandbox(handlers=handlers)
    before = rulesets()
    results = await run_many(sb, 20)
    assert [r.stdout for r in results] == [b"Linux\n"] * 20
    # A second compilation would have built (and kept) a second ruleset.
    assert rulesets() == before + 1
    plan = await _plan.compile_plan(sb)
    assert await _plan.compile_plan(sb) is plan
    assert len({id(r.protections) for r in results}) == 1
    del sb, results, plan
    assert rulesets() == before


async def test_the_ruleset_is_closed_when_the_sandbox_is_collected() -> None:
    before = rulesets()
    sb = system_sandbox()
    await sb.run(["true"], timeout=60)
    assert rulesets() == before + 1
    del sb
    assert rulesets() == before
    # The control: a Sandbox still referenced keeps its ruleset.
    kept = system_sandbox()
    await kept.run(["true"], timeout=60)
    assert rulesets() == before + 1
    del kept


async def test_filters_differ_per_notify_set() -> None:
    """The plan builds a filter per trapped set (the spawn templates of its
    owner keep them): the same set gives the same program, another set another."""
    plan = await _plan.compile_plan(system_sandbox())
    uname = plan.filter_for(frozenset({"uname"}))
    assert uname is not None
    assert plan.filter_for(frozenset({"uname"})) == uname
    both = plan.filter_for(frozenset({"uname", "getpid"}))
    assert both is not None and both != uname
    assert plan.filter_for(frozenset({"getpid", "uname"})) == both
    assert plan.filter_for(frozenset()) not in (uname, both)
    # The control: without seccomp there is no filter at all.
    assert _plan.probe_plan(seccomp=False).filter_for(frozenset({"uname"})) is None


async def test_protections_are_read_only_and_shared() -> None:
    sb = system_sandbox()
    first = await sb.run(["true"], timeout=60)
    second = await sb.run(["true"], timeout=60)
    assert first.protections is second.protections
    assert isinstance(first.protections, MappingProxyType)
    with pytest.raises(TypeError):
        first.protections[Subsystem.LANDLOCK] = Protection.DEGRADED  # type: ignore[index]
    assert first.protections[Subsystem.SUPERVISOR] is Protection.NOT_REQUESTED
    # A run with a handler gets its own mapping (the supervisor is active),
    # shared in turn by every run like it.
    handled = [await sb.run(["true"], timeout=60, handlers=[PassUname()]) for _ in range(2)]
    assert handled[0].protections is handled[1].protections
    assert handled[0].protections[Subsystem.SUPERVISOR] is Protection.ACTIVE
    assert first.protections[Subsystem.SUPERVISOR] is Protection.NOT_REQUESTED


# -- decisions of on_unavailable ------------------------------------------
#
# The host's refusals are real: the library runs in a Python started under
# tests/helpers/refuse.c, whose seccomp filter fails the chosen calls.

DRIVER = r"""
import json, sys
import anyio
import asyncsandlock as asl

cfg = json.loads(sys.argv[1])
calls = []

async def decide(sub, err):
    calls.append(sub.name)
    await anyio.sleep(0.01)  # every first run arrives while this one decides
    if cfg["refuse"]:
        raise RuntimeError(f"refused {sub.name}")

class Pass(asl.Handler):
    syscalls = ("uname",)
    async def handle(self, ctx):
        return asl.NotifAction.continue_()

async def main():
    sb = asl.Sandbox(fs_readable=asl.SYSTEM_READABLE, on_unavailable=decide,
                     handlers=[Pass()] if cfg["handler"] else [])
    outcomes = []

    async def one():
        try:
            r = await sb.run(["uname", "-s"], timeout=60)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
        else:
            outcomes.append(r.stdout.decode().strip())

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    first = list(calls)
    for _ in range(3):
        await one()
    print(json.dumps({"first": first, "calls": calls, "outcomes": outcomes}))

anyio.run(main, backend=cfg["backend"])
"""


REFUSALS = [
    (["landlock_create_ruleset=ENOSYS"], False, "LANDLOCK"),
    (["seccomp-listener=EBUSY"], True, "SUPERVISOR"),
]


def drive(rules: list[str], backend: str, **cfg: Any) -> dict[str, Any]:
    proc = subprocess.run([build_helper("refuse"), *rules, "--", PYTHON, "-c", DRIVER,
                           json.dumps({"backend": backend, **cfg})],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.mark.parametrize(("rules", "handler", "subsystem"), REFUSALS,
                         ids=["parent-side", "child-side"])
def test_an_allowed_refusal_is_decided_once(anyio_backend: str, rules: list[str],
                                            handler: bool, subsystem: str) -> None:
    report = drive(rules, anyio_backend, refuse=False, handler=handler)
    assert report["calls"] == [subsystem]
    assert report["outcomes"] == ["Linux"] * 23


@pytest.mark.parametrize(("rules", "handler", "subsystem"), REFUSALS,
                         ids=["parent-side", "child-side"])
def test_a_refused_subsystem_runs_nothing(anyio_backend: str, rules: list[str],
                                          handler: bool, subsystem: str) -> None:
    report = drive(rules, anyio_backend, refuse=True, handler=handler)
    assert report["outcomes"] == ["RuntimeError"] * 23
    assert set(report["calls"]) == {subsystem}


def test_the_control_nothing_refused_asks_nothing(anyio_backend: str) -> None:
    report = drive([], anyio_backend, refuse=True, handler=True)
    assert report["calls"] == []
    assert report["outcomes"] == ["Linux"] * 23


async def test_a_decision_shares_its_refusal_with_the_runs_waiting_for_it() -> None:
    """Runs that waited for a decision get its refusal instead of asking again;
    a cancelled decision is no refusal (they decide anew)."""
    decision = _plan.Decision()
    seen: list[str] = []

    async def wait() -> None:
        try:
            await decision.outcome()
        except RuntimeError as exc:
            seen.append(str(exc))

    async def refuse() -> None:
        await anyio.sleep(0.01)
        raise RuntimeError("no")

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(wait)
        with pytest.raises(RuntimeError):
            await decision.make(refuse())
    assert seen == ["no"] * 3

    cancelled = _plan.Decision()
    with anyio.move_on_after(0.01):
        await cancelled.make(anyio.sleep(1))
    await cancelled.outcome()  # set, and nothing to raise
