"""Structured acquisition: what the open path made is released on any failure,
and handed over whole once the process owns it (the two scopes of
``_run._open_in_turn`` and ``_spawn.spawn``)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

import asyncsandlock._run
from asyncsandlock import Sandbox, SandboxedProcess
from asyncsandlock._fd import Cleanup

from conftest import system_sandbox, warmed

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    yield warmed(system_sandbox(max_processes=8))  # supervised: a listener too


@pytest.mark.parametrize("handing_over", [False, True])
async def test_a_failure_after_the_spawn_releases_the_child_and_our_ends(
        anyio_backend: str, no_leaks: None, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
        handing_over: bool) -> None:
    """The child is spawned and watched, then making its SandboxedProcess
    fails: the child is killed and reaped, its listener and our pipe ends
    closed (no_leaks checks fds and children)."""
    real = SandboxedProcess._create
    made: list[SandboxedProcess] = []

    def create(**kwargs: object) -> SandboxedProcess:
        if handing_over:  # the control: the process takes over
            made.append(real(**kwargs))  # type: ignore[arg-type]
            return made[-1]
        raise Boom

    monkeypatch.setattr(asyncsandlock._run.SandboxedProcess, "_create", create)
    if handing_over:
        async with await sandbox.open(["sleep", "0.2"]) as proc:
            assert proc.stdout is not None and proc.stdout.fileno() >= 0
            assert proc._listener >= 0
        assert proc.returncode == 0
    else:
        with pytest.raises(Boom):
            await sandbox.open(["sleep", "30"])
        await anyio.lowlevel.checkpoint()


def test_a_cleanup_runs_every_callback_in_reverse_even_when_one_fails() -> None:
    """The scopes of a spawn (``_fd.Cleanup``) close everything they hold:
    a failing close does not leave the others open; the first failure is
    raised, with the later one chained to it."""
    ran: list[int] = []

    def fails(n: int) -> None:
        ran.append(n)
        raise OSError(n, "close failed")

    with pytest.raises(OSError) as caught, Cleanup() as scope:
        scope.callback(ran.append, 1)
        scope.callback(fails, 2)
        scope.callback(ran.append, 3)
        scope.callback(fails, 4)
    assert ran == [4, 3, 2, 1]
    assert caught.value.errno == 2
    assert isinstance(caught.value.__context__, OSError) and caught.value.__context__.errno == 4


def test_a_cleanup_whose_callbacks_were_popped_runs_none() -> None:
    """Ownership passed on (``pop_all``): nothing is closed on the way out,
    even when the block raises; what is registered after it still runs."""
    ran: list[int] = []
    with pytest.raises(KeyError), Cleanup() as scope:
        scope.callback(ran.append, 1)
        scope.pop_all()
        scope.callback(ran.append, 2)
        raise KeyError("after the hand-over")
    assert ran == [2]
