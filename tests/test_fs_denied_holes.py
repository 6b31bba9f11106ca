"""``_holes.carve``: the rules that carve ``fs_denied`` holes out of a grant.

The unit tests name the cases; the hypothesis test builds random trees (with
symbolic links in and out of them) and random holes, some of them missing,
and checks what a path's ancestors' rules give it, as Landlock unions them.
"""

from __future__ import annotations

import errno
import functools
import os
import pathlib
import shutil
import tempfile

import anyio
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from asyncsandlock import SYSTEM_READABLE, Sandbox
from asyncsandlock._holes import Rule, beneath, carve, carve_all, is_denied, resolve


def tree(root: pathlib.Path, spec: dict[str, object]) -> None:
    """dict -> directories, str -> files, ("link", target) -> symbolic links."""
    for name, value in spec.items():
        path = root / name
        if isinstance(value, dict):
            path.mkdir()
            tree(path, value)
        elif isinstance(value, tuple):
            path.symlink_to(value[1])
        else:
            path.write_text(str(value))


def rights(path: str, rules: tuple[Rule, ...]) -> str:
    """What ``path`` gets from ``rules`` as Landlock unions them:
    "whole", "list" or "none"."""
    where = resolve(path)
    if any(rule.whole and beneath(where, resolve(rule.path)) for rule in rules):
        return "whole"
    if any(not rule.whole and beneath(where, resolve(rule.path)) for rule in rules):
        return "list"
    return "none"


def test_without_holes_the_grant_is_one_rule_as_written(tmp_path: pathlib.Path) -> None:
    assert carve(str(tmp_path), ()) == (Rule(str(tmp_path), True),)
    other = tmp_path / "x"
    other.mkdir()
    assert carve(str(other), [str(tmp_path / "y")]) == (Rule(str(other), True),)


def test_a_hole_splits_its_ancestors_into_their_entries(tmp_path: pathlib.Path) -> None:
    tree(tmp_path, {"a": {"secret": "s", "ok": "o", "sub": {"f": "f"}}, "b": "b"})
    rules = carve(str(tmp_path), [str(tmp_path / "a" / "secret")])
    assert rules == (Rule(str(tmp_path), False), Rule(str(tmp_path / "a"), False),
                     Rule(str(tmp_path / "a" / "ok"), True),
                     Rule(str(tmp_path / "a" / "sub"), True), Rule(str(tmp_path / "b"), True))
    assert rights(str(tmp_path / "a" / "secret"), rules) == "list"  # listed, never opened
    assert rights(str(tmp_path / "a" / "sub" / "f"), rules) == "whole"


def test_denied_wins_over_the_grant_it_contains(tmp_path: pathlib.Path) -> None:
    (tmp_path / "g").mkdir()
    assert carve(str(tmp_path / "g"), [str(tmp_path)]) == ()
    assert carve(str(tmp_path / "g"), [str(tmp_path / "g")]) == ()


def test_a_missing_hole_holes_its_nearest_existing_ancestor(tmp_path: pathlib.Path) -> None:
    tree(tmp_path, {"a": {"keep": "k"}})
    rules = carve(str(tmp_path), [str(tmp_path / "a" / "later" / "deeper")])
    assert Rule(str(tmp_path / "a"), False) in rules
    assert rights(str(tmp_path / "a" / "later" / "deeper"), rules) == "list"
    assert rights(str(tmp_path / "a" / "later"), rules) == "list"  # appears later: nothing
    assert rights(str(tmp_path / "a" / "keep"), rules) == "whole"


def test_links_are_resolved_and_never_carry_a_rule(tmp_path: pathlib.Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    grant = tmp_path / "g"
    tree(grant.parent, {"g": {"d": {"secret": "s", "x": "x"},
                              "to_out": ("link", str(outside)),
                              "to_secret": ("link", "d/secret")}})
    alias = tmp_path / "alias"
    alias.symlink_to(grant)
    # The hole named through a link to the grant, the grant through another.
    rules = carve(str(alias), [str(alias / "to_secret")])
    assert all(beneath(rule.path, str(grant)) for rule in rules)
    assert rights(str(grant / "d" / "secret"), rules) == "list"
    assert rights(str(grant / "d" / "x"), rules) == "whole"
    assert not any(rule.path.endswith(("to_out", "to_secret")) for rule in rules)


def test_carve_all_and_is_denied(tmp_path: pathlib.Path) -> None:
    tree(tmp_path, {"a": {"s": "s"}, "b": {"t": "t"}})
    rules = carve_all([str(tmp_path / "a"), str(tmp_path / "b")], [str(tmp_path / "a" / "s")])
    assert rules == (Rule(str(tmp_path / "a"), False), Rule(str(tmp_path / "b"), True))
    assert is_denied(str(tmp_path / "a" / "s" / "x"), [str(tmp_path / "a" / "s")])
    assert not is_denied(str(tmp_path / "a"), [str(tmp_path / "a" / "s")])


# -- random trees ---------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d"])


def _nodes(depth: int) -> st.SearchStrategy[object]:
    leaf = st.one_of(st.just("f"), st.tuples(st.just("link"),
                                              st.sampled_from(["../..", "a", "/", "b/c"])))
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.dictionaries(NAMES, _nodes(depth - 1), max_size=4))


TREES = st.dictionaries(NAMES, _nodes(3), min_size=1, max_size=4)
HOLES = st.lists(st.lists(NAMES, min_size=0, max_size=4), max_size=3)


def _walk(root: str) -> list[str]:
    """Every entry beneath ``root`` that is not a symbolic link, and one name
    that does not exist in each directory."""
    out = [root]
    for here, dirs, files in os.walk(root):
        out.append(os.path.join(here, "new-entry"))
        for name in dirs + files:
            path = os.path.join(here, name)
            if not os.path.islink(path):
                out.append(path)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES, HOLES)
def test_random_trees(spec: dict[str, object], hole_parts: list[list[str]]) -> None:
    base = tempfile.mkdtemp(prefix="asl-holes-")
    try:
        root = os.path.join(base, "g")
        os.mkdir(root)
        tree(pathlib.Path(root), spec)
        holes = [os.path.join(root, *parts) for parts in hole_parts]
        rules = carve(root, holes)
        resolved = [resolve(h) for h in holes]
        if any(beneath(root, h) for h in resolved):
            assert rules == ()
            return
        # No rule lands outside the grant (a link's target, say).
        assert all(beneath(resolve(rule.path), root) for rule in rules)
        for path in _walk(root):
            where = resolve(path)
            got = rights(path, rules)
            if any(beneath(where, h) for h in resolved):
                assert got != "whole", f"{path} lies in a hole yet is granted"
            elif os.path.isdir(where) and any(beneath(h, where) for h in resolved if h != where):
                assert got == "list", f"{path} holds a hole: list only, got {got}"
            elif os.path.lexists(path):
                # (a file "holding" a hole keeps its rights: nothing lies beneath a file)
                assert got == "whole", f"{path} lies beside every hole yet got {got}"
            else:
                # A name that appears later: whole only where its directory is.
                parent = os.path.dirname(path)
                assert got == rights(parent, rules) or got == "list"
    finally:
        shutil.rmtree(base)


# -- the same trees, under the kernel ----------------------------------------

_PROBE = r"""
import sys
for path in sys.argv[2:]:
    try:
        with open(path, "r+b" if sys.argv[1] == "w" else "rb") as f:
            f.read(1)
        print("ok")
    except OSError as exc:
        print(exc.errno)
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=TREES, hole_parts=HOLES, writable=st.booleans())
@example(spec={"a": {"b": "f", "c": "f"}, "d": "f"}, hole_parts=[["a", "b"]], writable=True)
@example(spec={"a": {"b": {"c": "f"}, "d": ("link", "b")}}, hole_parts=[["a", "d", "c"]],
         writable=False)
def test_random_trees_under_landlock(backend: str, spec: dict[str, object],
                                     hole_parts: list[list[str]], writable: bool) -> None:
    """Every file of a random tree opens (for reading, or for writing in a
    writable grant) exactly when it lies outside every hole."""
    base = tempfile.mkdtemp(prefix="asl-holes-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        root = os.path.join(base, "g")
        os.mkdir(root)
        tree(pathlib.Path(root), spec)
        holes = [os.path.join(root, *parts) for parts in hole_parts]
        # A hole through a link out of the tree (to "/") denies the system
        # itself, python3 included: that case is the model test's.
        assume(all(beneath(resolve(h), root) for h in holes))
        files = [p for p in _walk(root) if os.path.isfile(p) and not os.path.islink(p)]
        if not files:
            return
        sb = Sandbox(fs_readable=[*SYSTEM_READABLE, *([] if writable else [root])],
                     fs_writable=[root] if writable else [], fs_denied=holes)
        result = anyio.run(functools.partial(
            sb.run, ["/usr/bin/python3", "-c", _PROBE, "w" if writable else "r", *files]),
            backend=backend)
        got = result.stdout.decode().split()
        resolved = [resolve(h) for h in holes]
        for path, outcome in zip(files, got, strict=True):
            denied = any(beneath(resolve(path), h) for h in resolved)
            assert outcome == (str(errno.EACCES) if denied else "ok"), (path, holes)
        del sb, result
    finally:
        shutil.rmtree(base)
