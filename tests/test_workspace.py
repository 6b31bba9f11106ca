"""Copy-on-write workspaces: ``workdir``, ``on_exit``, ``max_disk``, ``dry_run``.

Every test checks that nothing is left behind: no mount in our namespace,
no fd (a layer is a tmpfs that only our fd holds), child or thread (the
``clean_host`` fixture).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import os
import pathlib
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import asyncsandlock
from asyncsandlock import (
    Change,
    PolicyError,
    Protection,
    Sandbox,
    Subsystem,
    WorkspaceConflict,
    _workspace,
)

from conftest import past_the_tick, system_sandbox


@contextlib.contextmanager
def cancelled_at_checkpoint(monkeypatch: pytest.MonkeyPatch,
                            n: int) -> Iterator[anyio.CancelScope]:
    """A cancel scope cancelled at the workspace's ``n``-th checkpoint (its
    copy, diff and commit take one every few files); the patch is undone on
    the way out."""
    calls = 0
    real = _workspace._checkpoint

    async def checkpoint() -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            scope.cancel()
        await real()

    monkeypatch.setattr(_workspace, "_checkpoint", checkpoint)
    try:
        with anyio.CancelScope() as scope:
            yield scope
    finally:
        monkeypatch.undo()

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="workspaces need CAP_SYS_ADMIN (docs/workspaces.md)")


def _mounts() -> str:
    return pathlib.Path("/proc/self/mountinfo").read_text()


#: A snapshot's private directory: ``.NAME.asyncsandlock-snapshot-uUID``.
TAG = ".asyncsandlock-snapshot-"


@pytest.fixture
def clean_host(no_leaks: None, tmp_path: pathlib.Path) -> Iterator[None]:
    """Fail if a test leaves a mount, an fd (a layer is held by its tmpfs's
    fd alone), a file in the temporary directory, a snapshot's copy beside
    the workdir, or a child behind."""
    temp, mounts = set(os.listdir(tempfile.gettempdir())), _mounts()
    yield
    assert _mounts() == mounts, "our mount table changed"
    # Ours are hidden (".NAME.asyncsandlock-..."); other tenants of this
    # machine (a pip build of this package) may make others meanwhile.
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - temp if ".asyncsandlock-" in n}
    assert left == set()
    assert not [n for n in os.listdir(tmp_path) if TAG in n], "a snapshot was left behind"


def ws(mechanism: str, **kwargs: Any) -> Sandbox:
    """A policy with the system readable and a workspace made by
    ``mechanism`` (``workdir_mechanism``)."""
    return system_sandbox(workdir_mechanism=mechanism, **kwargs)


def _made_by(result: asyncsandlock.Result, mechanism: str) -> None:
    """``result``'s protections name the workspace's mechanism."""
    if mechanism == "overlay":
        assert result.protections[Subsystem.WORKSPACE_OVERLAY] is Protection.ACTIVE
        assert result.protections[Subsystem.WORKSPACE_SNAPSHOT] is Protection.NOT_REQUESTED
    else:
        assert result.protections[Subsystem.WORKSPACE_SNAPSHOT] is Protection.ACTIVE
        assert result.protections[Subsystem.WORKSPACE_OVERLAY] is Protection.NOT_REQUESTED


@pytest.fixture
def project(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "keep.txt").write_text("keep\n")
    (root / "edit.txt").write_text("old\n")
    (root / "gone.txt").write_text("bye\n")
    (root / "src" / "a.py").write_text("a = 1\n")
    (root / "src" / "b.py").write_text("b = 2\n")
    past_the_tick()
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
async def test_changes_are_listed_and_committed(project: pathlib.Path, clean_host: None,
                                                mechanism: str) -> None:
    result = await ws(mechanism, workdir=project).run(["sh", "-c", EDIT])
    assert result.success, result.stderr
    assert _kinds(result.changes) == EXPECTED
    assert [c.path for c in result.changes or ()] == sorted(
        EXPECTED, key=lambda p: p.split("/"))
    modes = {c.path: c.mode for c in result.changes or ()}
    assert stat.S_ISDIR(modes["out"]) and stat.S_ISLNK(modes["link"])
    assert stat.S_ISREG(modes["edit.txt"]) and stat.S_ISREG(modes["gone.txt"])
    assert result.workspace is None  # on_exit="commit": already done
    _made_by(result, mechanism)
    assert (project / "edit.txt").read_text() == "new\n"
    assert not (project / "gone.txt").exists()
    assert (project / "out" / "deep" / "x.bin").read_text() == "x\n"
    assert os.readlink(project / "link") == "keep.txt"
    assert sorted(os.listdir(project / "src")) == ["c.py"]
    assert (project / "keep.txt").read_text() == "keep\n"
    assert not [n for n in os.listdir(project) if ".asyncsandlock-" in n]


@pytest.mark.anyio
async def test_a_failed_command_is_aborted_by_default(project: pathlib.Path,
                                                      clean_host: None, mechanism: str) -> None:
    before = _snapshot(project)
    result = await ws(mechanism, workdir=project).run(["sh", "-c", EDIT + "; exit 3"])
    assert result.returncode == 3
    assert _kinds(result.changes) == EXPECTED  # listed all the same
    assert _snapshot(project) == before


@pytest.mark.anyio
async def test_on_exit_abort_drops_the_changes(project: pathlib.Path, clean_host: None,
                                               mechanism: str) -> None:
    before = _snapshot(project)
    result = await ws(mechanism, workdir=project, on_exit="abort").run(["sh", "-c", EDIT])
    assert result.success and _kinds(result.changes) == EXPECTED
    assert _snapshot(project) == before


@pytest.mark.anyio
async def test_keep_hands_the_workspace_to_the_caller(project: pathlib.Path,
                                                      clean_host: None, mechanism: str) -> None:
    sandbox = ws(mechanism, workdir=project, on_exit="keep")
    before = _snapshot(project)
    first = await sandbox.run(["sh", "-c", EDIT])
    assert first.workspace is not None and first.workspace.state == "open"
    assert first.workspace.mechanism == mechanism
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
                                                       clean_host: None, mechanism: str) -> None:
    before = _snapshot(project)
    for on_exit in ("commit", "keep"):
        result = await ws(mechanism, workdir=project, on_exit=on_exit).run(
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
async def test_a_git_commit_in_the_workspace(project: pathlib.Path, clean_host: None,
                                             mechanism: str) -> None:
    _git(project, "init", "-q", "-b", "main")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "first")
    head = _git(project, "rev-parse", "HEAD")
    past_the_tick()
    sandbox = ws(mechanism, workdir=project, on_exit="keep",
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
    await result.workspace.commit()
    assert (project / "small.txt").read_text() == "small\n"
    # Control: without max_disk the same write fits.
    free = await system_sandbox(workdir=project, on_exit="abort").run(
        ["sh", "-c", "head -c 3000000 /dev/zero > big.bin; echo $?"])
    assert free.stdout == b"0\n"


# -- conflicts, concurrency -------------------------------------------------------


@pytest.mark.anyio
async def test_a_conflicting_change_is_an_error_not_an_overwrite(
        project: pathlib.Path, clean_host: None, mechanism: str) -> None:
    result = await ws(mechanism, workdir=project, on_exit="keep").run(
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
        project: pathlib.Path, clean_host: None, mechanism: str) -> None:
    sandbox = ws(mechanism, workdir=project)
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
                                                       clean_host: None, mechanism: str) -> None:
    sandbox = ws(mechanism, workdir=project, on_exit="keep")
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


# -- cancellation -------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_during_the_run_nothing_reaches_workdir(project: pathlib.Path,
                                                                clean_host: None,
                                                                mechanism: str) -> None:
    before = _snapshot(project)
    for on_exit in ("commit", "keep"):
        with anyio.move_on_after(0.5) as scope:
            await ws(mechanism, workdir=project, on_exit=on_exit).run(
                ["sh", "-c", "echo x > edit.txt; rm keep.txt; sleep 30"])
        assert scope.cancelled_caught
        assert _snapshot(project) == before


@pytest.mark.anyio
async def test_a_cancelled_commit_leaves_whole_files_and_resumes(
        tmp_path: pathlib.Path, clean_host: None, monkeypatch: pytest.MonkeyPatch,
        mechanism: str) -> None:
    root = tmp_path / "many"
    (root / "tree" / "sub").mkdir(parents=True)
    for i in range(300):
        (root / f"f{i}").write_text(f"old {i}\n" * 1000)
    (root / "tree" / "sub" / "x").write_text("x")
    past_the_tick()
    result = await ws(mechanism, workdir=root, on_exit="keep").run(
        ["sh", "-c", "rm -r tree; for i in $(seq 0 299); do yes new $i | head -1000 > f$i; done"])
    assert result.success, result.stderr
    workspace = result.workspace
    assert workspace is not None and len(workspace.changes) == 301  # tree: one deletion
    with cancelled_at_checkpoint(monkeypatch, 3) as scope:
        await workspace.commit()
    assert scope.cancelled_caught and workspace.state == "open"
    contents = [(root / f"f{i}").read_text() for i in range(300)]
    new = [i for i, text in enumerate(contents) if text == f"new {i}\n" * 1000]
    old = [i for i, text in enumerate(contents) if text == f"old {i}\n" * 1000]
    assert len(new) + len(old) == 300  # every file whole: the old one or the new one
    assert new and old
    assert not [n for n in os.listdir(root) if n.startswith(".")]  # no temporary copy
    await workspace.commit()  # a retry goes on with the rest
    assert all((root / f"f{i}").read_text() == f"new {i}\n" * 1000 for i in range(300))
    assert workspace.state == "committed"
    assert not (root / "tree").exists()


# -- escapes, each with its control ---------------------------------------------------

ROUTES = ("echo escaped > edit.txt; echo escaped > {root}/edit.txt; "
          "echo escaped > ../{name}/edit.txt; rm -f {root}/keep.txt; "
          "umount -l {root} 2>/dev/null; echo escaped > {root}/gone.txt; true")


@pytest.mark.anyio
async def test_escape_writes_do_not_reach_workdir_before_commit(
        project: pathlib.Path, clean_host: None) -> None:
    script = ROUTES.format(root=project, name=project.name)
    before = _snapshot(project)
    held = await system_sandbox(workdir=project, on_exit="abort").run(
        ["sh", "-c", script], cwd=project)
    assert held.success and _snapshot(project) == before
    assert {c.path for c in held.changes or ()} == {"edit.txt", "keep.txt", "gone.txt"}
    # Control: the same writes with workdir writable and no workspace land.
    control = await system_sandbox(fs_writable=[project]).run(["sh", "-c", script],
                                                              cwd=project)
    assert control.success
    assert (project / "edit.txt").read_text() == "escaped\n"
    assert not (project / "keep.txt").exists()


@pytest.mark.anyio
async def test_escape_the_directory_under_the_overlay_is_out_of_reach(
        project: pathlib.Path, clean_host: None, mechanism: str) -> None:
    """The policy's own ruleset never names workdir: an fd of the real
    directory handed in (here as the child's fd 3) opens nothing (under
    the overlay, or beside the snapshot)."""
    fd = os.open(project, os.O_RDONLY | os.O_DIRECTORY)
    try:
        script = "echo escaped > /proc/self/fd/3/edit.txt; cat /proc/self/fd/3/keep.txt"
        held = await ws(mechanism, workdir=project, on_exit="commit").run(
            ["sh", "-c", script], extra_fds=[fd])
        assert held.returncode != 0
        assert (project / "edit.txt").read_text() == "old\n"
        control = await system_sandbox(fs_readable=["/proc"], fs_writable=[project]).run(
            ["sh", "-c", script], extra_fds=[fd])
        assert control.success, control.stderr
        assert (project / "edit.txt").read_text() == "escaped\n"
    finally:
        os.close(fd)


# An unprivileged caller: tests/test_workspace_userns.py.


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"workdir": "/nonexistent/x"}, "workdir"),
    ({"workdir": "/etc/hostname"}, "workdir"),
    ({"workdir": "/"}, "workdir"),
    ({"workdir": 3}, "workdir"),
    ({"workdir": "/tmp", "on_exit": "maybe"}, "on_exit"),
    ({"workdir": "/tmp", "on_exit": None}, "on_exit"),
    ({"on_exit": "keep"}, "on_exit"),
    ({"workdir": "/tmp", "max_disk": "lots"}, "max_disk"),
    ({"workdir": "/tmp", "max_disk": 0}, "max_disk"),
    ({"max_disk": "1G"}, "max_disk"),
])
def test_bad_fields_are_policy_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        Sandbox(**kwargs)


def test_the_fields_are_normalised(tmp_path: pathlib.Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    sandbox = Sandbox(workdir=link, max_disk="2M", on_exit="keep")
    assert sandbox.workdir == str(tmp_path) and sandbox.max_disk == 2 << 20


@pytest.mark.anyio
async def test_bad_run_arguments_are_policy_errors(project: pathlib.Path,
                                                   clean_host: None) -> None:
    with pytest.raises(PolicyError, match="dry_run"):
        await system_sandbox().run(["true"], dry_run=True)
    with pytest.raises(PolicyError, match="dry_run"):
        await system_sandbox(workdir=project).run(["true"], dry_run=1)  # type: ignore[arg-type]
    # open() and pipelines take a workdir: tests/test_workspace_open.py, _pipeline.py


@pytest.mark.anyio
async def test_escape_metadata_calls_by_absolute_path_stay_in_the_layer(
        project: pathlib.Path, clean_host: None) -> None:
    """The metadata guard performs chmod & co itself; an absolute path must be
    resolved in the command's mount namespace (the overlay), not ours (the
    workdir under it), even where fs_writable covers the workdir."""
    keep = project / "keep.txt"
    keep.chmod(0o644)
    past_the_tick()
    before = keep.stat()
    script = f"chmod 600 {keep} && touch -m -d 2001-01-01 {keep} && stat -c %a {keep}"
    held = await system_sandbox(workdir=project, fs_writable=[project.parent],
                                on_exit="keep").run(["sh", "-c", script])
    assert held.success, held.stderr
    assert held.stdout == b"600\n"  # the command saw its own change
    after = keep.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert _kinds(held.changes) == {"keep.txt": ("modified", 5)}
    assert held.workspace is not None
    await held.workspace.commit()
    assert stat.S_IMODE(keep.stat().st_mode) == 0o600
    # Control: the same calls without a workspace reach the file.
    keep.chmod(0o644)
    control = await system_sandbox(fs_writable=[project.parent]).run(["sh", "-c", script])
    assert control.success and stat.S_IMODE(keep.stat().st_mode) == 0o600


@pytest.mark.anyio
async def test_escape_metadata_calls_through_an_absolute_symlink_stay_in_the_layer(
        project: pathlib.Path, clean_host: None) -> None:
    """A symlink the command makes in its workspace, naming a file of the
    workdir by its absolute path: the guard follows it from our root, where
    it names the real file under the overlay, which must stay untouched."""
    keep = project / "keep.txt"
    keep.chmod(0o644)
    past_the_tick()
    script = f"ln -s {keep} link && chmod 600 link && touch -h -d 2001-01-01 link; true"
    held = await system_sandbox(workdir=project, fs_writable=[project.parent],
                                on_exit="abort").run(["sh", "-c", script])
    assert held.success, held.stderr
    assert stat.S_IMODE(keep.stat().st_mode) == 0o644
    # Control: without a workspace the symlink leads to the file, which the
    # command may change (fs_writable covers it).
    link = project.parent / "link"
    control = await system_sandbox(fs_writable=[project.parent]).run(
        ["sh", "-c", f"ln -s {keep} {link} && chmod 600 {link}"])
    assert control.success, control.stderr
    assert stat.S_IMODE(keep.stat().st_mode) == 0o600


@pytest.mark.anyio
async def test_metadata_calls_inside_the_workspace_need_no_fs_writable(
        project: pathlib.Path, clean_host: None) -> None:
    """chmod, utimes and chown of the command's own files work in the
    workspace (pip, tar, cp -p, linkers make them), on the layer only."""
    script = ("echo '#!/bin/sh' > run.sh && chmod 755 run.sh && ./run.sh && "
              "touch -d 2001-01-01 edit.txt && chmod 600 /proc/self/fd/0 2>/dev/null; "
              "stat -c '%a %Y' run.sh edit.txt")
    # ./run.sh: a workspace is executable where fs_readable covers it.
    result = await system_sandbox(workdir=project, on_exit="keep", fs_readable=[project]).run(
        ["sh", "-c", script])
    assert result.success, result.stderr
    lines = (result.stdout or b"").split(b"\n")
    assert lines[0].startswith(b"755 ") and lines[1] == b"644 978307200"
    modes = {c.path: stat.S_IMODE(c.mode) for c in result.changes or ()}
    assert modes == {"edit.txt": 0o644, "run.sh": 0o755}
    assert result.workspace is not None
    await result.workspace.commit()
    assert stat.S_IMODE((project / "run.sh").stat().st_mode) == 0o755
    assert (project / "edit.txt").stat().st_mtime == 978307200


@pytest.mark.anyio
async def test_escape_a_workspace_is_not_executable_unless_readable(
        project: pathlib.Path, clean_host: None) -> None:
    script = "printf '#!/bin/sh\\necho ran\\n' > run.sh && chmod 755 run.sh && ./run.sh"
    held = await system_sandbox(workdir=project, on_exit="abort").run(["sh", "-c", script])
    assert held.returncode != 0 and b"Permission denied" in (held.stderr or b"")
    control = await system_sandbox(workdir=project, on_exit="abort",
                                   fs_readable=[project.parent]).run(["sh", "-c", script])
    assert control.stdout == b"ran\n", control.stderr


def _wheel(path: pathlib.Path) -> None:
    """A one-module wheel, made by hand: no index, no network."""
    files = {"tinypkg/__init__.py": b"VALUE = 42\n",
             "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\n"
                                               b"Version: 1.0\n",
             "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                                            b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(data)}")
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    files["tinypkg-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


@pytest.mark.anyio
@pytest.mark.skipif(subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"],
                                   capture_output=True).returncode != 0,
                    reason="needs the system python3 with pip")
async def test_a_pip_install_target_in_the_workspace(project: pathlib.Path,
                                                     clean_host: None) -> None:
    _wheel(project / "tinypkg-1.0-py3-none-any.whl")
    past_the_tick()
    sandbox = system_sandbox(workdir=project, on_exit="keep", env={"HOME": str(project)})
    result = await sandbox.run(["/usr/bin/python3", "-m", "pip", "install", "--no-index",
                                "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
                                "--target", "deps", "tinypkg-1.0-py3-none-any.whl"])
    assert result.success, result.stderr
    kinds = _kinds(result.changes)
    assert kinds["deps/tinypkg/__init__.py"] == ("added", 11)
    assert all(kind == "added" and path.startswith("deps") for path, (kind, _) in kinds.items())
    assert not (project / "deps").exists()
    assert result.workspace is not None
    await result.workspace.commit()
    check = subprocess.run(["/usr/bin/python3", "-c", "import tinypkg; print(tinypkg.VALUE)"],
                           env={"PYTHONPATH": str(project / "deps")}, capture_output=True)
    assert check.stdout == b"42\n"


DYING_CALLER = """
import anyio, sys
import asyncsandlock as a
async def main():
    sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=sys.argv[1])
    async with anyio.create_task_group() as tg:
        await tg.start(sb.run, ["sh", "-c", "echo mine > edit.txt; sleep 30"])
        print("started", flush=True)
anyio.run(main)
"""


def test_a_caller_killed_mid_run_leaves_nothing_behind(project: pathlib.Path) -> None:
    before, mounts = _snapshot(project), _mounts()
    caller = subprocess.Popen([sys.executable, "-c", DYING_CALLER, str(project)],
                              stdout=subprocess.PIPE)
    try:
        assert caller.stdout is not None
        assert caller.stdout.readline() == b"started\n"
        time.sleep(0.2)  # the command has written its file (to the layer)
    finally:
        caller.kill()
        caller.wait()
        if caller.stdout is not None:
            caller.stdout.close()
    assert _snapshot(project) == before
    assert _mounts() == mounts
