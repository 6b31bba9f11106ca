"""Copy-on-write workspaces: ``workdir``, ``on_exit``, ``max_disk``, ``dry_run``.

Every test checks that nothing is left behind: no layer in the temporary
directory, no mount in our namespace (the ``clean_host`` fixture), and with
``no_leaks`` no fd, child or thread.
"""

from __future__ import annotations

import gc
import os
import pathlib
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import asyncsandlock
from asyncsandlock import (
    Change,
    Protection,
    Subsystem,
    WorkspaceConflict,
)

from conftest import system_sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="workspaces need CAP_SYS_ADMIN (docs/workspaces.md)")


def _layers() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir())
            if name.startswith("asyncsandlock-workspace-")}


def _mounts() -> str:
    return pathlib.Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def clean_host(no_leaks: None) -> Iterator[None]:
    """Fail if a test leaves a layer directory or a mount behind."""
    layers, mounts = _layers(), _mounts()
    yield
    assert _layers() - layers == set(), "a layer directory was left behind"
    assert _mounts() == mounts, "our mount table changed"


@pytest.fixture
def project(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "keep.txt").write_text("keep\n")
    (root / "edit.txt").write_text("old\n")
    (root / "gone.txt").write_text("bye\n")
    (root / "src" / "a.py").write_text("a = 1\n")
    (root / "src" / "b.py").write_text("b = 2\n")
    # A file changed in the clock tick a run starts in is a conflict (see
    # _workspace.py): let the tick pass.
    time.sleep(0.02)
    return root


def _snapshot(root: pathlib.Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


EDIT = ("echo new > edit.txt; rm gone.txt; echo hi > added.txt; mkdir -p out/deep; "
        "echo x > out/deep/x.bin; ln -s keep.txt link; rm -r src; mkdir src; "
        "echo c > src/c.py")
EXPECTED = {
    "added.txt": ("added", 3), "edit.txt": ("modified", 4), "gone.txt": ("deleted", 0),
    "link": ("added", len("keep.txt")), "out": ("added", 0), "out/deep": ("added", 0),
    "out/deep/x.bin": ("added", 2), "src/a.py": ("deleted", 0), "src/b.py": ("deleted", 0),
    "src/c.py": ("added", 2),
}


def _kinds(changes: tuple[Change, ...] | None) -> dict[str, tuple[str, int]]:
    assert changes is not None
    return {c.path: (c.kind, c.size) for c in changes}


# -- the change set, commit, abort, dry run -----------------------------------


@pytest.mark.anyio
async def test_changes_are_listed_and_committed(project: pathlib.Path, clean_host: None) -> None:
    result = await system_sandbox(workdir=project).run(["sh", "-c", EDIT])
    assert result.success, result.stderr
    assert _kinds(result.changes) == EXPECTED
    assert [c.path for c in result.changes or ()] == sorted(
        EXPECTED, key=lambda p: p.split("/"))
    modes = {c.path: c.mode for c in result.changes or ()}
    assert stat.S_ISDIR(modes["out"]) and stat.S_ISLNK(modes["link"])
    assert stat.S_ISREG(modes["edit.txt"]) and stat.S_ISREG(modes["gone.txt"])
    assert result.workspace is None  # on_exit="commit": already done
    assert result.protections[Subsystem.WORKSPACE_OVERLAY] is Protection.ACTIVE
    assert (project / "edit.txt").read_text() == "new\n"
    assert not (project / "gone.txt").exists()
    assert (project / "out" / "deep" / "x.bin").read_text() == "x\n"
    assert os.readlink(project / "link") == "keep.txt"
    assert sorted(os.listdir(project / "src")) == ["c.py"]
    assert (project / "keep.txt").read_text() == "keep\n"
    assert not [n for n in os.listdir(project) if ".asyncsandlock-" in n]


@pytest.mark.anyio
async def test_a_failed_command_is_aborted_by_default(project: pathlib.Path,
                                                      clean_host: None) -> None:
    before = _snapshot(project)
    result = await system_sandbox(workdir=project).run(["sh", "-c", EDIT + "; exit 3"])
    assert result.returncode == 3
    assert _kinds(result.changes) == EXPECTED  # listed all the same
    assert _snapshot(project) == before


@pytest.mark.anyio
async def test_on_exit_abort_drops_the_changes(project: pathlib.Path, clean_host: None) -> None:
    before = _snapshot(project)
    result = await system_sandbox(workdir=project, on_exit="abort").run(["sh", "-c", EDIT])
    assert result.success and _kinds(result.changes) == EXPECTED
    assert _snapshot(project) == before


@pytest.mark.anyio
async def test_keep_hands_the_workspace_to_the_caller(project: pathlib.Path,
                                                      clean_host: None) -> None:
    sandbox = system_sandbox(workdir=project, on_exit="keep")
    before = _snapshot(project)
    first = await sandbox.run(["sh", "-c", EDIT])
    assert first.workspace is not None and first.workspace.state == "open"
    assert first.workspace.changes == first.changes
    assert _snapshot(project) == before  # nothing until the caller says so
    await first.workspace.commit()
    assert first.workspace.state == "committed"
    assert (project / "edit.txt").read_text() == "new\n"
    await first.workspace.commit()  # a no-op once done
    second = await sandbox.run(["sh", "-c", "echo again > edit.txt"])
    assert second.workspace is not None
    await second.workspace.abort()
    assert second.workspace.state == "aborted"
    assert (project / "edit.txt").read_text() == "new\n"
    with pytest.raises(asyncsandlock.SandboxError, match="aborted"):
        await second.workspace.commit()


@pytest.mark.anyio
async def test_dry_run_lists_and_never_touches_workdir(project: pathlib.Path,
                                                       clean_host: None) -> None:
    before = _snapshot(project)
    for on_exit in ("commit", "keep"):
        result = await system_sandbox(workdir=project, on_exit=on_exit).run(
            ["sh", "-c", EDIT], dry_run=True)
        assert _kinds(result.changes) == EXPECTED
        assert result.workspace is None
        assert _snapshot(project) == before


@pytest.mark.anyio
async def test_no_workdir_no_changes(clean_host: None) -> None:
    result = await system_sandbox().run(["true"])
    assert result.changes is None and result.workspace is None
    assert result.protections[Subsystem.WORKSPACE_OVERLAY] is Protection.NOT_REQUESTED


@pytest.mark.anyio
async def test_the_command_starts_in_workdir_and_sees_it_as_it_is(
        project: pathlib.Path, clean_host: None) -> None:
    project.chmod(0o751)
    result = await system_sandbox(workdir=project).run(
        ["sh", "-c", "pwd; stat -c %a .; cat keep.txt"])
    assert result.stdout == f"{project}\n751\nkeep\n".encode()
    assert result.changes == ()


# -- a real project -------------------------------------------------------------


def _git(root: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.anyio
async def test_a_git_commit_in_the_workspace(project: pathlib.Path, clean_host: None) -> None:
    _git(project, "init", "-q", "-b", "main")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "first")
    head = _git(project, "rev-parse", "HEAD")
    sandbox = system_sandbox(workdir=project, on_exit="keep",
                             env={"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(project)})
    script = ("echo new > edit.txt && git add edit.txt && "
              "git -c user.name=s -c user.email=s@s commit -q -m second && git log --oneline")
    result = await sandbox.run(["sh", "-c", script])
    assert result.success, result.stderr
    assert result.workspace is not None
    paths = {c.path for c in result.changes or ()}
    assert {"edit.txt", ".git/index", ".git/refs/heads/main"} <= paths
    assert any(p.startswith(".git/objects/") for p in paths)
    assert _git(project, "rev-parse", "HEAD") == head  # not yet
    await result.workspace.commit()
    assert _git(project, "log", "--format=%s") == "second\nfirst\n"
    assert _git(project, "status", "--porcelain") == ""
    _git(project, "fsck", "--strict")


# -- max_disk -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_max_disk_gives_enospc_and_commits_what_fits(project: pathlib.Path,
                                                           clean_host: None) -> None:
    sandbox = system_sandbox(workdir=project, max_disk="1M", on_exit="keep")
    result = await sandbox.run(
        ["sh", "-c", "echo small > small.txt; head -c 3000000 /dev/zero > big.bin; echo $?"])
    assert b"No space left on device" in (result.stderr or b"")
    assert result.stdout == b"1\n"
    sizes = dict((c.path, c.size) for c in result.changes or ())
    assert sizes["small.txt"] == 6 and sizes["big.bin"] <= 1 << 20
    assert result.workspace is not None
    await result.workspace.commit()  # copied from the tmpfs, not renamed
    assert (project / "small.txt").read_text() == "small\n"
    # Control: without max_disk the same write fits.
    free = await system_sandbox(workdir=project, on_exit="abort").run(
        ["sh", "-c", "head -c 3000000 /dev/zero > big.bin; echo $?"])
    assert free.stdout == b"0\n"


# -- conflicts, concurrency -------------------------------------------------------


@pytest.mark.anyio
async def test_a_conflicting_change_is_an_error_not_an_overwrite(
        project: pathlib.Path, clean_host: None) -> None:
    result = await system_sandbox(workdir=project, on_exit="keep").run(
        ["sh", "-c", "echo mine > edit.txt; echo mine > keep.txt; echo new > fresh.txt"])
    assert result.workspace is not None
    (project / "edit.txt").write_text("theirs\n")
    (project / "fresh.txt").write_text("theirs too\n")
    with pytest.raises(WorkspaceConflict) as info:
        await result.workspace.commit()
    assert info.value.paths == ("edit.txt", "fresh.txt")
    assert "edit.txt" in str(info.value)
    # Nothing was written, keep.txt included.
    assert (project / "keep.txt").read_text() == "keep\n"
    assert (project / "edit.txt").read_text() == "theirs\n"
    assert result.workspace.state == "open"
    await result.workspace.abort()


@pytest.mark.anyio
async def test_a_conflict_under_on_exit_commit_keeps_the_workspace(
        project: pathlib.Path, clean_host: None) -> None:
    sandbox = system_sandbox(workdir=project)
    caught: list[WorkspaceConflict] = []

    async def run(*, task_status: Any) -> None:
        try:
            await sandbox.run(["sh", "-c", "sleep 0.2; echo mine > edit.txt; echo n > new"],
                              task_status=task_status)
        except WorkspaceConflict as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        await tg.start(run)  # the command is running: its layer exists
        (project / "edit.txt").write_text("theirs\n")
    (conflict,) = caught
    assert conflict.paths == ("edit.txt",)
    assert conflict.result is not None and conflict.result.success
    assert _kinds(conflict.result.changes) == {"edit.txt": ("modified", 5), "new": ("added", 2)}
    assert not (project / "new").exists()
    assert conflict.workspace.state == "open"
    await conflict.workspace.abort()
    assert (project / "edit.txt").read_text() == "theirs\n"
    # The exception's traceback holds the policy (and its ruleset fd) in a cycle.
    caught.clear()
    del conflict
    gc.collect()


@pytest.mark.anyio
async def test_concurrent_runs_get_layers_of_their_own(project: pathlib.Path,
                                                       clean_host: None) -> None:
    sandbox = system_sandbox(workdir=project, on_exit="keep")
    results: dict[str, asyncsandlock.Result] = {}

    async def one(name: str) -> None:
        results[name] = await sandbox.run(
            ["sh", "-c", f"sleep 0.2; echo {name} > edit.txt; echo {name} > {name}.txt; "
                         "ls"])

    async with anyio.create_task_group() as tg:
        for name in ("left", "right"):
            tg.start_soon(one, name)
    for name, other in (("left", "right"), ("right", "left")):
        result = results[name]
        assert _kinds(result.changes) == {"edit.txt": ("modified", len(name) + 1),
                                          f"{name}.txt": ("added", len(name) + 1)}
        assert f"{other}.txt".encode() not in (result.stdout or b"")
    left, right = results["left"].workspace, results["right"].workspace
    assert left is not None and right is not None
    await left.commit()
    with pytest.raises(WorkspaceConflict) as info:  # left changed edit.txt meanwhile
        await right.commit()
    assert info.value.paths == ("edit.txt",)
    await right.abort()
    assert (project / "edit.txt").read_text() == "left\n"
    assert not (project / "right.txt").exists()
    del info  # the conflict's traceback holds the policy in a cycle
    gc.collect()
