"""``max_output``: a bound on what run() and pipelines keep of each stream,
with the child never blocked, and ``on_output_limit="kill"``."""

from __future__ import annotations

import resource
import time

import pytest

from asyncsandlock import ExitReason, PolicyError, Sandbox

from conftest import system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

CAP = 1 << 20


def _peak_rss() -> int:
    """This process's peak resident memory, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def test_a_flood_is_cut_at_the_cap_and_the_timeout_holds() -> None:
    """``yes`` writes gigabytes a second: the run keeps 1 MiB, counts the
    rest, returns on time, and the caller's memory does not follow."""
    sb = system_sandbox(max_output=CAP)
    before = _peak_rss()
    started = time.monotonic()
    result = await sb.run(["yes"], timeout=1)
    elapsed = time.monotonic() - started
    assert result.reason is ExitReason.TIMEOUT
    assert len(result.stdout) == CAP and result.stdout.startswith(b"y\ny\n")
    # The child was not blocked: it went on writing what was dropped.
    assert result.stdout_truncated > 10 * CAP
    assert result.stderr_truncated == 0
    # ~1.2 s asked; the margin is for this loaded machine.
    assert elapsed < 1.5, elapsed
    assert _peak_rss() - before < 64 << 20


async def test_without_max_output_everything_is_kept() -> None:
    """Control: the same kind of output below no cap is kept whole."""
    result = await system_sandbox().run(["head", "-c", str(3 * CAP), "/dev/zero"], timeout=30)
    assert len(result.stdout) == 3 * CAP and result.stdout_truncated == 0


async def test_output_below_the_cap_is_not_truncated() -> None:
    result = await system_sandbox(max_output=CAP).run(["head", "-c", str(CAP), "/dev/zero"],
                                                     timeout=30)
    assert len(result.stdout) == CAP and result.stdout_truncated == 0
    assert result.success


async def test_truncate_lets_the_command_finish() -> None:
    result = await system_sandbox(max_output="1K").run(
        ["head", "-c", "100000", "/dev/zero"], timeout=30)
    assert result.success and len(result.stdout) == 1024
    assert result.stdout_truncated == 100000 - 1024


async def test_each_stream_has_its_own_cap() -> None:
    script = "head -c 5000 /dev/zero; head -c 3000 /dev/zero >&2"
    result = await system_sandbox(max_output=1000).run(["sh", "-c", script], timeout=30)
    assert (len(result.stdout), result.stdout_truncated) == (1000, 4000)
    assert (len(result.stderr), result.stderr_truncated) == (1000, 2000)


async def test_kill_stops_the_sandbox_with_output_limit() -> None:
    sb = system_sandbox(max_output=CAP, on_output_limit="kill")
    started = time.monotonic()
    result = await sb.run(["yes"], timeout=30)
    assert result.reason is ExitReason.OUTPUT_LIMIT
    assert result.returncode == -9 and not result.success
    assert len(result.stdout) == CAP and result.stdout_truncated > 0
    assert time.monotonic() - started < 5


async def test_kill_leaves_a_command_below_the_cap_alone() -> None:
    sb = system_sandbox(max_output=CAP, on_output_limit="kill")
    result = await sb.run(["echo", "hi"], timeout=30)
    assert result.success and result.stdout == b"hi\n"


async def test_pipeline_stages_are_capped_by_their_own_policy() -> None:
    source = system_sandbox().cmd(["sh", "-c", "yes | head -c 100000; echo oops >&2"])
    sink = system_sandbox(max_output=1000).cmd(["cat"])
    result = await (source | sink).run(timeout=30)
    assert result.success
    assert len(result.stdout) == 1000 and result.stages[-1].stdout_truncated == 99000
    assert result.stages[0].stderr == b"oops\n" and result.stages[0].stderr_truncated == 0


async def test_a_flooding_pipeline_is_killed_with_output_limit() -> None:
    source = system_sandbox().cmd(["yes"])
    sink = system_sandbox(max_output=CAP, on_output_limit="kill").cmd(["cat"])
    result = await (source | sink).run(timeout=30)
    assert result.stages[-1].reason is ExitReason.OUTPUT_LIMIT
    assert len(result.stdout) == CAP


@pytest.mark.parametrize(("field", "value"), [
    ("max_output", 0), ("max_output", -1), ("max_output", "12Q"), ("max_output", True),
    ("on_output_limit", "drop"), ("on_output_limit", None),
])
async def test_bad_output_limits_are_policy_errors(field: str, value: object) -> None:
    with pytest.raises(PolicyError, match=field):
        Sandbox(**{field: value})  # type: ignore[arg-type]
