"""Pipeline benchmarks: asyncsandlock pipelines against sandlock and the shell.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--backend asyncio|trio]

Two measurements, each on asyncio and on Trio, contenders interleaved per
round in one process (see ``_common.py``):

1. the 3-stage ``echo | tr | wc``, every stage in its own sandbox, against
   the same pipeline run bare by ``sh``; then against sandlock 0.9's
   ``Pipeline`` (three sandboxes, built once) in a rotation of their own
   (sandlock forks: see ``versus_sandlock``);
2. 1 GiB moved through ``head -c 1G /dev/zero | cat | cat | cat | wc -c``,
   every stage sandboxed, against the same shell pipeline unsandboxed:
   the data only crosses kernel pipes, so confinement should cost nothing.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import anyio

from asyncsandlock import SYSTEM_READABLE, Pipeline, Sandbox

from _common import (
    Bench,
    Report,
    Target,
    banner,
    blocking,
    interleave,
    median,
    parse_args,
    table,
)

sandlock: Any = None
with contextlib.suppress(ImportError):  # the bench extra; without it, no sandlock column
    import sandlock  # type: ignore[import-untyped,no-redef]

GIB = 1 << 30
ECHO_TR_WC = (["echo", "hello pipeline"], ["tr", "a-z", "A-Z"], ["wc", "-c"])
ECHO_TR_WC_OUT = b"15\n"
BULK = (["head", "-c", str(GIB), "/dev/zero"], ["cat"], ["cat"], ["cat"], ["wc", "-c"])
BULK_OUT = f"{GIB}\n".encode()


class Rounds:
    """How many rounds each measurement gets (``--quick``: a smoke run)."""

    def __init__(self, quick: bool) -> None:
        self.small = 30 if quick else 200
        self.versus = 20 if quick else 100
        self.bulk = 2 if quick else 11


def _pipeline(commands: tuple[list[str], ...]) -> Pipeline:
    # A sandbox per stage, as a real pipeline of distrustful steps would have.
    return Pipeline([Sandbox(fs_readable=SYSTEM_READABLE).cmd(cmd) for cmd in commands])


def ours(commands: tuple[list[str], ...], expect: bytes) -> Bench:
    pipeline = _pipeline(commands)

    async def call() -> object:
        result = await pipeline.run()
        if not result.success or result.stdout != expect:
            raise RuntimeError(f"asyncsandlock pipeline: {result}")
        return result

    return call


def shell(commands: tuple[list[str], ...], expect: bytes) -> Bench:
    script = " | ".join(" ".join(cmd) for cmd in commands)

    async def call() -> object:
        result = await anyio.run_process(["sh", "-c", script])
        if result.stdout != expect:
            raise RuntimeError(f"sh -c {script!r}: {result}")
        return result

    return call


def with_sandlock(commands: tuple[list[str], ...]) -> dict[str, Bench]:
    """``{"sandlock": ...}``, or nothing when sandlock is not installed."""
    if sandlock is None:
        return {}
    boxes = [sandlock.Sandbox(fs_readable=list(SYSTEM_READABLE)) for _ in commands]

    def call() -> object:
        stages: Any = boxes[0].cmd(commands[0])
        for box, cmd in zip(boxes[1:], commands[1:], strict=True):
            stages = stages | box.cmd(cmd)
        result = stages.run()
        if not result.success:
            raise RuntimeError(f"sandlock pipeline: {result}")
        return result

    return {"sandlock": blocking(call)}


async def bench_small(rounds: Rounds, report: Report, backend: str) -> None:
    samples = await interleave({
        "asyncsandlock": ours(ECHO_TR_WC, ECHO_TR_WC_OUT),
        "sh (bare)": shell(ECHO_TR_WC, ECHO_TR_WC_OUT),
    }, rounds.small)
    table(f"1. echo | tr | wc, a sandbox per stage ({backend})", samples, "asyncsandlock")
    await versus_sandlock(rounds, report, backend)


async def versus_sandlock(rounds: Rounds, report: Report, backend: str) -> None:
    """asyncsandlock against sandlock, interleaved on their own.

    sandlock forks, which leaves its caller ~500 page faults to take on the
    pages it next writes; ``absorb`` keeps that on sandlock's own account
    instead of the next contender's (see ``_common.interleave``).
    """
    theirs = with_sandlock(ECHO_TR_WC)
    if not theirs:
        return
    samples = await interleave({"asyncsandlock": ours(ECHO_TR_WC, ECHO_TR_WC_OUT), **theirs},
                               rounds.versus, warmup=1, absorb=1)
    table(f"   echo | tr | wc ({backend}): against sandlock", samples, "asyncsandlock")
    report.check(Target(f"echo|tr|wc {backend} vs sandlock", "sandlock", "asyncsandlock",
                        at_least=4.0), samples)


async def bench_bulk(rounds: Rounds, report: Report, backend: str) -> None:
    samples = await interleave({
        "asyncsandlock": ours(BULK, BULK_OUT),
        "sh (bare)": shell(BULK, BULK_OUT),
    }, rounds.bulk, warmup=1)
    table(f"2. 1 GiB through head | cat | cat | cat | wc ({backend})", samples, "sh (bare)")
    for name, values in samples.items():
        print(f"    {name}: {GIB / median(values) / 1e9:.2f} GB/s (median)")
    # Throughput ratio = inverse time ratio.
    report.check(Target(f"1 GiB cat|cat|cat {backend} throughput", "sh (bare)", "asyncsandlock",
                        at_least=0.9), samples)


async def run_backend(rounds: Rounds, report: Report, backend: str) -> None:
    print(f"\n== {backend} ==")
    await bench_small(rounds, report, backend)
    await bench_bulk(rounds, report, backend)


def main() -> int:
    args = parse_args("Pipeline benchmarks: asyncsandlock against sandlock and the shell.")
    rounds = Rounds(args.quick)
    banner("bench_pipeline", args.quick, sandlock is not None)
    report = Report()
    for backend in args.backend or ("asyncio", "trio"):
        anyio.run(run_backend, rounds, report, backend, backend=backend)
    report.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
