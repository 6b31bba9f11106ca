"""Named groups of syscalls for handlers, and where each one's path argument is.

A handler that decides on a file by its name must trap every syscall that can
reach the file by a name, not only the one a program happens to use today:
``openat`` alone misses ``open``, ``creat`` and ``openat2``, which reach the
same file with no race at all.  ``Handler.syscalls`` may therefore name a
group, ``"@open"``, instead of its members; the group lists every member on
either architecture, and those the running one lacks (``open`` on aarch64)
are skipped as any name is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._kernel._notify import HandlerCtx

#: Per group: (syscall, index of its path argument).  Where a call names two
#: paths (rename, link) the first is listed; symlink's is the link it makes.
_GROUPS: Final[Mapping[str, tuple[tuple[str, int], ...]]] = {
    "open": (("open", 0), ("openat", 1), ("openat2", 1), ("creat", 0)),
    "stat": (("stat", 0), ("lstat", 0), ("newfstatat", 1), ("statx", 1)),
    "exec": (("execve", 0), ("execveat", 1)),
    "access": (("access", 0), ("faccessat", 1), ("faccessat2", 1)),
    "readlink": (("readlink", 0), ("readlinkat", 1)),
    "remove": (("unlink", 0), ("unlinkat", 1), ("rmdir", 0)),
    "mkdir": (("mkdir", 0), ("mkdirat", 1), ("mknod", 0), ("mknodat", 1)),
    "rename": (("rename", 0), ("renameat", 1), ("renameat2", 1)),
    "link": (("link", 0), ("linkat", 1), ("symlink", 1), ("symlinkat", 2)),
    "chdir": (("chdir", 0),),
    "truncate": (("truncate", 0),),
}

#: Group name (with its ``@``) -> member syscall names.
SYSCALL_GROUPS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    **{f"@{group}": tuple(name for name, _ in members) for group, members in _GROUPS.items()},
    # Every call above: what a handler guarding files by name should trap.
    "@file": tuple(name for members in _GROUPS.values() for name, _ in members),
})

_PATH_ARG: Final[Mapping[str, int]] = MappingProxyType(
    {name: index for members in _GROUPS.values() for name, index in members})


def expand(names: Iterable[str]) -> list[tuple[str, bool]]:
    """``names`` with each ``@group`` replaced by its members, in order:
    ``(syscall, came_from_a_group)``.  An unknown group name is kept as is,
    for the caller's name check to refuse."""
    out: list[tuple[str, bool]] = []
    for name in names:
        members = SYSCALL_GROUPS.get(name) if name.startswith("@") else None
        if members is None:
            out.append((name, False))
        else:
            out.extend((member, True) for member in members)
    return out


def path_argument(syscall: str) -> int | None:
    """The index in ``ctx.args`` of the path a grouped syscall names, or None."""
    return _PATH_ARG.get(syscall)


async def read_path(ctx: HandlerCtx, max_len: int = 4096) -> bytes:
    """The path the trapped call names (any syscall of :data:`SYSCALL_GROUPS`).

    Relative paths are relative to the directory fd in the argument before
    it (``*at`` calls) or the child's working directory, as the kernel reads
    them.  Raises :class:`ValueError` for a syscall with no path argument.
    """
    index = path_argument(ctx.syscall)
    if index is None:
        raise ValueError(f"{ctx.syscall} has no path argument that asyncsandlock knows of")
    return await ctx.read_cstr(ctx.args[index], max_len)
