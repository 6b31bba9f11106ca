"""Snapshot workspaces (``workdir_mechanism="snapshot"``, and the fallback
where the host refuses an overlay): what only a snapshot does.  The change
set, commit, abort, dry run, conflicts and cancellation, the same for both
mechanisms, are tests/test_workspace.py's, run over the ``mechanism``
fixture; the fallback under a real refusal of user namespaces is in
tests/test_workspace_userns.py.

Every test checks that nothing is left behind: no copy beside the workdir
or in the temporary directory, no mount, fd, child or thread.
"""

from __future__ import annotations

import contextlib
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
    TAG,
    _mounts,
    _snapshot,
    cancelled_at_checkpoint,
)
from test_workspace_userns import world  # noqa: F401  (a fixture)

from asyncsandlock import (
    ConfinementUnavailable,
    ExitReason,
    PolicyError,
    Protection,
    Sandbox,
    SandboxError,
    Subsystem,
    _workspace,
)

from conftest import past_the_tick, system_sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="runs as root (an unprivileged caller: "
                                       "tests/test_workspace_userns.py)")



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


def _home(project: pathlib.Path) -> pathlib.Path:
    """Where the snapshots of ``project`` go (a root caller: beside it)."""
    return project.parent / f".{project.name}{TAG}u{os.geteuid()}"


# -- the change set, commit, abort, dry run -------------------------------------


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
    assert os.path.dirname(cwd) == str(_home(project))
    assert (mode, text, int(seen)) == ("751", "keep", mtime // 10**9)
    assert result.changes == ()
    inner = await snap(workdir=project, cwd=project / "src").run(["sh", "-c", "pwd; ls"])
    lines = (inner.stdout or b"").decode().split("\n")
    assert lines[0].endswith("/src") and TAG in lines[0] and lines[1:3] == ["a.py", "b.py"]


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


# -- cancellation -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_during_the_copy_nothing_is_left(
        project: pathlib.Path, clean_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled in the copy (before the command exists), the partial copy
    is removed; cancelled during the run: tests/test_workspace.py."""
    for i in range(200):
        (project / f"f{i}").write_text("x" * 100)
    past_the_tick()
    before = _snapshot(project)
    with cancelled_at_checkpoint(monkeypatch, 2) as scope:  # in the copy: 4 batches
        await snap(workdir=project).run(["true"])
    assert scope.cancelled_caught  # then the partial copy was removed (clean_host)
    assert _snapshot(project) == before


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
    past_the_tick()
    own = ("chmod 600 keep.txt && touch -d 2001-01-01 keep.txt && stat -c '%a %Y' keep.txt; "
           f"chmod 600 {keep}; echo $?")
    held = await snap(workdir=project, on_exit="keep", fs_readable=[project.parent]).run(
        ["sh", "-c", own])
    assert held.stdout == b"600 978307200\n1\n", held.stderr  # own copy yes, workdir no
    assert stat.S_IMODE(keep.stat().st_mode) == 0o644
    assert held.workspace is not None
    await held.workspace.abort()
    # A concurrent run's copy (fs_readable covers the parent, but the
    # copies are holed out of it) is not this run's to chmod.  Control: its
    # own run may.
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



# -- a caller killed mid-run: its copy is swept by the next snapshot ---------------

HOLDER = """
import anyio, sys
import asyncsandlock as a
async def main():
    sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=sys.argv[1],
                   workdir_mechanism="snapshot")
    async with anyio.create_task_group() as tg:
        await tg.start(sb.run, ["sh", "-c", "echo mine > edit.txt; sleep 60"])
        print("started", flush=True)
anyio.run(main, backend=sys.argv[2])
"""


def _copies_in(home: pathlib.Path) -> set[str]:
    return {n for n in os.listdir(home) if not n.endswith(".lock")} if home.exists() else set()


@contextlib.contextmanager
def _holder(project: pathlib.Path, backend: str) -> Iterator[str]:
    """A caller in a process of its own, in a snapshot run of ``project``
    that has written its copy's edit.txt; SIGKILLed on the way out.
    Yields its copy's name."""
    caller = subprocess.Popen([sys.executable, "-c", HOLDER, str(project), backend],
                              stdout=subprocess.PIPE)
    try:
        assert caller.stdout is not None
        assert caller.stdout.readline() == b"started\n"
        (copy,) = _copies_in(_home(project))
        deadline = time.monotonic() + 10
        while (_home(project) / copy / "edit.txt").read_text() != "mine\n":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield copy
    finally:
        caller.kill()
        caller.wait()
        if caller.stdout is not None:
            caller.stdout.close()


@pytest.mark.parametrize("by", ["next-snapshot", "abort"])
def test_a_killed_caller_s_copy_is_swept(project: pathlib.Path, anyio_backend: str, by: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller SIGKILLed mid-run cannot remove its copy; the next snapshot
    of the workdir, or the abort (or commit) of one, does: its lock is
    free.  Controls: while the caller lives, the next snapshot leaves its
    copy alone; without the sweep, the dead caller's copy stays."""
    home = _home(project)
    run = snap(workdir=project, on_exit="abort").run
    kept = snap(workdir=project, on_exit="keep").run
    with _holder(project, anyio_backend) as copy:
        assert anyio.run(run, ["true"], backend=anyio_backend).success
        assert _copies_in(home) == {copy}  # alive: never touched
        assert (home / copy / "edit.txt").read_text() == "mine\n"
        if by == "abort":
            mine = anyio.run(kept, ["true"], backend=anyio_backend).workspace
            assert mine is not None and len(_copies_in(home)) == 2
    monkeypatch.setattr(_workspace, "SWEEP", False)
    assert anyio.run(run, ["true"], backend=anyio_backend).success
    assert copy in _copies_in(home), "without the sweep, the dead caller's copy stays"
    monkeypatch.setattr(_workspace, "SWEEP", True)
    if by == "abort":
        anyio.run(mine.abort, backend=anyio_backend)
    else:
        assert anyio.run(run, ["true"], backend=anyio_backend).success
    assert not home.exists() and _copies(project) == set()
    assert (project / "edit.txt").read_text() == "old\n"


# -- escapes: the copies of concurrent runs are not readable -------------------------

PEEK = ("cat {copy}/mine.txt; cat ../{name}/mine.txt; cat {copy}/keep.txt; "
        "ln -s {copy}/mine.txt link && cat link; ls ..; true")


@pytest.mark.anyio
async def test_escape_a_concurrent_run_s_copy_is_not_readable(
        project: pathlib.Path, clean_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """fs_readable covers the workdir's parent, where the copies live: a
    run cannot read a concurrent run's copy (by its path, by ``..``, by a
    symlink in its own copy), nor list the directory of the copies to learn
    their names.  Control: without the hole, it could read it (the listing:
    the caller can)."""
    sandbox = snap(workdir=project, on_exit="abort", fs_readable=[project.parent])
    async with await sandbox.open(["sh", "-c", "echo secret > mine.txt; pwd; sleep 5"],
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL) as other:
        assert other.stdout is not None
        copy = (await other.stdout.receive()).decode().strip()
        assert os.path.dirname(copy) == str(_home(project))
        probe = ["sh", "-c", PEEK.format(copy=copy, name=os.path.basename(copy))]
        held = await sandbox.run(probe)
        assert held.stdout == b"", held.stdout
        assert held.stderr is not None and held.stderr.count(b"Permission denied") == 5
        assert os.path.basename(copy) in os.listdir(_home(project))
        own = await sandbox.run(["sh", "-c", "cat keep.txt"])  # its own copy: readable
        assert own.stdout == b"keep\n"
        monkeypatch.setattr(_workspace, "HOLE", False)
        leaked = await sandbox.run(probe)
        assert leaked.stdout == b"secret\nsecret\nkeep\nsecret\n", leaked.stderr
        other.kill()


@pytest.mark.anyio
async def test_escape_the_holed_parent_is_listed_per_run(project: pathlib.Path,
                                                         clean_host: None) -> None:
    """The run's ruleset grants the siblings of the private directory from the
    parent's listing at the run's start (``_workspace._holed_ruleset``: only
    the rest of the policy's rules are kept between runs).  An entry made in
    the parent during a run fails closed (escape); controls: the next run
    reads it, and one that replaced a sibling between runs is the one read."""
    (project.parent / "before.txt").write_text("before\n")  # the copy's ../..
    sandbox = snap(workdir=project, on_exit="abort", fs_readable=[project.parent])
    first = await sandbox.run(["cat", "../../before.txt"])
    assert first.stdout == b"before\n", first.stderr
    async with await sandbox.open(["sh", "-c", "read go; cat ../../late.txt 2>&1; echo rc=$?"],
                                  stderr=subprocess.DEVNULL) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        (project.parent / "late.txt").write_text("late\n")
        await proc.stdin.send(b"go\n")
        out = b""
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                out += await proc.stdout.receive()
        await proc.wait()
    assert b"Permission denied" in out and out.endswith(b"rc=1\n"), out
    (project.parent / "new.txt").write_text("new\n")
    os.replace(project.parent / "new.txt", project.parent / "before.txt")
    later = await sandbox.run(["sh", "-c", "cat ../../late.txt ../../before.txt"])
    assert later.stdout == b"late\nnew\n", later.stderr


NOBODY_PEEK = """
import os, subprocess, sys
import anyio, anyio._backends._asyncio, anyio._backends._trio  # root's files: import first
import asyncsandlock as a
from asyncsandlock import _workspace
root, backend, temp = sys.argv[1], sys.argv[2], sys.argv[3]
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
PEEK = "cat {copy}/mine.txt; cat ../{name}/mine.txt; ls .. || echo unlisted"
async def main():
    sb = a.Sandbox(fs_readable=[*a.SYSTEM_READABLE, temp], workdir=root,
                   workdir_mechanism="snapshot", on_exit="abort")
    async with await sb.open(["sh", "-c", "echo secret > mine.txt; pwd; sleep 5"],
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL) as other:
        copy = (await other.stdout.receive()).decode().strip()
        probe = ["sh", "-c", PEEK.format(copy=copy, name=os.path.basename(copy))]
        held = await sb.run(probe)
        _workspace.HOLE = False
        leaked = await sb.run(probe)
        other.kill()
    print(copy.startswith(temp + "/"), held.stdout, leaked.stdout)
anyio.run(main, backend=backend)
"""


def test_escape_a_concurrent_run_s_copy_is_not_readable_as_nobody(
        world: pathlib.Path, anyio_backend: str) -> None:  # noqa: F811
    """The same as uid 65534, whose copies go in the temporary directory
    (it may not write beside the workdir), which fs_readable covers: the
    command runs as the copies' owner, so only Landlock keeps them apart.
    Control: without the hole, it reads them."""
    temp = world.parent / "tmp"
    done = subprocess.run([sys.executable, "-c", NOBODY_PEEK, str(world), anyio_backend,
                           str(temp)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("True b'unlisted\\n' b'secret\\nsecret\\nunlisted\\n'"), \
        done.stderr
    assert os.listdir(temp) == []


# -- removing a copy: a directory swapped for a symlink mid-way --------------------


def _naive_removal_steps(path: str) -> Iterator[None]:
    """A removal by path names (as it was before): the control."""
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(top, name))
            yield
        for name in dirs:
            child = os.path.join(top, name)
            (os.unlink if os.path.islink(child) else os.rmdir)(child)
            yield
    os.rmdir(path)
    yield


@pytest.mark.parametrize("remover", ["ours", "by-path"])
def test_escape_a_swap_during_the_removal_stays_in_the_copy(tmp_path: pathlib.Path,
                                                            remover: str) -> None:
    """A process of a sandbox still running while its copy is removed (a
    dead caller's, swept) swaps a directory for a symlink to one outside
    the copy between two steps: the removal goes on in the directory it
    opened, never through the link.  Control: a removal by path names
    follows the link and deletes outside the copy."""
    copy, outside = tmp_path / "copy", tmp_path / "outside"
    (copy / "a").mkdir(parents=True)
    outside.mkdir()
    for name in ("f1", "f2"):
        (copy / "a" / name).write_text("x")
        (outside / name).write_text("precious")
    steps = (_workspace._removal_steps if remover == "ours" else _naive_removal_steps)(str(copy))
    next(steps)  # one of a's two files is gone
    (copy / "a").rename(tmp_path / "moved")
    (copy / "a").symlink_to(outside)
    for _ in steps:
        pass
    assert not copy.exists()
    if remover == "ours":
        assert sorted(os.listdir(outside)) == ["f1", "f2"]
        assert os.listdir(tmp_path / "moved") == []  # the one it had opened
    else:
        assert len(os.listdir(outside)) == 1  # one precious file deleted through the link


def _naive_opening_steps(path: str) -> Iterator[None]:
    """Opening by path names (as it was before): the control."""
    pending = [path]
    while pending:
        top = pending.pop()
        os.chmod(top, 0o700)
        with os.scandir(top) as entries:
            pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        yield


@pytest.mark.parametrize("opener", ["ours", "by-path"])
def test_escape_a_swap_during_the_opening_stays_in_the_copy(tmp_path: pathlib.Path,
                                                            opener: str) -> None:
    """The same swap while the removal gives the owner its rights back on
    the copy's directories (one the command closed with ``chmod 000``): the
    directory outside keeps its mode.  Control: by path names, it loses it."""
    copy, outside = tmp_path / "copy", tmp_path / "outside"
    (copy / "a").mkdir(parents=True)
    outside.mkdir()
    outside.chmod(0o755)
    steps = (_workspace._opening_steps if opener == "ours" else _naive_opening_steps)(str(copy))
    next(steps)  # the copy's root is open; "a" is next
    (copy / "a").rename(tmp_path / "moved")
    (copy / "a").symlink_to(outside)
    for _ in steps:
        pass
    assert stat.S_IMODE(outside.stat().st_mode) == (0o755 if opener == "ours" else 0o700)
