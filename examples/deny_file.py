"""Refuse to open one file by name; everything else goes through.

Run:  python examples/deny_file.py

The child reads ``public.txt`` and tries ``secret.txt`` in the same
directory; a handler on the ``@open`` group (open, openat, openat2, creat:
trapping ``openat`` alone would let the others through) answers EACCES for any path
whose last component is ``secret.txt``.  Runs on asyncio, then on Trio.

A name check like this one is advisory: the kernel reads the path again
after ``continue_()``, so a multi-threaded child can swap it in between.
Where a denial must hold, leave the file out of ``fs_readable`` (Landlock
decides on the opened object, not on a name), or open files on the child's
behalf and hand them over with ``inject_fd`` (docs/handlers.md).
"""

from __future__ import annotations

import errno
import os
import pathlib
import sys
import tempfile

import anyio

from asyncsandlock import SYSTEM_READABLE, Handler, HandlerCtx, NotifAction, Sandbox, read_path


class DenyByName(Handler):
    syscalls = ("@open",)

    def __init__(self, name: str) -> None:
        self.name = os.fsencode(name)

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        path = await read_path(ctx)
        if os.path.basename(path) == self.name:
            print(f"[deny] pid {ctx.pid} {ctx.syscall} {path.decode(errors='replace')}")
            return NotifAction.errno(errno.EACCES)
        return NotifAction.continue_()


async def main(backend: str) -> bool:
    print(f"--- {backend} ---")
    with tempfile.TemporaryDirectory() as work:
        pathlib.Path(work, "public.txt").write_text("public: hello\n")
        pathlib.Path(work, "secret.txt").write_text("secret: hunter2\n")
        sandbox = Sandbox(fs_readable=[*SYSTEM_READABLE, work], cwd=work,
                          handlers=[DenyByName("secret.txt")])
        result = await sandbox.run(["sh", "-c", "cat public.txt; cat secret.txt"], timeout=30)
    stdout, stderr = (result.stdout or b"").decode(), (result.stderr or b"").decode()
    sys.stdout.write(stdout)
    sys.stdout.write(stderr)
    return "public: hello" in stdout and "hunter2" not in stdout and result.returncode != 0


if __name__ == "__main__":
    ok = all([anyio.run(main, backend, backend=backend) for backend in ("asyncio", "trio")])
    sys.exit(0 if ok else 1)
