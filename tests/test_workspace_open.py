"""``Sandbox.open()`` with a workspace: the process lists its changes and
applies ``on_exit`` when it is waited for (``wait()``, ``aclose()``,
leaving ``async with``); cancellation and ``aclose`` leave no mount, copy,
fd or child behind.  Both mechanisms, both backends."""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
from collections.abc import Iterator

import anyio
import pytest
from test_workspace import EDIT, EXPECTED, _kinds, _mounts, _snapshot

from asyncsandlock import Protection, Sandbox, Subsystem, WorkspaceConflict

from conftest import past_the_tick, system_sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="workspaces as root (an unprivileged caller: "
                                       "tests/test_workspace_userns.py)")


@pytest.fixture
def project(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    for name, text in (("keep.txt", "keep\n"), ("edit.txt", "old\n"), ("gone.txt", "bye\n"),
                       ("src/a.py", "a = 1\n"), ("src/b.py", "b = 2\n")):
        (root / name).write_text(text)
    past_the_tick()
    return root


def _left(project: pathlib.Path) -> set[str]:
    return {n for place in (project.parent, pathlib.Path(tempfile.gettempdir()))
            for n in os.listdir(place) if ".asyncsandlock-" in n}


@pytest.fixture
def clean_host(no_leaks: None, project: pathlib.Path) -> Iterator[None]:
    mounts = _mounts()
    yield
    assert _mounts() == mounts, "our mount table changed"
    assert _left(project) == set(), "a layer was left behind"


def sandbox(project: pathlib.Path, mechanism: str, **kwargs: object) -> Sandbox:
    return system_sandbox(workdir=project, workdir_mechanism=mechanism, **kwargs)


@pytest.mark.anyio
async def test_open_commits_when_waited_for(project: pathlib.Path, mechanism: str,
                                            clean_host: None) -> None:
    async with await sandbox(project, mechanism).open(["sh", "-c", EDIT]) as proc:
        assert proc.changes is None and proc.workspace is None  # not yet
        assert proc.protections[Subsystem.WORKSPACE_OVERLAY if mechanism == "overlay"
                                else Subsystem.WORKSPACE_SNAPSHOT] is Protection.ACTIVE
        assert (project / "edit.txt").read_text() == "old\n"
        assert await proc.wait() == 0
    assert _kinds(proc.changes) == EXPECTED and proc.workspace is None
    assert (project / "edit.txt").read_text() == "new\n"
    assert not (project / "gone.txt").exists()
    result = await proc.result()
    assert result.changes == proc.changes


@pytest.mark.anyio
async def test_open_streams_and_keeps(project: pathlib.Path, mechanism: str,
                                      clean_host: None) -> None:
    before = _snapshot(project)
    proc = await sandbox(project, mechanism, on_exit="keep").open(
        ["sh", "-c", "cat > fed.txt; cat fed.txt"], stderr=subprocess.DEVNULL)
    async with proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(b"through the pipe\n")
        await proc.stdin.aclose()
        assert await proc.stdout.receive() == b"through the pipe\n"
        await proc.wait()
    workspace = proc.workspace
    assert workspace is not None and workspace.mechanism == mechanism
    assert _kinds(proc.changes) == {"fed.txt": ("added", 17)}
    assert _snapshot(project) == before
    await workspace.commit()
    assert (project / "fed.txt").read_text() == "through the pipe\n"


@pytest.mark.anyio
async def test_a_failed_or_killed_process_is_aborted(project: pathlib.Path, mechanism: str,
                                                      clean_host: None) -> None:
    before = _snapshot(project)
    failed = await sandbox(project, mechanism).open(["sh", "-c", EDIT + "; exit 3"])
    assert await failed.wait() == 3
    assert _kinds(failed.changes) == EXPECTED
    await failed.aclose()
    killed = await sandbox(project, mechanism).open(["sh", "-c", EDIT + "; sleep 30"])
    await anyio.sleep(0.3)
    killed.kill()
    await killed.aclose()
    assert killed.returncode == -9 and killed.changes is not None
    assert _snapshot(project) == before


@pytest.mark.anyio
async def test_cancelled_inside_async_with_nothing_is_left(project: pathlib.Path,
                                                          mechanism: str,
                                                          clean_host: None) -> None:
    before = _snapshot(project)
    for on_exit in ("commit", "keep"):
        with anyio.move_on_after(0.5) as scope:
            async with await sandbox(project, mechanism, on_exit=on_exit).open(
                    ["sh", "-c", "echo x > edit.txt; rm keep.txt; sleep 30"]) as proc:
                await proc.wait()
        assert scope.cancelled_caught
        assert proc.returncode == -9
        if proc.workspace is not None:  # keep: the caller's to drop
            await proc.workspace.abort()
    assert _snapshot(project) == before


@pytest.mark.anyio
async def test_a_cancelled_wait_settles_nothing_until_the_next(project: pathlib.Path,
                                                              mechanism: str,
                                                              clean_host: None) -> None:
    proc = await sandbox(project, mechanism).open(["sh", "-c", "sleep 0.5; echo n > new"])
    with anyio.move_on_after(0.05):
        await proc.wait()
    assert proc.returncode is None and proc.changes is None
    assert await proc.wait() == 0
    assert _kinds(proc.changes) == {"new": ("added", 2)}
    assert (project / "new").read_text() == "n\n"
    await proc.aclose()


@pytest.mark.anyio
async def test_a_conflict_comes_out_of_wait(project: pathlib.Path, mechanism: str,
                                            clean_host: None) -> None:
    proc = await sandbox(project, mechanism).open(["sh", "-c", "sleep 0.3; echo m > edit.txt"])
    (project / "edit.txt").write_text("theirs\n")
    with pytest.raises(WorkspaceConflict) as info:
        await proc.wait()
    assert info.value.paths == ("edit.txt",)
    assert proc.workspace is info.value.workspace and proc.returncode == 0
    assert await proc.wait() == 0  # settled once
    await proc.workspace.abort()
    await proc.aclose()
    assert (project / "edit.txt").read_text() == "theirs\n"
    del info
