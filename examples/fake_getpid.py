"""Lie to a sandboxed program about its own pid.

Run:  python examples/fake_getpid.py

A handler on ``getpid`` answers ``return_value(4242)``: the syscall never
runs and the shell's ``$$`` (which it takes from getpid at start-up) is
4242.  Runs on asyncio, then on Trio; exits 0 if the lie held on both.
"""

from __future__ import annotations

import sys

import anyio

from asyncsandlock import SYSTEM_READABLE, Handler, HandlerCtx, NotifAction, Sandbox

FAKE_PID = 4242


class FakePid(Handler):
    syscalls = ("getpid",)

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        return NotifAction.return_value(FAKE_PID)


async def main(backend: str) -> bool:
    sandbox = Sandbox(fs_readable=SYSTEM_READABLE, handlers=[FakePid()])
    result = await sandbox.run(["sh", "-c", "echo my pid is $$"], timeout=30)
    said = (result.stdout or b"").decode().strip()
    print(f"{backend}: {said}")
    return said == f"my pid is {FAKE_PID}"


if __name__ == "__main__":
    ok = all([anyio.run(main, backend, backend=backend) for backend in ("asyncio", "trio")])
    sys.exit(0 if ok else 1)
