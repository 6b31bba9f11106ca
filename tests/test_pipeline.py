"""Pipelines: independently confined stages joined by kernel pipes."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
from typing import Any

import anyio
import pytest

from asyncsandlock import (
    DEVNULL,
    PIPE,
    STDOUT,
    SYSTEM_READABLE,
    ExitReason,
    Pipeline,
    PipelineResult,
    PolicyError,
    Sandbox,
    SandboxedProcess,
    SandboxedProcessError,
    SpawnError,
    Stage,
    Subsystem,
)

from conftest import PYTHON, system_sandbox, warmed

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    return warmed(system_sandbox())


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    secret_dir = tmp_path_factory.mktemp("secret")
    key = secret_dir / "key"
    key.write_text("s3cret\n")
    return key


@pytest.fixture(scope="module")
def reader(secret: pathlib.Path) -> Sandbox:
    """May read the secret; nothing else beyond the system directories."""
    return warmed(system_sandbox(fs_readable=[secret.parent]))


@pytest.fixture(scope="module")
def no_exec() -> Sandbox:
    """May not execute anything at all."""
    return warmed(Sandbox(fs_readable=["/etc"]))


def _pipe_inodes(pid: int | str) -> set[str]:
    out = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
        if target.startswith("pipe:"):
            out.add(target)
    return out


# -- data flow -------------------------------------------------------------


async def test_echo_tr_wc(sb: Sandbox, no_leaks: None) -> None:
    upper = await (sb.cmd(["echo", "hello world"]) | sb.cmd(["tr", "a-z", "A-Z"])).run(timeout=10)
    assert upper.stdout == b"HELLO WORLD\n"
    res = await (sb.cmd(["echo", "hello world"]) | sb.cmd(["tr", "a-z", "A-Z"])
                 | sb.cmd(["wc", "-c"])).run(timeout=10)
    assert isinstance(res, PipelineResult)
    assert res.stdout == b"12\n"
    assert res.success and res.returncode == 0
    assert len(res.stages) == 3
    # The stages before the last wrote into a pipe, not to us.
    assert [s.stdout for s in res.stages[:2]] == [None, None]
    assert [s.args[0] for s in res.stages] == ["echo", "tr", "wc"]
    assert all(s.reason is ExitReason.EXITED for s in res.stages)


async def test_moves_200_mb_through_three_stages(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["head", "-c", "200000000", "/dev/zero"]) | sb.cmd(["cat"])
                 | sb.cmd(["wc", "-c"])).run(timeout=60)
    assert res.success
    assert res.stdout == b"200000000\n"


async def test_parent_holds_no_copy_of_the_pipes_between_stages(sb: Sandbox,
                                                                 no_leaks: None) -> None:
    """The data path is child to child: the parent closed its copies of the
    inter-stage pipes, so it holds only the stderr pipes and the last stdout."""
    pipeline = sb.cmd(["sleep", "30"]) | sb.cmd(["sleep", "30"]) | sb.cmd(["sleep", "30"])
    async with anyio.create_task_group() as tg:
        procs: tuple[SandboxedProcess, ...] = await tg.start(pipeline.run)
        ours = _pipe_inodes("self")
        stage_out = os.readlink(f"/proc/{procs[0].pid}/fd/1")
        assert stage_out == os.readlink(f"/proc/{procs[1].pid}/fd/0")
        assert stage_out not in ours
        assert os.readlink(f"/proc/{procs[1].pid}/fd/1") not in ours
        # The last stage's stdout and every stderr do come to us.
        assert os.readlink(f"/proc/{procs[2].pid}/fd/1") in ours
        assert all(os.readlink(f"/proc/{p.pid}/fd/2") in ours for p in procs)
        tg.cancel_scope.cancel()
    assert all(p.reason is ExitReason.KILLED for p in procs)


async def test_input_feeds_the_first_stage(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["tr", "a-z", "A-Z"]) | sb.cmd(["rev"])).run(input=b"abc\n", timeout=10)
    assert res.stdout == b"CBA\n"


async def test_stage_input_given_to_cmd(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["cat"], input=b"xyz") | sb.cmd(["wc", "-c"])).run(timeout=10)
    assert res.stdout == b"3\n"


async def test_stdin_fd_feeds_the_first_stage(sb: Sandbox, tmp_path: pathlib.Path,
                                              no_leaks: None) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"one\ntwo\n")
    with open(src, "rb") as f:
        res = await (sb.cmd(["cat"]) | sb.cmd(["wc", "-l"])).run(stdin=f, timeout=10)
    assert res.stdout == b"2\n"


async def test_stdout_and_stderr_targets_of_the_last_stage(sb: Sandbox, tmp_path: pathlib.Path,
                                                           no_leaks: None) -> None:
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        res = await (sb.cmd(["echo", "hi"]) | sb.cmd(["tr", "a-z", "A-Z"])).run(stdout=f,
                                                                               timeout=10)
    assert res.stdout is None
    assert out.read_bytes() == b"HI\n"
    res = await (sb.cmd(["echo", "hi"]) | sb.cmd(["sh", "-c", "cat; echo oops >&2"])).run(
        stderr=STDOUT, timeout=10)
    assert res.stdout == b"hi\noops\n"
    assert res.stderr is None
    res = await (sb.cmd(["echo", "hi"]) | sb.cmd(["cat"])).run(stdout=DEVNULL, timeout=10)
    assert res.stdout is None and res.success


# -- outcomes ----------------------------------------------------------------


async def test_pipefail(sb: Sandbox, no_leaks: None) -> None:
    """Regression test for sandlock hiding an early stage's failure."""
    res = await (sb.cmd(["sh", "-c", "echo data; exit 3"]) | sb.cmd(["cat"])).run(timeout=10)
    assert res.stdout == b"data\n"
    assert res.returncode == 0  # the last stage's
    assert not res.success
    assert res.stages[0].returncode == 3
    assert res.stages[1].success
    with pytest.raises(SandboxedProcessError) as info:
        res.check_returncode()
    assert info.value.returncode == 3
    assert "stage 0" in str(info.value)
    with pytest.raises(SandboxedProcessError):
        await (sb.cmd(["false"]) | sb.cmd(["cat"])).run(check=True, timeout=10)


async def test_failing_middle_stage(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["echo", "payload"])
                 | sb.cmd(["sh", "-c", "cat >/dev/null; echo broken >&2; exit 5"])
                 | sb.cmd(["wc", "-c"])).run(timeout=10)
    assert not res.success
    assert [s.returncode for s in res.stages] == [0, 5, 0]
    assert res.stages[1].stderr == b"broken\n"
    assert res.stdout == b"0\n"


async def test_stage_killed_by_signal(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["echo", "x"]) | sb.cmd(["sh", "-c", "kill -SEGV $$"])
                 | sb.cmd(["cat"])).run(timeout=10)
    assert res.stages[1].reason is ExitReason.SIGNALED
    assert res.stages[1].returncode == -signal.SIGSEGV
    assert not res.success


async def test_per_stage_stderr(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["sh", "-c", "echo a; echo err-a >&2"])
                 | sb.cmd(["sh", "-c", "cat; echo err-b >&2"])
                 | sb.cmd(["sh", "-c", "cat; echo err-c >&2"])).run(timeout=10)
    assert res.stdout == b"a\n"
    assert [s.stderr for s in res.stages] == [b"err-a\n", b"err-b\n", b"err-c\n"]
    assert res.stderr == b"err-c\n"


async def test_stage_stderr_target_from_cmd(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["sh", "-c", "echo out; echo err >&2"], stderr=STDOUT)
                 | sb.cmd(["cat"])).run(timeout=10)
    assert res.stdout == b"out\nerr\n"
    assert res.stages[0].stderr is None


async def test_each_stage_has_its_own_policy(sb: Sandbox, reader: Sandbox, secret: pathlib.Path,
                                             no_leaks: None) -> None:
    """A file only stage 0 may read stays out of reach of stage 1."""
    other = sb
    res = await (reader.cmd(["cat", str(secret)])
                 | other.cmd(["sh", "-c", f'cat; cat "{secret}"'])).run(timeout=10)
    assert res.stages[0].success
    assert res.stdout == b"s3cret\n"  # from the pipe, once
    assert res.stages[1].returncode != 0
    assert b"Permission denied" in (res.stages[1].stderr or b"")
    # The other way round: stage 1 holds the right, stage 0 does not.
    res = await (other.cmd(["cat", str(secret)]) | reader.cmd(["cat"])).run(timeout=10)
    assert res.stages[0].returncode != 0 and res.stdout == b""


async def test_stages_are_separate_sandboxes(sb: Sandbox, no_leaks: None) -> None:
    """Each stage is its own process group: one stage cannot signal another."""
    # Stage 0 keeps writing until stage 1 is gone (then SIGPIPE ends it).
    res = await (sb.cmd(["sh", "-c", "echo $$; while echo .; do sleep 0.05; done"])
                 | sb.cmd(["sh", "-c", 'read pid; kill -0 "$pid" && echo reached'])).run(
        timeout=10)
    assert b"reached" not in (res.stdout or b"")
    assert res.stages[1].returncode != 0
    assert res.stages[0].reason is not ExitReason.TIMEOUT


# -- timeout, cancellation, failure to start ---------------------------------


async def test_timeout_kills_and_reaps_every_stage(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["sleep", "30"]) | sb.cmd(["sleep", "30"])
                 | sb.cmd(["sleep", "30"])).run(timeout=0.5)
    assert [s.reason for s in res.stages] == [ExitReason.TIMEOUT] * 3
    assert [s.returncode for s in res.stages] == [-signal.SIGKILL] * 3
    assert not res.success


async def test_timeout_reports_what_each_stage_did(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["echo", "quick"]) | sb.cmd(["sh", "-c", "cat; exec sleep 30"])).run(
        timeout=0.5)
    assert res.stages[0].reason is ExitReason.EXITED and res.stages[0].success
    assert res.stages[1].reason is ExitReason.TIMEOUT
    assert res.stdout == b"quick\n"  # the output captured so far


async def test_timeout_kills_what_a_stage_left_behind(sb: Sandbox, no_leaks: None) -> None:
    res = await (sb.cmd(["sh", "-c", "sleep 30 & sleep 30"]) | sb.cmd(["cat"])).run(timeout=0.5)
    assert [s.reason for s in res.stages] == [ExitReason.TIMEOUT] * 2


async def test_leftovers_of_a_stage_do_not_hold_the_pipe_open(sb: Sandbox,
                                                              no_leaks: None) -> None:
    """A background process still holds stage 0's stdout when its main process
    exits; it is killed then, so stage 1 sees EOF without waiting for it."""
    res = await (sb.cmd(["sh", "-c", "sleep 30 & echo hi"]) | sb.cmd(["cat"])).run(timeout=20)
    assert res.success
    assert res.stdout == b"hi\n"


async def test_outer_cancellation_kills_and_reaps_then_reraises(sb: Sandbox,
                                                                no_leaks: None) -> None:
    pipeline = sb.cmd(["sleep", "30"]) | sb.cmd(["sleep", "30"]) | sb.cmd(["sleep", "30"])
    procs: tuple[SandboxedProcess, ...] = ()
    with anyio.move_on_after(0.5) as scope:
        async with anyio.create_task_group() as tg:
            procs = await tg.start(pipeline.run)
    assert scope.cancelled_caught
    assert len(procs) == 3
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    assert all(p.reason is ExitReason.KILLED for p in procs)


async def test_cancellation_propagates(sb: Sandbox, no_leaks: None) -> None:
    class Stop(Exception):
        pass

    async def stop_soon() -> None:
        await anyio.sleep(0.3)
        raise Stop

    with pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_soon)
            await (sb.cmd(["sleep", "30"]) | sb.cmd(["cat"])).run()
    assert info.group_contains(Stop)


async def test_missing_command_kills_the_started_stages(sb: Sandbox, no_leaks: None) -> None:
    pipeline = sb.cmd(["sleep", "30"]) | sb.cmd(["sleep", "30"]) \
        | sb.cmd(["no-such-command-asl"])
    with pytest.raises(SpawnError) as info:
        await pipeline.run(timeout=10)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.stage == 2
    assert info.value.step == "execve"
    assert str(info.value).startswith("stage 2: ")


async def test_confinement_refusal_names_the_stage(sb: Sandbox, no_exec: Sandbox,
                                                   no_leaks: None) -> None:
    """The command exists but its own sandbox may not execute it: the child
    fails at execve, after stage 0 is already running."""
    with pytest.raises(SpawnError) as info:
        await (sb.cmd(["sleep", "30"]) | no_exec.cmd(["/usr/bin/cat"])).run(timeout=10)
    assert isinstance(info.value, PermissionError)
    assert info.value.stage == 1
    assert info.value.step == "execve"


# -- Stage.run and composition -----------------------------------------------


async def test_stage_run_is_sandbox_run(sb: Sandbox, no_leaks: None) -> None:
    stage = sb.cmd(["sh", "-c", "cat; echo e >&2; exit 2"], input=b"in")
    res = await stage.run(timeout=10)
    assert (res.stdout, res.stderr, res.returncode) == (b"in", b"e\n", 2)
    res = await stage.run(input=b"other")  # run() arguments override cmd()'s
    assert res.stdout == b"other"
    with pytest.raises(SandboxedProcessError):
        await stage.run(check=True)
    res = await sb.cmd(["sleep", "30"]).run(timeout=0.3)
    assert res.reason is ExitReason.TIMEOUT


def test_composition(sb: Sandbox) -> None:
    a, b, c, d = (sb.cmd([name]) for name in ("a", "b", "c", "d"))
    assert isinstance(a, Stage)
    assert (a | b).stages == (a, b)
    assert ((a | b) | c).stages == (a, b, c)
    assert (a | (b | c)).stages == (a, b, c)
    assert ((a | b) | (c | d)).stages == (a, b, c, d)
    assert Pipeline([a, b, c]).stages == (a, b, c)
    assert "'a' | 'b'" in repr(a | b)
    assert a.args == ("a",) and a.sandbox is sb
    with pytest.raises(TypeError):
        a | "b"  # type: ignore[operator]
    with pytest.raises(TypeError):
        Stage()


@pytest.mark.parametrize("kwargs", [
    {"nope": 1},
    {"timeout": -1},
    {"env": {"A": 1}},
    {"cwd": "/does/not/exist"},
    {"handlers": [object()]},
    {"input": "text"},
    {"input": b"x", "stdin": PIPE},
])
def test_cmd_validates_its_arguments(sb: Sandbox, kwargs: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        sb.cmd(["cat"], **kwargs)


def test_cmd_validates_args(sb: Sandbox) -> None:
    with pytest.raises(PolicyError):
        sb.cmd("cat")
    with pytest.raises(PolicyError):
        sb.cmd([])


def test_pipeline_validates_its_stages(sb: Sandbox) -> None:
    with pytest.raises(PolicyError):
        Pipeline([])
    with pytest.raises(PolicyError):
        Pipeline([sb.cmd(["cat"]), ["cat"]])  # type: ignore[list-item]
    with pytest.raises(PolicyError):
        Pipeline(sb.cmd(["cat"]))  # type: ignore[arg-type]


@pytest.mark.parametrize(("pipeline", "run_kwargs", "field"), [
    (lambda sb: sb.cmd(["cat"]) | sb.cmd(["cat"], input=b"x"), {}, "input"),
    (lambda sb: sb.cmd(["cat"]) | sb.cmd(["cat"], stdin=DEVNULL), {}, "stdin"),
    (lambda sb: sb.cmd(["cat"], stdout=DEVNULL) | sb.cmd(["cat"]), {}, "stdout"),
    (lambda sb: sb.cmd(["cat"], timeout=1) | sb.cmd(["cat"]), {}, "timeout"),
    (lambda sb: sb.cmd(["cat"]) | sb.cmd(["cat"], check=True), {}, "check"),
    (lambda sb: sb.cmd(["cat"], input=b"x") | sb.cmd(["cat"]), {"input": b"y"}, "input"),
    (lambda sb: sb.cmd(["cat"], input=b"x") | sb.cmd(["cat"]), {"stdin": 0}, "input"),
    (lambda sb: sb.cmd(["cat"]) | sb.cmd(["cat"], stdout=DEVNULL), {"stdout": DEVNULL},
     "stdout"),
    (lambda sb: sb.cmd(["cat"]) | sb.cmd(["cat"]), {"timeout": 0}, "timeout"),
    (lambda sb: sb.cmd(["cat"]) | sb.cmd(["cat"]), {"input": "text"}, "input"),
])
async def test_bad_wiring_fails_before_any_process(sb: Sandbox, no_leaks: None, pipeline: Any,
                                                   run_kwargs: dict[str, Any],
                                                   field: str) -> None:
    with pytest.raises(PolicyError) as info:
        await pipeline(sb).run(**run_kwargs)
    assert info.value.field == field


async def test_a_stage_may_run_in_many_pipelines_at_once(sb: Sandbox, no_leaks: None) -> None:
    upper = sb.cmd(["tr", "a-z", "A-Z"])
    results: dict[int, bytes | None] = {}

    async def one(n: int) -> None:
        res = await (sb.cmd(["echo", f"run{n}"]) | upper).run(timeout=10)
        results[n] = res.stdout

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(one, n)
    assert results == {n: f"RUN{n}\n".encode() for n in range(8)}


async def test_single_stage_pipeline(sb: Sandbox, no_leaks: None) -> None:
    res = await Pipeline([sb.cmd(["echo", "alone"])]).run(timeout=10)
    assert res.stdout == b"alone\n" and len(res.stages) == 1


async def test_protections_are_reported_per_stage() -> None:
    res = await (Sandbox(fs_readable=SYSTEM_READABLE).cmd(["echo"])
                 | Sandbox(fs_readable=SYSTEM_READABLE).cmd(["cat"])).run(timeout=10)
    for stage in res.stages:
        assert stage.protections[Subsystem.LANDLOCK].value == "active"
        assert stage.protections[Subsystem.SECCOMP].value == "active"


def test_example_runs() -> None:
    """examples/pipeline.py checks itself on both backends."""
    example = pathlib.Path(__file__).resolve().parent.parent / "examples" / "pipeline.py"
    proc = subprocess.run([PYTHON, str(example)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks held" in proc.stdout
