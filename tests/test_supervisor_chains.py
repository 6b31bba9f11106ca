"""Handler chains as the supervisor steps them (``_chains`` in
``_supervisor.py``): one generator serves every chain until a handler
suspends or is cancelled; then a fresh one serves the next notification
while the first finishes its chain.

Every async test runs on asyncio and on Trio, unless it raises asyncio's
own cancellation.
"""

from __future__ import annotations

import asyncio
import errno

import anyio.lowlevel
import pytest
from test_handlers import child_binary, out, run_child

from asyncsandlock import Handler, HandlerCtx, NotifAction

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture(scope="session")
def child() -> str:
    return child_binary()


class Step(Handler):
    """Counts getpid calls; every ``suspend_every``-th awaits first; answers ``action``."""

    syscalls = ("getpid",)

    def __init__(self, action: NotifAction, suspend_every: int = 0) -> None:
        self.action = action
        self.suspend_every = suspend_every
        self.calls = 0
        self.ids: set[int] = set()

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.calls += 1
        self.ids.add(ctx.id)
        if self.suspend_every and self.calls % self.suspend_every == 0:
            await anyio.lowlevel.checkpoint()
        return self.action


@pytest.mark.parametrize("suspend_every", [1, 3])
async def test_chains_after_a_suspended_handler_run_whole(child: str,
                                                          suspend_every: int) -> None:
    """A chain whose first handler suspended still asks the second; the
    notifications served meanwhile by a fresh chain too."""
    first = Step(NotifAction.continue_(), suspend_every)
    second = Step(NotifAction.return_value(7))
    result = await run_child(child, "getpid", "50", handlers=[first, second])
    assert out(result) == "getpid 7\n"
    assert first.calls == second.calls == 50
    assert first.ids == second.ids


class CancelledInline(Handler):
    """Raises asyncio's CancelledError without suspending, on the ``at``-th
    getpid; continues the others."""

    syscalls = ("getpid",)

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.calls += 1
        if self.calls == self.at:
            raise asyncio.CancelledError
        return NotifAction.continue_()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_handler_cancelled_inline_is_refused_and_the_rest_served(
        child: str, caplog: pytest.LogCaptureFixture) -> None:
    """The chain's generator goes with the cancellation; the supervisor
    serves the calls after it with a new one."""
    handler = CancelledInline(at=3)
    result = await run_child(child, "getpid", "10", handlers=[handler])
    assert out(result).startswith("getpid ")
    assert int(out(result).split()[1]) > 0  # the last call ran
    assert handler.calls == 10
    assert "raised CancelledError" in caplog.text


async def test_an_errno_after_a_suspension_is_the_answer(child: str) -> None:
    handler = Step(NotifAction.errno(errno.EACCES), suspend_every=2)
    result = await run_child(child, "getpid", "4", handlers=[handler])
    assert out(result) == "getpid -1\n"
    assert handler.calls == 4
