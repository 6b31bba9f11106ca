"""Snapshot workspaces (``workdir_mechanism="snapshot"``, and the fallback
where the host refuses an overlay): a private copy of ``workdir`` beside it
and a diff, with the same change set, commit, abort, dry run, conflicts and
cancellation as an overlay (tests/test_workspace.py).  The fallback under a
real refusal of user namespaces is in tests/test_workspace_userns.py.

Every test checks that nothing is left behind: no copy beside the workdir
or in the temporary directory, no mount, fd, child or thread.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from test_workspace import (
    EDIT,
    EXPECTED,
    _kinds,
    _mounts,
    _snapshot,
    cancelled_at_checkpoint,
)

import asyncsandlock
from asyncsandlock import (
    ConfinementUnavailable,
    ExitReason,
    PolicyError,
    Protection,
    Sandbox,
    SandboxError,
    Subsystem,
    WorkspaceConflict,
)

from conftest import system_sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="runs as root (an unprivileged caller: "
                                       "tests/test_workspace_userns.py)")

TAG = ".asyncsandlock-snapshot-"


@pytest.fixture
def project(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "keep.txt").write_text("keep\n")
    (root / "edit.txt").write_text("old\n")
    (root / "gone.txt").write_text("bye\n")
    (root / "src" / "a.py").write_text("a = 1\n")
    (root / "src" / "b.py").write_text("b = 2\n")
    time.sleep(0.02)  # a change in the clock tick a run starts in is a conflict
    return root


def _copies(project: pathlib.Path) -> set[str]:
    return {n for place in (project.parent, pathlib.Path(tempfile.gettempdir()))
            for n in os.listdir(place) if TAG in n}


@pytest.fixture
def clean_host(no_leaks: None, project: pathlib.Path) -> Iterator[None]:
    mounts = _mounts()
    assert _copies(project) == set()
    yield
    assert _mounts() == mounts, "our mount table changed"
    assert _copies(project) == set(), "a snapshot was left behind"


def snap(**kwargs: Any) -> Sandbox:
    return system_sandbox(workdir_mechanism="snapshot", **kwargs)


# -- the change set, commit, abort, dry run -------------------------------------


@pytest.mark.anyio
async def test_changes_are_listed_and_committed(project: pathlib.Path, clean_host: None) -> None:
    result = await snap(workdir=project).run(["sh", "-c", EDIT])
    assert result.success, result.stderr
    assert _kinds(result.changes) == EXPECTED
    assert [c.path for c in result.changes or ()] == sorted(
        EXPECTED, key=lambda p: p.split("/"))
    modes = {c.path: c.mode for c in result.changes or ()}
    assert stat.S_ISDIR(modes["out"]) and stat.S_ISLNK(modes["link"])
    assert result.protections[Subsystem.WORKSPACE_SNAPSHOT] is Protection.ACTIVE
    assert result.protections[Subsystem.WORKSPACE_OVERLAY] is Protection.NOT_REQUESTED
    assert (project / "edit.txt").read_text() == "new\n"
    assert not (project / "gone.txt").exists()
    assert (project / "out" / "deep" / "x.bin").read_text() == "x\n"
    assert os.readlink(project / "link") == "keep.txt"
    assert sorted(os.listdir(project / "src")) == ["c.py"]
    assert (project / "keep.txt").read_text() == "keep\n"
    assert not [n for n in os.listdir(project) if ".asyncsandlock-" in n]


@pytest.mark.anyio
async def test_abort_keep_and_dry_run(project: pathlib.Path, clean_host: None) -> None:
    before = _snapshot(project)
    failed = await snap(workdir=project).run(["sh", "-c", EDIT + "; exit 3"])
    assert failed.returncode == 3 and _kinds(failed.changes) == EXPECTED
    aborted = await snap(workdir=project, on_exit="abort").run(["sh", "-c", EDIT])
    assert _kinds(aborted.changes) == EXPECTED
    dry = await snap(workdir=project).run(["sh", "-c", EDIT], dry_run=True)
    assert _kinds(dry.changes) == EXPECTED and dry.workspace is None
    assert _snapshot(project) == before
    kept = await snap(workdir=project, on_exit="keep").run(["sh", "-c", EDIT])
    assert kept.workspace is not None and kept.workspace.mechanism == "snapshot"
    assert _snapshot(project) == before  # nothing until the caller says so
    await kept.workspace.commit()
    assert kept.workspace.state == "committed"
    assert (project / "edit.txt").read_text() == "new\n"


@pytest.mark.anyio
async def test_the_command_works_in_the_copy(project: pathlib.Path, clean_host: None) -> None:
    """Without a mount namespace, the copy cannot take workdir's place: the
    command starts in the copy (a cwd inside workdir maps into it), which
    holds workdir's entries with their modes and times."""
    project.chmod(0o751)
    mtime = (project / "keep.txt").stat().st_mtime_ns
    result = await snap(workdir=project).run(
        ["sh", "-c", "pwd; stat -c %a .; cat keep.txt; stat -c %Y keep.txt"])
    cwd, mode, text, seen = (result.stdout or b"").decode().split("\n")[:4]
    assert os.path.dirname(cwd) == str(project.parent)
    assert os.path.basename(cwd).startswith(f".project{TAG}")
    assert (mode, text, int(seen)) == ("751", "keep", mtime // 10**9)
    assert result.changes == ()
    inner = await snap(workdir=project, cwd=project / "src").run(["sh", "-c", "pwd; ls"])
    lines = (inner.stdout or b"").decode().split("\n")
    assert lines[0].endswith("/src") and TAG in lines[0] and lines[1:3] == ["a.py", "b.py"]


@pytest.mark.anyio
async def test_a_git_commit_in_the_snapshot(project: pathlib.Path, clean_host: None) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(project), "-c", "user.name=t",
                               "-c", "user.email=t@t", *args], check=True,
                              capture_output=True, text=True).stdout

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    time.sleep(0.02)
    result = await snap(workdir=project, on_exit="keep",
                        env={"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(project)}).run(
        ["sh", "-c", "echo new > edit.txt && git add edit.txt && "
                     "git -c user.name=s -c user.email=s@s commit -q -m second"])
    assert result.success, result.stderr
    paths = {c.path for c in result.changes or ()}
    assert {"edit.txt", ".git/index", ".git/refs/heads/main"} <= paths
    assert git("rev-parse", "HEAD") == head  # not yet
    assert result.workspace is not None
    await result.workspace.commit()
    assert git("log", "--format=%s") == "second\nfirst\n"
    assert git("status", "--porcelain") == ""
    git("fsck", "--strict")


# -- max_disk: checked after the run ---------------------------------------------


@pytest.mark.anyio
async def test_max_disk_refuses_to_commit_a_bigger_change_set(project: pathlib.Path,
                                                              clean_host: None) -> None:
    before = _snapshot(project)
    script = ["sh", "-c", "head -c 3000000 /dev/zero > big.bin"]
    try:
        stopped = await snap(workdir=project, max_disk="1M").run(script)
    except SandboxError as exc:  # refused at the commit: the usual end
        assert "max_disk" in str(exc)
    else:  # or the sampler's look came while it wrote (test_max_disk_is_sampled...)
        assert stopped.reason is ExitReason.DISK_LIMIT, stopped
    assert _snapshot(project) == before
    kept = await snap(workdir=project, max_disk="1M", on_exit="keep").run(script)
    assert kept.workspace is not None
    with pytest.raises(SandboxError, match="max_disk"):
        await kept.workspace.commit()
    await kept.workspace.abort()
    assert _snapshot(project) == before
    # Control: within the bound, the same write is committed.
    done = await snap(workdir=project, max_disk="4M").run(script)
    assert done.success and (project / "big.bin").stat().st_size == 3000000


@pytest.mark.anyio
async def test_max_disk_is_sampled_during_the_run(project: pathlib.Path,
                                                  clean_host: None) -> None:
    """A command that keeps writing past max_disk is stopped (DISK_LIMIT)
    within a sampling interval or so; control: with room, it completes."""
    before = _snapshot(project)
    slow = ["sh", "-c", "for i in $(seq 1 60); do head -c 100000 /dev/zero >> big.bin; "
                        "sleep 0.05; done"]
    held = await snap(workdir=project, max_disk="1M").run(slow)
    assert held.reason is ExitReason.DISK_LIMIT and held.returncode == -9
    assert held.protections[Subsystem.WORKSPACE_SNAPSHOT] is Protection.SAMPLED
    size = {c.path: c.size for c in held.changes or ()}["big.bin"]
    assert 1 << 20 < size < 6000000  # stopped on the way, past the bound
    assert _snapshot(project) == before
    done = await snap(workdir=project, max_disk="8M").run(slow)
    assert done.success and (project / "big.bin").stat().st_size == 6000000


# -- conflicts, concurrency ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_conflicting_change_is_an_error_not_an_overwrite(
        project: pathlib.Path, clean_host: None) -> None:
    result = await snap(workdir=project, on_exit="keep").run(
        ["sh", "-c", "echo mine > edit.txt; echo mine > keep.txt; echo new > fresh.txt"])
    assert result.workspace is not None
    (project / "edit.txt").write_text("theirs\n")
    (project / "fresh.txt").write_text("theirs too\n")
    with pytest.raises(WorkspaceConflict) as info:
        await result.workspace.commit()
    assert info.value.paths == ("edit.txt", "fresh.txt")
    assert (project / "keep.txt").read_text() == "keep\n"
    assert (project / "edit.txt").read_text() == "theirs\n"
    await result.workspace.abort()
    del info


@pytest.mark.anyio
async def test_concurrent_runs_get_copies_of_their_own(project: pathlib.Path,
                                                       clean_host: None) -> None:
    sandbox = snap(workdir=project, on_exit="keep")
    results: dict[str, asyncsandlock.Result] = {}

    async def one(name: str) -> None:
        results[name] = await sandbox.run(
            ["sh", "-c", f"sleep 0.3; echo {name} > edit.txt; echo {name} > {name}.txt; ls"])

    async with anyio.create_task_group() as tg:
        for name in ("left", "right"):
            tg.start_soon(one, name)
    for name, other in (("left", "right"), ("right", "left")):
        assert _kinds(results[name].changes) == {"edit.txt": ("modified", len(name) + 1),
                                                 f"{name}.txt": ("added", len(name) + 1)}
        assert f"{other}.txt".encode() not in (results[name].stdout or b"")
    left, right = results["left"].workspace, results["right"].workspace
    assert left is not None and right is not None
    await left.commit()
    with pytest.raises(WorkspaceConflict):
        await right.commit()
    await right.abort()
    assert (project / "edit.txt").read_text() == "left\n"


# -- cancellation -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_during_the_copy_or_the_run_nothing_is_left(
        project: pathlib.Path, clean_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(200):
        (project / f"f{i}").write_text("x" * 100)
    time.sleep(0.02)
    before = _snapshot(project)
    with cancelled_at_checkpoint(monkeypatch, 2) as scope:  # in the copy: 4 batches
        await snap(workdir=project).run(["true"])
    assert scope.cancelled_caught  # then the partial copy was removed (clean_host)
    for on_exit in ("commit", "keep"):
        with anyio.move_on_after(0.5) as timed:
            await snap(workdir=project, on_exit=on_exit).run(
                ["sh", "-c", "echo x > edit.txt; rm keep.txt; sleep 30"])
        assert timed.cancelled_caught
    assert _snapshot(project) == before


@pytest.mark.anyio
async def test_a_cancelled_commit_leaves_whole_files_and_resumes(
        project: pathlib.Path, clean_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(300):
        (project / f"f{i}").write_text(f"old {i}\n" * 100)
    time.sleep(0.02)
    result = await snap(workdir=project, on_exit="keep").run(
        ["sh", "-c", "for i in $(seq 0 299); do yes new $i | head -100 > f$i; done"])
    assert result.success, result.stderr
    workspace = result.workspace
    assert workspace is not None and len(workspace.changes) == 300
    with cancelled_at_checkpoint(monkeypatch, 3) as scope:
        await workspace.commit()
    assert scope.cancelled_caught and workspace.state == "open"
    contents = [(project / f"f{i}").read_text() for i in range(300)]
    new = [i for i, text in enumerate(contents) if text == f"new {i}\n" * 100]
    old = [i for i, text in enumerate(contents) if text == f"old {i}\n" * 100]
    assert len(new) + len(old) == 300 and new and old
    await workspace.commit()  # a retry goes on with the rest
    assert all((project / f"f{i}").read_text() == f"new {i}\n" * 100 for i in range(300))


# -- escapes, each with its control ---------------------------------------------------

ROUTES = ("echo escaped > {root}/edit.txt; echo escaped > ../{name}/edit.txt; "
          "rm -f {root}/keep.txt; echo escaped > {root}/gone.txt; "
          "ln {root}/keep.txt hard 2>/dev/null; echo escaped >> hard 2>/dev/null; true")


@pytest.mark.anyio
async def test_escape_workdir_itself_is_untouched_until_commit(
        project: pathlib.Path, clean_host: None) -> None:
    """The copy beside workdir is the command's; workdir, by its absolute
    path, by ``..``, or by a hard link into the copy, is not."""
    script = ROUTES.format(root=project, name=project.name)
    before = _snapshot(project)
    held = await snap(workdir=project, on_exit="abort").run(["sh", "-c", script])
    assert held.success and _snapshot(project) == before
    assert "keep.txt" not in {c.path for c in held.changes or ()}
    # Control: the same writes with workdir writable and no workspace land.
    control = await system_sandbox(fs_writable=[project]).run(["sh", "-c", script],
                                                              cwd=project)
    assert control.success
    assert (project / "edit.txt").read_text() == "escaped\n"
    assert not (project / "keep.txt").exists()


@pytest.mark.anyio
async def test_escape_an_fd_of_workdir_opens_nothing(project: pathlib.Path,
                                                     clean_host: None) -> None:
    fd = os.open(project, os.O_RDONLY | os.O_DIRECTORY)
    try:
        script = "echo escaped > /proc/self/fd/3/edit.txt; cat /proc/self/fd/3/keep.txt"
        held = await snap(workdir=project).run(["sh", "-c", script], extra_fds=[fd])
        assert held.returncode != 0
        assert (project / "edit.txt").read_text() == "old\n"
        control = await system_sandbox(fs_readable=["/proc"], fs_writable=[project]).run(
            ["sh", "-c", script], extra_fds=[fd])
        assert control.success, control.stderr
        assert (project / "edit.txt").read_text() == "escaped\n"
    finally:
        os.close(fd)


@pytest.mark.anyio
async def test_escape_fs_writable_over_workdir_is_refused(project: pathlib.Path,
                                                          clean_host: None) -> None:
    """A snapshot leaves workdir where it is: an fs_writable grant over it
    would let the command write it, so the run is refused before anything
    starts.  Control: an overlay hides workdir under it, and runs."""
    script = ["sh", "-c", f"echo escaped > {project}/edit.txt; true"]
    with pytest.raises(ConfinementUnavailable) as info:
        await snap(workdir=project, fs_writable=[project.parent]).run(script)
    assert info.value.subsystem is Subsystem.WORKSPACE_SNAPSHOT
    assert (project / "edit.txt").read_text() == "old\n"
    del info
    control = await system_sandbox(workdir=project, fs_writable=[project.parent],
                                   workdir_mechanism="overlay", on_exit="abort").run(script)
    assert control.success and (project / "edit.txt").read_text() == "old\n"


@pytest.mark.anyio
async def test_escape_metadata_calls_reach_the_own_copy_only(project: pathlib.Path,
                                                             clean_host: None) -> None:
    """The metadata guard changes entries of the run's own copy: not
    workdir's (by absolute path), not a concurrent run's copy beside it."""
    keep = project / "keep.txt"
    keep.chmod(0o644)
    time.sleep(0.02)
    own = ("chmod 600 keep.txt && touch -d 2001-01-01 keep.txt && stat -c '%a %Y' keep.txt; "
           f"chmod 600 {keep}; echo $?")
    held = await snap(workdir=project, on_exit="keep", fs_readable=[project.parent]).run(
        ["sh", "-c", own])
    assert held.stdout == b"600 978307200\n1\n", held.stderr  # own copy yes, workdir no
    assert stat.S_IMODE(keep.stat().st_mode) == 0o644
    assert held.workspace is not None
    await held.workspace.abort()
    # A concurrent run's copy: readable here (fs_readable covers the parent),
    # and still not this run's to chmod.  Control: its own run may.
    sandbox = snap(workdir=project, on_exit="abort", fs_readable=[project.parent])
    async with await sandbox.open(["sh", "-c", "pwd; sleep 5"], stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL) as other:
        assert other.stdout is not None
        copy = (await other.stdout.receive()).decode().strip()
        assert TAG in copy
        probe = await sandbox.run(["sh", "-c", f"chmod 600 {copy}/keep.txt; echo $?; "
                                               "chmod 600 keep.txt; echo $?"])
        assert probe.stdout == b"1\n0\n"
        assert stat.S_IMODE(os.stat(f"{copy}/keep.txt").st_mode) == 0o644
        other.kill()


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"workdir": "/tmp", "workdir_mechanism": "copy"}, "workdir_mechanism"),
    ({"workdir": "/tmp", "workdir_mechanism": None}, "workdir_mechanism"),
    ({"workdir_mechanism": "snapshot"}, "workdir_mechanism"),
])
def test_bad_mechanism_is_a_policy_error(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        Sandbox(**kwargs)


# -- a host without Landlock: no snapshot (it alone keeps the command off workdir) --

NO_LANDLOCK = """
import anyio, sys
import asyncsandlock as a
root, backend = sys.argv[1], sys.argv[2]
async def main():
    sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, workdir_mechanism="snapshot",
                   on_unavailable=a.allow_degraded(a.Subsystem.LANDLOCK))
    try:
        await sb.run(["sh", "-c", "echo escaped > " + root + "/edit.txt"])
        print("ran")
    except a.ConfinementUnavailable as exc:
        print("refused", exc.subsystem.value)
    over = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, workdir_mechanism="overlay",
                     on_exit="abort", on_unavailable=a.allow_degraded(a.Subsystem.LANDLOCK))
    r = await over.run(["sh", "-c", "echo escaped > edit.txt"])
    print("control", r.returncode, [c.path for c in r.changes])
anyio.run(main, backend=backend)
"""


def test_escape_a_snapshot_without_landlock_is_refused(project: pathlib.Path,
                                                       anyio_backend: str) -> None:
    """Landlock refused for real (an outer seccomp filter answers
    landlock_create_ruleset with ENOSYS, as gVisor does): a snapshot would
    leave workdir writable, so it is refused even where on_unavailable lets
    Landlock go.  Control: an overlay (a mount over workdir) still runs."""
    from conftest import build_helper
    refuse = build_helper("refuse")
    done = subprocess.run([refuse, "landlock_create_ruleset=ENOSYS", "--", sys.executable,
                           "-W", "ignore", "-c", NO_LANDLOCK, str(project), anyio_backend],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["refused workspace-snapshot",
                                           "control 0 ['edit.txt']"], done.stderr
    assert (project / "edit.txt").read_text() == "old\n"
    assert _copies(project) == set()

