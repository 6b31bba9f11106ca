"""``fs_denied`` benchmark: what holes in a granted tree cost a program.

    .venv/bin/python benchmarks/bench_files.py [--quick] [--backend asyncio|trio]

A tree of 10,000 files (100 directories of 100) with three holes in it (a
file, a directory, and a file two levels down); ``find`` lists it and stats
every entry (``-printf``), and ``cat`` reads every file of one directory
beside a hole.  Contenders, interleaved per round (see ``_common.py``):

- ``bare``: the program run with ``anyio.run_process``, unconfined;
- ``asyncsandlock``: ``fs_readable=SYSTEM_READABLE + [tree]``,
  ``fs_denied=[three holes]`` — Landlock rules only, nothing trapped;
- ``asyncsandlock, no holes``: the same without ``fs_denied`` (what the holes
  themselves cost, apart from confinement as such);
- ``sandlock``: sandlock 0.9 with the same ``fs_readable`` and ``fs_denied``
  (it enforces ``fs_denied`` by trapping opens in its supervisor).

Target: asyncsandlock within 1.1x of bare.  The one-time cost of carving the
holes (listing the directories on the way to them, one rule per sibling) is
measured apart: it is paid once per Sandbox, at its first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox
from asyncsandlock._plan import compile_plan

from _common import Report, Target, banner, blocking, fmt_ms, interleave, parse_args, table

try:
    import sandlock  # type: ignore[import-untyped]
except ImportError:
    sandlock = None

FIND = shutil.which("find") or "/usr/bin/find"


def make_tree(root: str) -> list[str]:
    """10,000 files in 100 directories; returns the three holes."""
    for d in range(100):
        directory = os.path.join(root, f"d{d:02}")
        os.mkdir(directory)
        for f in range(100):
            with open(os.path.join(directory, f"f{f:03}"), "w") as out:
                out.write("x" * 64)
    os.mkdir(os.path.join(root, "d05", "deep"))
    with open(os.path.join(root, "d05", "deep", "secret"), "w") as out:
        out.write("s")
    return [os.path.join(root, "d10", "f050"), os.path.join(root, "d20"),
            os.path.join(root, "d05", "deep", "secret")]


async def main_async(backend: str, rounds: int, report: Report) -> None:
    base = tempfile.mkdtemp(prefix="asl-bench-files-")
    try:
        os.chmod(base, 0o755)
        holes = make_tree(base)
        readable = [*SYSTEM_READABLE, base]
        start = time.perf_counter()
        sb = Sandbox(fs_readable=readable, fs_denied=holes)
        await compile_plan(sb)
        carve = time.perf_counter() - start
        plain = Sandbox(fs_readable=readable)
        start = time.perf_counter()
        await compile_plan(plain)
        print(f"\n  ruleset built once per Sandbox ({backend}): with the holes "
              f"{fmt_ms(carve)} ms, without {fmt_ms(time.perf_counter() - start)} ms")
        box: Any = None
        if sandlock is not None:
            box = sandlock.Sandbox(fs_readable=readable, fs_denied=holes)
        for label, cmd in (
            ("find -printf over 10,000 files", [FIND, base, "-printf", "%s %p\n"]),
            ("cat of 100 files beside a hole", ["sh", "-c", f"cat {base}/d10/f0[0-4]* "
                                               f"{base}/d10/f0[6-9]* {base}/d11/*"]),
        ):
            async def bare(cmd: list[str] = cmd) -> object:
                return await anyio.run_process(cmd, stdout=subprocess.DEVNULL)

            async def confined(cmd: list[str] = cmd) -> object:
                result = await sb.run(cmd, stdout=subprocess.DEVNULL)
                if result.returncode not in (0, 1):
                    raise RuntimeError(f"asyncsandlock: {result}")
                return result

            async def no_holes(cmd: list[str] = cmd) -> object:
                return await plain.run(cmd, stdout=subprocess.DEVNULL)

            contenders = {"bare": bare, "asyncsandlock": confined,
                          "asyncsandlock, no holes": no_holes}
            if box is not None:
                def with_sandlock(cmd: list[str] = cmd) -> object:
                    result = box.run(cmd)
                    # 1: find could not list a denied directory, as sandlock denies that.
                    if result.exit_code not in (0, 1):
                        raise RuntimeError(f"sandlock: {result}")
                    return result
                contenders["sandlock"] = blocking(with_sandlock)
            samples = await interleave(contenders, rounds, warmup=1)
            table(f"{label} ({backend})", samples, "bare")
            report.check(Target(f"{label} {backend}", "asyncsandlock", "bare", at_most=1.1),
                         samples)
            table_note = "the holes themselves"
            report.check(Target(f"{label} {backend}, {table_note}", "asyncsandlock",
                                "asyncsandlock, no holes", at_most=1.1), samples)
        # The holes hold: a control that they are enforced, not skipped.
        held = await sb.run(["cat", holes[0]])
        assert held.returncode != 0, "a hole was readable"
    finally:
        shutil.rmtree(base)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    banner("bench_files", args.quick, sandlock is not None)
    rounds = 5 if args.quick else 20
    report = Report()
    for backend in args.backend or ("asyncio", "trio"):
        anyio.run(main_async, backend, rounds, report, backend=backend)
    report.summary()


if __name__ == "__main__":
    main()
