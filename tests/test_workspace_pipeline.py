"""Pipelines with a workspace: the stages with a workdir share one layer (an
overlay each attaches a clone of, or a snapshot), so each sees the others'
writes; it is settled once every stage has ended, and committed
(``on_exit="commit"``) only if all succeeded.  Both mechanisms, both
backends."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterator

import pytest
from test_workspace import _mounts, _snapshot

from asyncsandlock import PolicyError, Protection, Sandbox, Subsystem

from conftest import past_the_tick, system_sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="runs as root (the snapshot needs no privilege, "
                                       "the test fixtures are shared with root's)")


@pytest.fixture
def project(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "f").write_text("from f\n")
    (root / "edit.txt").write_text("old\n")
    past_the_tick()
    return root


@pytest.fixture
def clean_host(no_leaks: None, project: pathlib.Path) -> Iterator[None]:
    mounts = _mounts()
    yield
    assert _mounts() == mounts
    assert not [n for place in (project.parent, pathlib.Path(tempfile.gettempdir()))
                for n in os.listdir(place) if ".asyncsandlock-snapshot-" in n]


def ws(project: pathlib.Path, mechanism: str, **kwargs: object) -> Sandbox:
    return system_sandbox(workdir=project, workdir_mechanism=mechanism, **kwargs)


@pytest.mark.anyio
async def test_stages_share_one_layer(project: pathlib.Path, mechanism: str,
                                      clean_host: None) -> None:
    sb = ws(project, mechanism)
    # The first stage writes a file, then the second reads it after the
    # first's output reached it: it sees the first one's write.
    first = sb.cmd(["sh", "-c", "echo one > made.txt; cat f"])
    # chmod: the metadata guard knows each stage's mount of the layer.
    second = sb.cmd(["sh", "-c", "tee copy.txt; cat made.txt; chmod 600 copy.txt"])
    result = await (first | second).run()
    assert result.success, [s.stderr for s in result.stages]
    assert result.stdout == b"from f\none\n"
    assert {c.path: c.kind for c in result.changes or ()} == {"copy.txt": "added",
                                                              "made.txt": "added"}
    used = (Subsystem.WORKSPACE_OVERLAY if mechanism == "overlay"
            else Subsystem.WORKSPACE_SNAPSHOT)
    assert all(s.protections[used] is Protection.ACTIVE for s in result.stages)
    assert (project / "copy.txt").read_text() == "from f\n"  # committed
    assert (project / "copy.txt").stat().st_mode & 0o777 == 0o600
    assert (project / "made.txt").read_text() == "one\n"


@pytest.mark.anyio
async def test_a_failed_stage_aborts_and_keep_hands_it_over(project: pathlib.Path,
                                                            mechanism: str,
                                                            clean_host: None) -> None:
    before = _snapshot(project)
    sb = ws(project, mechanism)
    failed = await (sb.cmd(["sh", "-c", "echo x > edit.txt; exit 2"]) | sb.cmd(["cat"])).run()
    assert not failed.success and [c.path for c in failed.changes or ()] == ["edit.txt"]
    assert _snapshot(project) == before
    kept = await (ws(project, mechanism, on_exit="keep").cmd(["sh", "-c", "echo x > edit.txt"])
                  | system_sandbox().cmd(["cat"])).run()
    assert kept.workspace is not None and _snapshot(project) == before
    assert kept.workspace.mechanism == mechanism
    await kept.workspace.commit()
    assert (project / "edit.txt").read_text() == "x\n"


@pytest.mark.anyio
async def test_escape_a_stage_cannot_write_workdir_before_commit(project: pathlib.Path,
                                                                 mechanism: str,
                                                                 clean_host: None) -> None:
    before = _snapshot(project)
    script = f"echo escaped > {project}/edit.txt; echo escaped > ../project/f; true"
    sb = ws(project, mechanism, on_exit="abort")
    held = await (sb.cmd(["sh", "-c", script]) | sb.cmd(["cat"])).run()
    assert held.success and _snapshot(project) == before
    # Control: the same stage with workdir writable writes it.
    control = await (system_sandbox(fs_writable=[project]).cmd(["sh", "-c", script],
                                                               cwd=project)
                     | system_sandbox().cmd(["cat"])).run()
    assert control.success and (project / "edit.txt").read_text() == "escaped\n"


@pytest.mark.anyio
async def test_stages_must_agree_on_the_workspace(project: pathlib.Path, tmp_path: pathlib.Path,
                                                  clean_host: None) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for second in (system_sandbox(workdir=other), ws(project, "snapshot"),
                   system_sandbox(workdir=project, on_exit="keep")):
        with pytest.raises(PolicyError, match="workdir"):
            await (ws(project, "overlay").cmd(["true"]) | second.cmd(["true"])).run()
