"""Audit every file a sandboxed command opens.

Run:  python examples/audit_openat.py [COMMAND...]
      (default: head -n 2 /etc/os-release)

A handler on the whole ``@open`` group (open, openat, openat2, creat: every
call that opens a file by name) prints each path and lets the call run:
auditing decides nothing, so it fails open (``ExceptionPolicy.CONTINUE``)
and its view is advisory (a hostile child can change the path after we
read it; see docs/handlers.md).  Runs on asyncio, then on Trio.
"""

from __future__ import annotations

import sys

import anyio

from asyncsandlock import (
    SYSTEM_READABLE,
    ExceptionPolicy,
    Handler,
    HandlerCtx,
    NotifAction,
    Sandbox,
    read_path,
)


class AuditOpen(Handler):
    # The group's members this architecture lacks ("open" on aarch64) are skipped.
    syscalls = ("@open",)
    on_exception = ExceptionPolicy.CONTINUE

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        # read_path knows which argument holds the path for each member.
        path = (await read_path(ctx)).decode(errors="replace")
        self.paths.append(path)
        print(f"[audit] pid {ctx.pid} {ctx.syscall} {path}")
        return NotifAction.continue_()


async def main(backend: str, command: list[str]) -> int:
    print(f"--- {backend} ---")
    audit = AuditOpen()
    # LC_ALL=C: no locale files, so the list stays short.
    sandbox = Sandbox(fs_readable=SYSTEM_READABLE, env={"LC_ALL": "C"}, handlers=[audit])
    result = await sandbox.run(command, timeout=30)
    sys.stdout.write((result.stdout or b"").decode())
    print(f"[audit] {len(audit.paths)} opens; exit status {result.returncode}")
    return result.returncode


if __name__ == "__main__":
    command = sys.argv[1:] or ["head", "-n", "2", "/etc/os-release"]
    codes = [anyio.run(main, backend, command, backend=backend) for backend in ("asyncio", "trio")]
    sys.exit(max(codes, key=abs))
