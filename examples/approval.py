"""Human-in-the-loop approval: every program the sandbox starts waits for a yes or no.

Run:  python examples/approval.py

A handler on ``execve`` reads the program and its argv from the child,
sends a request (with a one-shot reply stream) to an approver coroutine
over an anyio memory object stream, and waits for the verdict; meanwhile
the child's execve is held, and nothing else is.  The approver here is a
scripted "human" who takes a moment to think, says yes to ``ls`` and no
to everything else.  The sandbox's own first execve (of ``sh``) is not
asked about: that one belongs to the sandbox.  Runs on asyncio, then on
Trio; exits 0 if ``ls`` ran and ``id`` did not, on both.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from dataclasses import dataclass

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from asyncsandlock import SYSTEM_READABLE, Handler, HandlerCtx, NotifAction, Sandbox

COMMAND = ["sh", "-c", "/bin/ls -d /usr; /usr/bin/id -u; echo shell done"]


@dataclass
class Request:
    pid: int
    program: str
    argv: list[str]
    reply: ObjectSendStream[bool]


async def read_argv(ctx: HandlerCtx, addr: int, limit: int = 32) -> list[str]:
    """Read a NULL-terminated ``char *argv[]`` from the child."""
    argv: list[str] = []
    while len(argv) < limit:
        (pointer,) = struct.unpack("=Q", await ctx.read(addr + 8 * len(argv), 8))
        if not pointer:
            break
        argv.append((await ctx.read_cstr(pointer)).decode(errors="replace"))
    return argv


class AskBeforeExec(Handler):
    syscalls = ("execve",)

    def __init__(self, requests: ObjectSendStream[Request]) -> None:
        self.requests = requests

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        program = (await ctx.read_cstr(ctx.args[0])).decode(errors="replace")
        argv = await read_argv(ctx, ctx.args[1])
        reply, verdict = anyio.create_memory_object_stream[bool](1)
        async with verdict:
            await self.requests.send(Request(ctx.pid, program, argv, reply))
            with anyio.fail_after(60):  # nobody answered: fail closed (on_exception=KILL)
                approved = await verdict.receive()
        return NotifAction.continue_() if approved else NotifAction.errno(errno.EACCES)


async def approver(requests: ObjectReceiveStream[Request]) -> None:
    async with requests:
        async for request in requests:
            async with request.reply:
                await anyio.sleep(0.2)  # a human, thinking
                yes = os.path.basename(request.program) == "ls"
                print(f"[approver] pid {request.pid} wants to run {request.argv}: "
                      f"{'yes' if yes else 'no'}")
                await request.reply.send(yes)


async def main(backend: str) -> bool:
    print(f"--- {backend} ---")
    send, receive = anyio.create_memory_object_stream[Request]()
    sandbox = Sandbox(fs_readable=SYSTEM_READABLE, handlers=[AskBeforeExec(send)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(approver, receive)
        async with send:
            result = await sandbox.run(COMMAND, timeout=60)
    stdout, stderr = (result.stdout or b"").decode(), (result.stderr or b"").decode()
    sys.stdout.write(stdout)
    sys.stdout.write(stderr)
    return stdout.startswith("/usr\n") and "Permission denied" in stderr \
        and "shell done" in stdout and f"{os.getuid()}\n" not in stdout


if __name__ == "__main__":
    ok = all([anyio.run(main, backend, backend=backend) for backend in ("asyncio", "trio")])
    sys.exit(0 if ok else 1)
