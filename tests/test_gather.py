"""Gather: several confined sources feed one confined consumer."""

from __future__ import annotations

import gc
import json
import os
import pathlib
import signal
import sys
from typing import Any

import anyio
import pytest

import asyncsandlock
from asyncsandlock import (
    DEVNULL,
    ExitReason,
    Gather,
    PipelineResult,
    PolicyError,
    Sandbox,
    SandboxedProcess,
    SpawnError,
)
from asyncsandlock._inputs import Inputs, parse
from asyncsandlock._plan import compile_plan

from conftest import PYTHON, system_sandbox, warmed

pytestmark = pytest.mark.anyio

REPO = pathlib.Path(asyncsandlock.__file__).resolve().parent.parent

# Reads every input by name and prints them as JSON.
CONSUMER = """
import json
from asyncsandlock import inputs
print(json.dumps({name: inputs[name].read().decode() for name in sorted(inputs)}))
"""


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    return warmed(system_sandbox())


@pytest.fixture(scope="module")
def py() -> Sandbox:
    """Runs this Python and imports asyncsandlock from this checkout."""
    return warmed(system_sandbox(fs_readable=[sys.base_prefix, sys.prefix, REPO]))


# -- the consumer's view -----------------------------------------------------


async def test_three_sources_read_by_a_python_consumer(sb: Sandbox, py: Sandbox,
                                                       no_leaks: None) -> None:
    res = await Gather({
        "code": sb.cmd(["echo", "print(1)"]),
        "data": sb.cmd(["sh", "-c", "seq 1 3"]),
        "notes": sb.cmd(["printf", "last"]),
    }, into=py.cmd([PYTHON, "-c", CONSUMER])).run(timeout=30)
    assert res.success, res.stages[-1].stderr
    assert isinstance(res, PipelineResult)
    assert json.loads(res.stdout or b"") == {"code": "print(1)\n", "data": "1\n2\n3\n",
                                             "notes": "last"}
    assert len(res.stages) == 4
    assert res.stages[-1].args[0] == PYTHON


async def test_fd_layout_and_environment(sb: Sandbox, no_leaks: None) -> None:
    """The last source is stdin, the others fds 3, 4, ... in order."""
    script = 'echo "$ASYNCSANDLOCK_INPUTS"; cat <&3; cat <&4; cat'
    res = await Gather({
        "a": sb.cmd(["echo", "A"]),
        "b": sb.cmd(["echo", "B"]),
        "c": sb.cmd(["echo", "C"]),
    }, into=sb.cmd(["sh", "-c", script])).run(timeout=10)
    assert res.stdout == b"a:3,b:4,c:0\nA\nB\nC\n"


async def test_a_source_may_be_a_pipeline(sb: Sandbox, py: Sandbox, no_leaks: None) -> None:
    res = await Gather({
        "upper": sb.cmd(["echo", "shout"]) | sb.cmd(["tr", "a-z", "A-Z"]),
        "count": sb.cmd(["seq", "1", "1000"]) | sb.cmd(["wc", "-l"]),
    }, into=py.cmd([PYTHON, "-c", CONSUMER])).run(timeout=30)
    assert res.success, res.stages[-1].stderr
    assert json.loads(res.stdout or b"") == {"upper": "SHOUT\n", "count": "1000\n"}
    assert [s.args[0] for s in res.stages] == ["echo", "tr", "seq", "wc", PYTHON]


async def test_into_may_be_a_pipeline(sb: Sandbox, no_leaks: None) -> None:
    res = await Gather({"x": sb.cmd(["echo", "x"]), "y": sb.cmd(["echo", "y"])},
                       into=sb.cmd(["sh", "-c", "cat <&3; cat"]) | sb.cmd(["tr", "a-z", "A-Z"])
                       ).run(timeout=10)
    assert res.stdout == b"X\nY\n"


async def test_many_sources(sb: Sandbox, py: Sandbox, no_leaks: None) -> None:
    """Regression test for the child's fd mapping overwriting the Landlock
    ruleset fd and the error pipe when it installs many fds."""
    sources = {f"s{i:02}": sb.cmd(["echo", str(i)]) for i in range(16)}
    res = await Gather(sources, into=py.cmd([PYTHON, "-c", CONSUMER])).run(timeout=30)
    assert res.success, res.stages[-1].stderr
    assert json.loads(res.stdout or b"") == {f"s{i:02}": f"{i}\n" for i in range(16)}


async def test_one_source(sb: Sandbox, no_leaks: None) -> None:
    res = await Gather({"only": sb.cmd(["echo", "1"])},
                       into=sb.cmd(["sh", "-c", 'echo "$ASYNCSANDLOCK_INPUTS"; cat'])
                       ).run(timeout=10)
    assert res.stdout == b"only:0\n1\n"


async def test_sources_in_parallel_move_bulk_data(sb: Sandbox, no_leaks: None) -> None:
    """Both sources write more than a pipe holds: the consumer reads them
    in turn, so a source must be able to block without stalling the rest."""
    size = 4_000_000
    res = await Gather({
        "a": sb.cmd(["head", "-c", str(size), "/dev/zero"]),
        "b": sb.cmd(["head", "-c", str(size), "/dev/zero"]),
    }, into=sb.cmd(["sh", "-c", "wc -c <&3; wc -c"])).run(timeout=30)
    assert res.stdout == f"{size}\n{size}\n".encode()


# -- outcomes ------------------------------------------------------------------


async def test_a_failing_source_fails_the_gather(sb: Sandbox, no_leaks: None) -> None:
    res = await Gather({
        "good": sb.cmd(["echo", "ok"]),
        "bad": sb.cmd(["sh", "-c", "echo half; echo bad source >&2; exit 4"]),
    }, into=sb.cmd(["sh", "-c", "cat <&3; cat"])).run(timeout=10)
    assert res.stdout == b"ok\nhalf\n"
    assert res.returncode == 0
    assert not res.success
    assert res.stages[1].returncode == 4
    assert res.stages[1].stderr == b"bad source\n"


async def test_consumer_stdout_and_stderr_targets(sb: Sandbox, no_leaks: None) -> None:
    res = await Gather({"a": sb.cmd(["echo", "a"])},
                       into=sb.cmd(["sh", "-c", "cat; echo e >&2"])).run(stdout=DEVNULL,
                                                                          timeout=10)
    assert res.stdout is None
    assert res.stderr == b"e\n"


async def test_timeout_kills_and_reaps_everything(sb: Sandbox, no_leaks: None) -> None:
    res = await Gather({
        "a": sb.cmd(["sleep", "30"]),
        "b": sb.cmd(["echo", "b"]) | sb.cmd(["sh", "-c", "cat; exec sleep 30"]),
    }, into=sb.cmd(["sh", "-c", "cat <&3; cat"])).run(timeout=0.5)
    assert [s.reason for s in res.stages] == [ExitReason.TIMEOUT, ExitReason.EXITED,
                                              ExitReason.TIMEOUT, ExitReason.TIMEOUT]
    assert not res.success


async def test_timeout_reports_every_running_stage_every_time(sb: Sandbox,
                                                               no_leaks: None) -> None:
    """Regression test: on a deadline the sources were killed first, and the
    consumer sometimes saw EOF and exited 0 before its own kill (about one
    run in five).  50 gathers, 10 at a time."""
    seen: list[list[tuple[ExitReason, int]]] = []

    async def one() -> None:
        res = await Gather({"a": sb.cmd(["sleep", "30"]),
                            "b": sb.cmd(["sleep", "30"]) | sb.cmd(["cat"])},
                           into=sb.cmd(["sh", "-c", "cat <&3; exec cat"])).run(timeout=0.05)
        seen.append([(stage.reason, stage.returncode) for stage in res.stages])

    for _ in range(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert seen == [[(ExitReason.TIMEOUT, -signal.SIGKILL)] * 4] * 50


async def test_outer_cancellation_kills_and_reaps(sb: Sandbox, no_leaks: None) -> None:
    gather = Gather({"a": sb.cmd(["sleep", "30"]), "b": sb.cmd(["sleep", "30"])},
                    into=sb.cmd(["cat"]))
    procs: tuple[SandboxedProcess, ...] = ()
    with anyio.move_on_after(0.5) as scope:
        async with anyio.create_task_group() as tg:
            procs = await tg.start(gather.run)
    assert scope.cancelled_caught
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 3
    assert all(p.reason is ExitReason.KILLED for p in procs)


async def test_consumer_that_fails_to_start(sb: Sandbox, no_leaks: None) -> None:
    gather = Gather({"a": sb.cmd(["sleep", "30"]), "b": sb.cmd(["sleep", "30"]) | sb.cmd(["cat"])},
                    into=sb.cmd(["no-such-consumer-asl"]))
    with pytest.raises(SpawnError) as info:
        await gather.run(timeout=10)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.stage == 3


async def test_failure_report_survives_many_sources(sb: Sandbox, no_leaks: None) -> None:
    """Regression test: with 16 fds to install, a consumer that may not exec
    still reports its failure (it used to exit 127 with the report lost)."""
    no_exec = Sandbox(fs_readable=["/etc"])
    await compile_plan(no_exec)
    sources = {f"s{i:02}": sb.cmd(["echo", str(i)]) for i in range(16)}
    with pytest.raises(SpawnError) as info:
        await Gather(sources, into=no_exec.cmd(["/usr/bin/cat"])).run(timeout=10)
    assert isinstance(info.value, PermissionError)
    assert (info.value.stage, info.value.step) == (16, "execve")
    del no_exec, info
    gc.collect()


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(("sources", "into", "field"), [
    ({}, "cat", "sources"),
    ([("a", "cat")], "cat", "sources"),
    ({"": "cat"}, "cat", "sources"),
    ({"a,b": "cat"}, "cat", "sources"),
    ({"a:1": "cat"}, "cat", "sources"),
    ({"a": ["cat"]}, "cat", "sources"),
    ({"a": "cat"}, ["cat"], "into"),
])
def test_gather_validates(sb: Sandbox, sources: Any, into: Any, field: str) -> None:
    def stage(x: Any) -> Any:
        return sb.cmd([x]) if isinstance(x, str) else x

    if isinstance(sources, dict):
        sources = {k: stage(v) for k, v in sources.items()}
    with pytest.raises(PolicyError) as info:
        Gather(sources, into=stage(into))
    assert info.value.field == field


async def test_consumer_stdin_is_taken(sb: Sandbox, no_leaks: None) -> None:
    with pytest.raises(PolicyError) as info:
        await Gather({"a": sb.cmd(["echo"])}, into=sb.cmd(["cat"], input=b"x")).run()
    assert info.value.field == "input"
    with pytest.raises(PolicyError) as info:
        await Gather({"a": sb.cmd(["echo"], stdout=DEVNULL)}, into=sb.cmd(["cat"])).run()
    assert info.value.field == "stdout"


# -- asyncsandlock.inputs --------------------------------------------------------


def test_parse() -> None:
    assert parse("a:3,b:4,c:0") == {"a": 3, "b": 4, "c": 0}
    assert parse("") == {}
    for bad in ("a", "a:", ":3", "a:x", "a:-1"):
        with pytest.raises(ValueError):
            parse(bad)


def test_inputs_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    read, write = os.pipe()
    os.write(write, b"payload")
    os.close(write)
    monkeypatch.setenv("ASYNCSANDLOCK_INPUTS", f"data:{read}")
    inputs = Inputs()
    assert list(inputs) == ["data"] and len(inputs) == 1 and "data" in inputs
    with inputs["data"] as f:
        assert inputs["data"] is f  # opened once
        assert f.read() == b"payload"
    with pytest.raises(KeyError, match="data"):
        inputs["missing"]
    assert "data" in repr(inputs)


def test_inputs_outside_a_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCSANDLOCK_INPUTS", raising=False)
    assert dict(Inputs()) == {}
    assert isinstance(asyncsandlock.inputs, Inputs)
