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
