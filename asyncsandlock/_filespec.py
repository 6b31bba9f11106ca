"""Validation of the files-and-identity fields: ``fs_denied``, ``uid``,
``gid`` and ``no_coredump`` (see docs/files.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._exceptions import PolicyError
from ._validate import check_path, show

#: (uid_t)-1 means "unchanged" to setresuid(2): the largest id is one less.
ID_MAX = (1 << 32) - 2


@dataclass(frozen=True, slots=True)
class FilesFields:
    """The validated values, in the Sandbox's field order."""

    fs_denied: tuple[str, ...]
    uid: int | None
    gid: int | None
    no_coredump: bool


def _check_id(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(name, f"{show(value)} is not a numeric id (an int)")
    if not 0 <= value <= ID_MAX:
        raise PolicyError(name, f"{show(value)}: ids lie in 0-{ID_MAX}")
    return value


def check_files(fs_denied: object, uid: object, gid: object,
                no_coredump: object) -> FilesFields:
    """The fields, validated; a :class:`PolicyError` names the first bad one.

    A denied path need not exist (it may appear later, and is denied then).
    ``gid`` defaults to ``uid``; a ``gid`` without a ``uid`` is refused: a
    root caller's child would still be uid 0, which owns every root-owned file.
    """
    if isinstance(fs_denied, (str, bytes)) or not isinstance(fs_denied, Iterable):
        raise PolicyError("fs_denied", f"expected a sequence of paths, got {show(fs_denied)}")
    denied: list[str] = []
    for item in fs_denied:
        path = check_path("fs_denied", item)
        if path not in denied:
            denied.append(path)
    user = _check_id("uid", uid)
    group = _check_id("gid", gid)
    if group is not None and user is None:
        raise PolicyError("gid", f"{group} given without uid: set uid too (a child left "
                                 "as uid 0 owns every root-owned file)")
    if user is not None and group is None:
        group = user
    if not isinstance(no_coredump, bool):
        raise PolicyError("no_coredump", f"{show(no_coredump)} must be True or False")
    return FilesFields(tuple(denied), user, group, no_coredump)
