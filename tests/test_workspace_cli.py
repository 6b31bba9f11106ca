"""``asyncsandlock run --workdir``: the flags of copy-on-write workspaces."""

from __future__ import annotations

import os
import pathlib

import pytest
from test_cli import READ, cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="workspaces need CAP_SYS_ADMIN (docs/workspaces.md)")


@pytest.fixture
def project(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "edit.txt").write_text("old\n")
    (root / "gone.txt").write_text("bye\n")
    return root


SCRIPT = "echo new > edit.txt; rm gone.txt; echo hi > added.txt"


def test_workdir_commits_and_lists_the_changes(project: pathlib.Path) -> None:
    proc = cli(*READ, "--workdir", str(project), "--", "sh", "-c", SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("A added.txt\nM edit.txt\nD gone.txt\n"
                           "asyncsandlock: 3 changes, committed\n")
    assert sorted(os.listdir(project)) == ["added.txt", "edit.txt"]


def test_dry_run_and_abort_apply_nothing(project: pathlib.Path) -> None:
    for flag in ("--dry-run", "--on-exit=abort"):
        proc = cli(*READ, "--workdir", str(project), flag, "--", "sh", "-c", SCRIPT)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.endswith("3 changes, dry run: none applied\n" if flag == "--dry-run"
                                    else "3 changes, aborted\n")
        assert sorted(os.listdir(project)) == ["edit.txt", "gone.txt"]
    failed = cli(*READ, "--workdir", str(project), "--", "sh", "-c", SCRIPT + "; exit 4")
    assert failed.returncode == 4 and failed.stderr.endswith("3 changes, aborted\n")


def test_max_disk_from_the_command_line(project: pathlib.Path) -> None:
    proc = cli(*READ, "--workdir", str(project), "--max-disk", "1M", "--on-exit", "abort",
               "--", "sh", "-c", "head -c 3000000 /dev/zero > big")
    assert proc.returncode != 0 and "No space left on device" in proc.stderr


def test_bad_workspace_flags_fail_before_running(project: pathlib.Path) -> None:
    proc = cli(*READ, "--workdir", str(project / "missing"), "--", "true")
    assert proc.returncode == 125 and "workdir" in proc.stderr
    proc = cli(*READ, "--workdir", str(project), "--max-disk", "lots", "--", "true")
    assert proc.returncode == 125 and "max_disk" in proc.stderr
    proc = cli(*READ, "--dry-run", "--", "true")
    assert proc.returncode == 125 and "dry_run" in proc.stderr


def test_workdir_mechanism_from_the_command_line(project: pathlib.Path) -> None:
    proc = cli(*READ, "--workdir", str(project), "--workdir-mechanism", "snapshot", "--",
               "sh", "-c", SCRIPT + "; pwd")
    assert proc.returncode == 0, proc.stderr
    assert ".project.asyncsandlock-snapshot-" in proc.stdout  # it worked in a copy
    assert proc.stderr.endswith("3 changes, committed\n")
    assert sorted(os.listdir(project)) == ["added.txt", "edit.txt"]
    assert not [n for n in os.listdir(project.parent) if ".asyncsandlock-" in n]
    proc = cli(*READ, "--workdir-mechanism", "copy", "--", "true")
    assert proc.returncode != 0 and "workdir-mechanism" in proc.stderr
