"""What a snapshot run's holed ruleset costs (issue 12, docs/workspaces.md).

    [BASELINE=<commit>] .venv/bin/python benchmarks/bench_holed_ruleset.py [--rounds N]
        [--runs [--backend asyncio|trio]]

A workdir whose parent holds 200, then 2,000 entries, and a policy of
``SYSTEM_READABLE`` plus that parent: each snapshot run needs a ruleset of
its own with the private directory of the copies holed out of the parent's
grant.  Timed per ruleset, interleaved round by round in one process:

- ``holed``: the run's ruleset as built now (``_workspace._holed_ruleset``);
- ``copy``: the policy's Recipe copy, what a run costs where no grant
  reaches the private directory (the floor);
- with ``BASELINE``, that commit's way (``build_ruleset`` of the policy plus
  the hole, from the paths), loaded beside this tree (``_baseline.py``).

``--runs``: whole snapshot runs instead (``run(["true"])`` of a 100-file
workdir): this tree with the hole, without it (``_workspace.HOLE``), and
the baseline's, for both parents, all interleaved round by round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio
from _baseline import load

import asyncsandlock
from asyncsandlock import _workspace
from asyncsandlock._plan import owner_of
from asyncsandlock._workspace import _holed_ruleset, _recipe


def _parent(entries: int) -> tuple[str, str, str, str]:
    """(a scratch directory, the parent, the workdir, the private directory)."""
    base = tempfile.mkdtemp(dir="/var/tmp", prefix="asl-bench-holed-")
    parent = os.path.join(base, "parent")
    os.mkdir(parent)
    for i in range(entries - 2):
        path = os.path.join(parent, f"e{i:05d}")
        if i % 3 == 0:
            os.mkdir(path)
        else:
            open(path, "w").close()
    work = os.path.join(parent, "work")
    os.mkdir(work)
    home = os.path.join(parent, f".work.asyncsandlock-snapshot-u{os.geteuid()}")
    os.mkdir(home, 0o311)
    return base, parent, work, home


def _baseline_way(base: Any, parent: str, work: str, home: str) -> Callable[[], None]:
    plan, landlock = base._plan, base._kernel._landlock
    policy = base.Sandbox(fs_readable=[*base.SYSTEM_READABLE, parent], workdir=work)
    abi = landlock.abi_version()

    def build() -> None:
        spec = plan._ruleset_spec(policy)
        spec = replace(spec, denied=(*spec.denied, home))
        os.close(landlock.build_ruleset(spec, abi, frozenset()))
    return build


async def _ways(policy: asyncsandlock.Sandbox, home: str) -> dict[str, Callable[[], None]]:
    compiled = await owner_of(policy)
    recipe = _recipe(policy, compiled)[0]
    return {"holed": lambda: os.close(_holed_ruleset(policy, compiled, home)),
            "copy": lambda: os.close(recipe.build())}


async def main(rounds: int) -> None:
    baseline = load()
    for entries in (200, 2000):
        scratch, parent, work, home = _parent(entries)
        try:
            ways = await _ways(asyncsandlock.Sandbox(
                fs_readable=[*asyncsandlock.SYSTEM_READABLE, parent], workdir=work), home)
            if baseline is not None:
                ways[baseline[0]] = _baseline_way(baseline[1], parent, work, home)
            times: dict[str, list[int]] = {name: [] for name in ways}
            for way in ways.values():
                way()
            for _ in range(rounds):
                for name, way in ways.items():
                    start = time.perf_counter_ns()
                    way()
                    times[name].append(time.perf_counter_ns() - start)
            shown = "  ".join(f"{name} {statistics.median(ts) / 1e6:.2f} ms"
                              for name, ts in times.items())
            print(f"parent of {entries:5d} entries: {shown}")
        finally:
            shutil.rmtree(scratch)
    print(f"load average {os.getloadavg()[0]:.1f} (medians of {rounds} interleaved rounds)")


async def runs(rounds: int) -> None:
    baseline = load()
    versions: list[tuple[str, Any]] = [("hole", asyncsandlock), ("no hole", asyncsandlock)]
    if baseline is not None:
        versions.append(baseline)
    sandboxes: dict[tuple[int, str], Any] = {}
    scratches = []
    try:
        for entries in (200, 2000):
            scratch, parent, work, home = _parent(entries)
            scratches.append(scratch)
            os.rmdir(home)  # the runs make it
            for i in range(100):
                with open(os.path.join(work, f"f{i:03d}"), "w") as f:
                    f.write("x" * 100)
            for name, module in versions:
                sandboxes[(entries, name)] = module.Sandbox(
                    fs_readable=[*module.SYSTEM_READABLE, parent], workdir=work,
                    workdir_mechanism="snapshot", on_exit="abort")
        times: dict[tuple[int, str], list[int]] = {key: [] for key in sandboxes}
        for _ in range(rounds + 1):  # the first round warms up
            for key, sandbox in sandboxes.items():
                _workspace.HOLE = key[1] != "no hole"
                start = time.perf_counter_ns()
                await sandbox.run(["true"])
                times[key].append(time.perf_counter_ns() - start)
    finally:
        _workspace.HOLE = True
        for scratch in scratches:
            shutil.rmtree(scratch)
    for (entries, name), ts in times.items():
        median = statistics.median(ts[1:]) / 1e6
        print(f"parent of {entries:5d} entries, {name:8s} {median:6.1f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} (medians of {rounds} interleaved rounds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", action="store_true", help="whole snapshot runs")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args()
    if args.runs:
        anyio.run(runs, args.rounds, backend=args.backend)
    else:
        anyio.run(main, args.rounds)
