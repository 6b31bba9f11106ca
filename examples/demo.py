"""A sandboxed command tries to break out; every attempt fails, the real work succeeds.

Run:  python examples/demo.py
Exits 0 only if confinement held on both asyncio and Trio.
"""

from __future__ import annotations

import os
import pathlib
import socket
import sys
import tempfile

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox

# Each probe is a shell snippet; "ok" means the sandbox let it through.
PROBES = {
    "write inside the work dir": ('echo result > "$WORK/out.txt" && cat "$WORK/out.txt"', True),
    "read a file outside the policy": ('cat "$SECRET"', False),
    "write outside the policy": ('echo pwned > "$OUTSIDE/pwned"', False),
    "connect to a local TCP server": ('exec 3<>/dev/tcp/127.0.0.1/"$PORT"', False),
    "signal the parent process": ('kill -0 "$PARENT"', False),
}


async def main(backend: str) -> int:
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as outside, \
            socket.socket() as server:
        secret = pathlib.Path(outside, "secret.txt")
        secret.write_text("api-key=hunter2\n")
        server.bind(("127.0.0.1", 0))
        server.listen()
        sandbox = Sandbox(fs_readable=SYSTEM_READABLE, fs_writable=[work])
        env = {"WORK": work, "SECRET": str(secret), "OUTSIDE": outside,
               "PORT": str(server.getsockname()[1]), "PARENT": str(os.getpid())}
        held = True
        print(f"--- {backend} ---")
        for label, (snippet, should_work) in PROBES.items():
            result = await sandbox.run(["bash", "-c", snippet], env=env, timeout=10)
            worked = result.success
            verdict = "allowed" if worked else "blocked"
            good = worked == should_work
            held &= good
            detail = (result.stdout or result.stderr or b"").decode().strip().splitlines()
            last = detail[-1] if detail else ""
            print(f"{'PASS' if good else 'FAIL'}  {label:34} {verdict:8} {last}")
        leaked = list(pathlib.Path(outside).iterdir()) != [secret]
        if leaked:
            print("FAIL  something was written outside the policy")
        return 0 if held and not leaked else 1


if __name__ == "__main__":
    codes = [anyio.run(main, backend, backend=backend) for backend in ("asyncio", "trio")]
    ok = not any(codes)
    print("confinement held" if ok else "CONFINEMENT BROKEN")
    sys.exit(0 if ok else 1)
