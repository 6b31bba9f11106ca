"""Copy-on-write workspaces: asyncsandlock's overlay and snapshot against sandlock 0.9's workdir.

    .venv/bin/python benchmarks/bench_workdir.py [--quick] [--backend asyncio|trio]

A workspace over a tree of 10,000 files (100 directories of 100 files of
10 KiB: 100 MB), each contender on a tree of its own, interleaved per round
in one process (see ``_common.py``).  Every round is a whole ``run()``:
setting the workspace up, the command, listing the changes and committing
them into the tree.  Two commands:

1. ``true``: what the workspace itself costs (setup, an empty diff, nothing
   to commit);
2. a Python script that rewrites 1,000 of the files (10 MB) and writes 100
   new ones: setup + diff + commit of 1,100 changes.

Contenders: ``asyncsandlock`` (the overlay, the default where the host
allows it), ``asyncsandlock-snapshot`` (``workdir_mechanism="snapshot"``,
the fallback elsewhere: a copy of the whole tree beside it per run, a
ctime diff, a commit that copies the changed files back) and ``sandlock``.

Goal: asyncsandlock at least 2x faster than sandlock on each.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import anyio

from asyncsandlock import SYSTEM_READABLE, Sandbox

from _common import Bench, Report, Target, banner, blocking, interleave, parse_args, table

sandlock: Any = None
with contextlib.suppress(ImportError):  # the bench extra; without it, no sandlock column
    import sandlock  # type: ignore[import-untyped,no-redef]

DIRS, FILES, SIZE = 100, 100, 10 << 10
EDIT = ("import os\n"
        "for i in range(0, 10000, 10):\n"
        "    with open(f'd{i // 100}/f{i % 100}', 'wb') as f: f.write(os.urandom(10240))\n"
        "for i in range(100):\n"
        "    with open(f'new{i}', 'wb') as f: f.write(os.urandom(10240))\n")
COMMANDS = {"true": ["true"], "edit 1,100 files": ["python3", "-c", EDIT]}


def make_tree(root: pathlib.Path) -> None:
    block = os.urandom(SIZE)
    for d in range(DIRS):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(FILES):
            (root / f"d{d}" / f"f{f}").write_bytes(block)


def contenders(trees: dict[str, pathlib.Path], command: list[str]) -> dict[str, Bench]:
    out: dict[str, Bench] = {}
    for name, mechanism in (("asyncsandlock", "auto"), ("asyncsandlock-snapshot", "snapshot")):
        out[name] = _ours(Sandbox(fs_readable=SYSTEM_READABLE, workdir=trees[name],
                                  workdir_mechanism=mechanism), command)
    if sandlock is not None:
        tree = str(trees["sandlock"])
        theirs = sandlock.Sandbox(fs_readable=list(SYSTEM_READABLE), fs_writable=[tree],
                                  workdir=tree, cwd=tree, on_exit="commit")

        def sandlock_run() -> None:
            result = theirs.run(command)
            assert result.success, result

        out["sandlock"] = blocking(sandlock_run)
    return out


def _ours(sandbox: Sandbox, command: list[str]) -> Bench:
    async def run() -> None:
        result = await sandbox.run(command)
        assert result.success and result.changes is not None, result.stderr

    return run


async def run_backend(rounds: int, report: Report, backend: str,
                      trees: dict[str, pathlib.Path]) -> None:
    for label, command in COMMANDS.items():
        samples = await interleave(contenders(trees, command), rounds, warmup=1)
        table(f"workspace over 10,000 files / 100 MB, {label} ({backend})", samples,
              reference="asyncsandlock")
        if "sandlock" in samples:
            report.check(Target(f"workspace {label} {backend} vs sandlock", "sandlock",
                                "asyncsandlock", at_least=2.0), samples)


def main() -> int:
    args = parse_args("Copy-on-write workspaces: asyncsandlock against sandlock 0.9.")
    rounds = 3 if args.quick else 10
    banner("bench_workdir", args.quick, sandlock is not None)
    report = Report()
    base = pathlib.Path(tempfile.mkdtemp(prefix="bench-workdir-"))
    try:
        trees = {name: base / name
                 for name in ("asyncsandlock", "asyncsandlock-snapshot", "sandlock")}
        for tree in trees.values():
            make_tree(tree)
        for backend in args.backend or ("asyncio", "trio"):
            anyio.run(run_backend, rounds, report, backend, trees, backend=backend)
    finally:
        shutil.rmtree(base)
    return 0 if report.summary() else 1


if __name__ == "__main__":
    sys.exit(main())
