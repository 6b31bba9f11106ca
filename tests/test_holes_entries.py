"""``_holes.layout`` and the C that grants a holed directory's entries
(csrc/holes.c, ``asl_landlock_entries``).  What the rules then allow is
held by tests/test_fs_denied.py and the snapshot escapes; here: which
entries get a rule, counted by the C itself."""

from __future__ import annotations

import os
import pathlib

import pytest

from asyncsandlock._core import lib
from asyncsandlock._holes import Entries, Rule, carve, entries_rules, layout, resolve
from asyncsandlock._kernel._landlock import _FILE_ONLY, READ, abi_version, build_ruleset
from asyncsandlock._kernel._landlock import RulesetSpec as Spec


def _ruleset() -> int:
    try:
        abi_version()
    except OSError:
        pytest.skip("Landlock unavailable")
    return build_ruleset(Spec((), (), None, None, scoped=False), abi_version(), frozenset())


def _granted(directory: pathlib.Path, skip: set[str]) -> int:
    """The number of rules ``asl_landlock_entries`` adds for ``directory``."""
    ruleset = _ruleset()
    where = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        packed = b"".join(os.fsencode(name) + b"\0" for name in skip)
        return int(lib.asl_landlock_entries(ruleset, where, packed, len(packed), READ,
                                            _FILE_ONLY))
    finally:
        os.close(where)
        os.close(ruleset)


def _tree(root: pathlib.Path) -> None:
    (root / "dir").mkdir()
    (root / "file").write_text("f")
    (root / "hole").write_text("h")
    (root / "way").mkdir()
    os.mkfifo(root / "fifo")
    (root / "link").symlink_to("/etc")
    (root / "dangling").symlink_to(root / "nowhere")


def test_every_entry_but_the_skipped_and_the_links_gets_a_rule(tmp_path: pathlib.Path) -> None:
    _tree(tmp_path)
    assert _granted(tmp_path, {"hole", "way"}) == 3  # dir, file, fifo
    assert _granted(tmp_path, set()) == 5  # control: the skipped names are granted without skip
    # As many as carve() lists for the same directory (its Python expansion).
    assert len(list(entries_rules(Entries(str(tmp_path), frozenset({"hole", "way"}))))) == 3


def test_a_large_directory_is_read_whole(tmp_path: pathlib.Path) -> None:
    """Several getdents64 batches (long names: more than one 16 KiB buffer)."""
    for i in range(600):
        (tmp_path / f"{i:05d}{'x' * 100}").write_text("")
    assert _granted(tmp_path, {f"{7:05d}{'x' * 100}"}) == 599


def test_errors_come_back_as_minus_errno(tmp_path: pathlib.Path) -> None:
    (tmp_path / "f").write_text("")
    where = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = lib.asl_landlock_entries(-1, where, b"", 0, READ, _FILE_ONLY)  # no ruleset
    finally:
        os.close(where)
    assert got == -9  # EBADF


def test_layout_leaves_the_siblings_to_whoever_adds_them(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "secret").write_text("s")
    (tmp_path / "a" / "ok").write_text("o")
    (tmp_path / "b").write_text("b")
    root = resolve(str(tmp_path))
    parts = layout(str(tmp_path), [str(tmp_path / "a" / "secret")])
    assert parts == (Rule(root, False), Entries(root, frozenset({"a"})),
                     Rule(f"{root}/a", False), Entries(f"{root}/a", frozenset({"secret"})))
    # carve() is the same rules with each Entries listed.
    assert set(carve(str(tmp_path), [str(tmp_path / "a" / "secret")])) == {
        Rule(root, False), Rule(f"{root}/b", True), Rule(f"{root}/a", False),
        Rule(f"{root}/a/ok", True)}
