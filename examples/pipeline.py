"""Stages that distrust each other, joined by kernel pipes.

Run:  python examples/pipeline.py
Exits 0 only if every check held on both asyncio and Trio.

1. A pipeline: only the first stage may read the customer file; the next
   stages filter and count what it sends them, and cannot open the file
   themselves (the second one tries).
2. A fan-in: two sandboxed producers feed a Python consumer, which reads
   them by name through ``asyncsandlock.inputs``.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

import anyio

import asyncsandlock
from asyncsandlock import SYSTEM_READABLE, Gather, Sandbox

CUSTOMERS = """\
# id,name,country
1,ada,uk
2,grace,us
3,alan,uk
4,edsger,nl
5,barbara,us
"""

# Runs inside the consumer's sandbox: it sees only its inputs.
CONSUMER = """
import json
from asyncsandlock import inputs
rows = inputs["rows"].read().decode().split()
wanted = set(inputs["countries"].read().decode().split())
print(json.dumps(sorted(r.split(",")[1] for r in rows if r.split(",")[2] in wanted)))
"""


async def main(backend: str) -> int:
    print(f"--- {backend} ---")
    with tempfile.TemporaryDirectory() as data:
        table = pathlib.Path(data, "customers.csv")
        table.write_text(CUSTOMERS)
        reader = Sandbox(fs_readable=[*SYSTEM_READABLE, data], name="reader")
        tool = Sandbox(fs_readable=SYSTEM_READABLE, name="tool")
        # This Python and the asyncsandlock package, for the consumer.
        package = pathlib.Path(asyncsandlock.__file__).resolve().parent.parent
        python = Sandbox(fs_readable=[*SYSTEM_READABLE, sys.base_prefix, sys.prefix, package],
                         name="python")
        checks: dict[str, bool] = {}

        # 1. cat (may read the file) | grep (tries to read it too) | wc
        sneaky = (f'grep -v "^#"; if cat "{table}" >/dev/null 2>&1; then echo LEAKED >&2; '
                  'else echo denied >&2; fi')
        res = await (reader.cmd(["cat", str(table)])
                     | tool.cmd(["sh", "-c", sneaky])
                     | tool.cmd(["wc", "-l"])).run(timeout=10)
        print(f"rows without the header: {(res.stdout or b'').decode().strip()}")
        for index, stage in enumerate(res.stages):
            print(f"  stage {index} {' '.join(stage.args)[:40]!r:44} {stage.reason.value} "
                  f"rc={stage.returncode}")
        checks["pipeline counted 5 rows"] = res.success and res.stdout == b"5\n"
        checks["stage 1 could not read the file"] = res.stages[1].stderr == b"denied\n"

        # 2. two producers -> one Python consumer, inputs read by name
        res = await Gather({
            "rows": reader.cmd(["grep", "-v", "^#", str(table)]),
            "countries": tool.cmd(["echo", "uk nl"]),
        }, into=python.cmd([sys.executable, "-c", CONSUMER])).run(timeout=30)
        names = json.loads(res.stdout or b"null") if res.success else None
        print(f"customers in uk or nl: {names}")
        if not res.success:
            print((res.stages[-1].stderr or b"").decode())
        checks["gather picked the right names"] = names == ["ada", "alan", "edsger"]

        for label, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}  {label}")
        return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    codes = [anyio.run(main, backend, backend=backend) for backend in ("asyncio", "trio")]
    ok = not any(codes)
    print("all checks held" if ok else "A CHECK FAILED")
    sys.exit(0 if ok else 1)
