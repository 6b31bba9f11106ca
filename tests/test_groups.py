"""Syscall groups for handlers: a denial by name must cover the whole family.

Regression test for issue 8, item 11: the documented handler trapped only
``openat``, and ``open``/``creat`` reached the same file with no race.
"""

from __future__ import annotations

import errno
import os
import pathlib
import platform

import pytest

from asyncsandlock import (
    SYSCALL_GROUPS,
    Handler,
    HandlerCtx,
    NotifAction,
    PolicyError,
    Sandbox,
    path_argument,
    read_path,
)
from asyncsandlock._handler import route
from asyncsandlock._kernel._sys import SYSCALLS

from conftest import system_sandbox

pytestmark = [pytest.mark.anyio]

# Each way a program can open "secret" by name; prints what it got.
_OPENERS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
nr = {"open": 2, "creat": 85} if os.uname().machine == "x86_64" else {}
def report(how, fd):
    print(how, "ok" if fd >= 0 else f"errno {ctypes.get_errno()}")
report("openat", libc.syscall(257, -100, b"secret", os.O_RDWR))
for how in ("open", "creat"):
    if how in nr:
        report(how, libc.syscall(nr[how], b"secret", os.O_RDWR if how == "open" else 0o600))
"""


class DenySecret(Handler):
    def __init__(self, *syscalls: str) -> None:
        self.syscalls = syscalls  # type: ignore[misc]

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        if os.path.basename(await read_path(ctx)) == b"secret":
            return NotifAction.errno(errno.EACCES)
        return NotifAction.continue_()


async def _attempts(work: pathlib.Path, handler: Handler) -> dict[str, str]:
    (work / "secret").write_text("s3cret")
    sb = system_sandbox(fs_writable=[work], cwd=work)
    result = await sb.run(["/usr/bin/python3", "-c", _OPENERS], handlers=[handler], timeout=30)
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.decode().splitlines())


@pytest.mark.skipif(platform.machine() != "x86_64", reason="open/creat exist on x86_64 only")
async def test_group_denial_covers_every_member(tmp_path: pathlib.Path, no_leaks: None) -> None:
    got = await _attempts(tmp_path, DenySecret("@open"))
    assert got == {"openat": f"errno {errno.EACCES}", "open": f"errno {errno.EACCES}",
                   "creat": f"errno {errno.EACCES}"}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="open/creat exist on x86_64 only")
async def test_control_openat_alone_leaves_the_family_open(tmp_path: pathlib.Path) -> None:
    """Control: the old documented pattern; open and creat get the file."""
    got = await _attempts(tmp_path, DenySecret("openat"))
    assert got == {"openat": f"errno {errno.EACCES}", "open": "ok", "creat": "ok"}


def test_groups_are_known_syscalls_with_a_path_argument() -> None:
    from asyncsandlock._kernel._syscalls import AARCH64, X86_64

    for group, members in SYSCALL_GROUPS.items():
        assert group.startswith("@") and members
        for name in members:
            assert name in X86_64 or name in AARCH64, (group, name)
            assert path_argument(name) is not None
    assert path_argument("fstat") is None


def test_route_expands_groups_and_skips_denied_members() -> None:
    _routes, names = route([DenySecret("@open")], SYSCALLS, frozenset({"openat2"}))
    assert "openat2" not in names.values()
    assert "openat" in names.values()
    # Named on its own, a denied syscall is still refused: the handler could never run.
    with pytest.raises(PolicyError, match="openat2"):
        route([DenySecret("openat2")], SYSCALLS, frozenset({"openat2"}))


def test_unknown_group_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="@nope"):
        Sandbox(handlers=[DenySecret("@nope")])
