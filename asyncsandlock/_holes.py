"""``fs_denied``: holes in granted trees, as Landlock rules that only add.

Landlock grants by inode: a rule on a directory gives its rights to every
file and directory beneath it, and rules only add.  There is no rule that
takes a right back.  So a hole is made by *not* granting the tree that holds
it: the grant is replaced by grants on each of its entries except the one on
the way to the hole, recursively down to the hole's parent.  What the child
then gets:

- everything beside a hole keeps the grant's rights, as before;
- the hole itself (a file, or a whole tree) gets nothing: no reading,
  writing, executing, creating or removing anything in it;
- each directory on the way to a hole (a *holed* directory) can only be
  listed (``LANDLOCK_ACCESS_FS_READ_DIR``).  Listing is inherited like every
  right, so the *names* inside a denied directory can be listed too; their
  contents cannot be opened.  Nothing can be created, removed or renamed
  directly in a holed directory (EACCES): those rights, given to the holed
  directory, would reach into the hole (unlink it, replace it, fill it);
- entries that appear later in a holed directory (made by the host; the
  child can make none) have no rule of their own: they fail closed, only
  listable.  The siblings are those present when the ruleset is built (a
  Sandbox's first run): a Sandbox made before the entry existed keeps
  denying it.

A denied path is resolved as Landlock resolves a grant: symbolic links are
followed when the ruleset is built, and the rule lands on the object found.
A denied path that does not exist yet is fine: its nearest existing
ancestor inside the grant becomes a holed directory, so whatever appears
there later gets nothing.  A denied path that contains a whole grant takes
the grant away (denied wins).

Symbolic links among the siblings get no rule: a rule on one would land on
its target, which may lie outside the grant (a link to ``/etc``), and
following a link needs no right of the link's own.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    """One Landlock rule of a carved grant: ``path`` with the grant's rights
    (``whole``), or a holed directory that may only be listed."""

    path: str
    whole: bool


def resolve(path: str) -> str:
    """``path`` absolute, with every symbolic link of its existing part
    followed (as ``open(O_PATH)`` follows them for a grant); a part that does
    not exist is kept as written."""
    return os.path.realpath(path)


def beneath(path: str, tree: str) -> bool:
    """Whether resolved ``path`` is ``tree`` or lies beneath it."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class Entries:
    """Every entry of ``directory`` but the names of ``skip`` (the holes and
    the ways to them) and symbolic links, each with the grant's rights:
    the siblings of a hole, listed when the rules are added."""

    directory: str
    skip: frozenset[str]


def carve(grant: str, denied: Iterable[str]) -> tuple[Rule, ...]:
    """The rules that give ``grant`` less every path of ``denied`` (all
    resolved with :func:`resolve`); empty when a denied path contains the
    grant.  Reads the directories on the way to each hole (``scandir``):
    local metadata, once per ruleset."""
    rules = [rule for part in layout(grant, denied)
             for rule in (entries_rules(part) if isinstance(part, Entries) else (part,))]
    # In the order of a walk of the tree, each directory's entries by name.
    return tuple(sorted(rules, key=lambda rule: rule.path.split("/")))


def entries_rules(part: Entries) -> Iterator[Rule]:
    """``part``'s rules, from the directory's listing of now, by name."""
    with os.scandir(part.directory) as entries:
        found = sorted(entries, key=lambda entry: entry.name)
    for entry in found:
        if entry.name not in part.skip and not entry.is_symlink():
            yield Rule(entry.path, True)


def layout(grant: str, denied: Iterable[str]) -> tuple[Rule | Entries, ...]:
    """:func:`carve`'s rules with each holed directory's siblings left as one
    :class:`Entries`, listed by whoever adds them (``_kernel._landlock`` does
    it in C, in one call per directory).  Reads only the ways to the holes
    (``lstat``), not the holed directories' listings."""
    return layout_resolved(grant, frozenset(resolve(path) for path in denied))


def layout_resolved(grant: str, holes: frozenset[str]) -> tuple[Rule | Entries, ...]:
    """:func:`layout` with the holes resolved already (:func:`resolve`):
    a ruleset resolves them once for all its grants."""
    if not holes:
        return (Rule(grant, True),)
    root = resolve(grant)
    if any(beneath(root, hole) for hole in holes):
        return ()
    inside = sorted(hole for hole in holes if beneath(hole, root))
    if not inside:
        return (Rule(grant, True),)
    if not os.path.isdir(root):  # a file cannot hold a hole: nothing beneath it
        return (Rule(grant, True),)
    return tuple(_split(root, inside))


def _split(directory: str, holes: Sequence[str]) -> Iterator[Rule | Entries]:
    """Rules for ``directory``, with ``holes`` strictly beneath it."""
    yield Rule(directory, False)
    prefix = directory.rstrip("/") + "/"
    # The first name under `directory` of each hole -> the holes through it.
    through: dict[str, list[str]] = {}
    for hole in holes:
        name = hole[len(prefix):].split("/", 1)[0]
        through.setdefault(name, []).append(hole)
    yield Entries(directory, frozenset(through))
    for name in sorted(through):
        below, path = through[name], prefix + name
        if path in below:
            continue  # the hole itself
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # a way not there (yet): whatever appears by that name gets nothing
        if stat.S_ISDIR(st.st_mode):
            yield from _split(path, below)
        elif not stat.S_ISLNK(st.st_mode):
            # A hole "beneath" a file: nothing can lie there, the file keeps its rights.
            yield Rule(path, True)


def carve_all(grants: Iterable[str], denied: Sequence[str]) -> tuple[Rule, ...]:
    """:func:`carve` for each grant, in order."""
    return tuple(rule for grant in grants for rule in carve(grant, denied))


def is_denied(path: str, denied: Iterable[str]) -> bool:
    """Whether ``path`` (resolved) lies in a hole."""
    where = resolve(path)
    return any(beneath(where, resolve(hole)) for hole in denied)
