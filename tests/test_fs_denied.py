"""``fs_denied``: holes in granted trees, and the ways around them.

A project ``proj`` is writable; ``proj/.env`` (a file), ``proj/secret`` (a
directory) and ``proj/sub/.env`` are denied.  Each escape runs the escape
helper (exit 0: it got through, else the refusing errno) under the policy
with the holes, and as its control under the same policy without them,
where it must work: a refusal then is the hole's doing.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from asyncsandlock import SYSTEM_READABLE, PolicyError, Sandbox, SpawnError, Subsystem
from asyncsandlock._enforcement import unenforced

from conftest import build_helper

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

HELD = {errno.EACCES, errno.EPERM, errno.EXDEV}


@pytest.fixture
def proj() -> Iterator[pathlib.Path]:
    base = pathlib.Path(tempfile.mkdtemp(prefix="asl-denied-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "proj"
    for sub in ("src", "secret", "sub"):
        (root / sub).mkdir(parents=True)
    (root / ".env").write_text("TOKEN=1\n")
    (root / "secret" / "key").write_text("KEY\n")
    (root / "sub" / ".env").write_text("TOKEN=2\n")
    (root / "sub" / "ok").write_text("ok\n")
    (root / "src" / "main.py").write_text("print(1)\n")
    (root / "notes.txt").write_text("notes\n")
    yield root
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def helper() -> str:
    return build_helper("escape")


def policies(proj: pathlib.Path, helper: str, **extra: object) -> tuple[Sandbox, Sandbox]:
    """(with the holes, its control without them)."""
    readable = (*SYSTEM_READABLE, os.path.dirname(helper))
    denied = (proj / ".env", proj / "secret", proj / "sub" / ".env")
    return (Sandbox(fs_readable=readable, fs_writable=[proj], fs_denied=denied, **extra),  # type: ignore[arg-type]
            Sandbox(fs_readable=readable, fs_writable=[proj], **extra))  # type: ignore[arg-type]


async def outcome(sb: Sandbox, *argv: str) -> int:
    result = await sb.run(list(argv), timeout=30)
    return result.returncode


#: (id, helper arguments over {p}: the project); each must be held with the
#: holes and work without them.
ESCAPES = [
    ("read-file", ("open", "{p}/.env", "r")),
    ("write-file", ("open", "{p}/.env", "w")),
    ("truncate-file", ("open", "{p}/.env", "t")),
    ("read-in-dir", ("open", "{p}/secret/key", "r")),
    ("create-in-dir", ("open", "{p}/secret/new", "c")),
    ("mkdir-in-dir", ("mkdir", "{p}/secret/sub")),
    ("unlink-file", ("unlink", "{p}/.env")),
    ("unlink-in-dir", ("unlink", "{p}/secret/key")),
    ("nested-read", ("open", "{p}/sub/.env", "r")),
    ("dotdot", ("open", "{p}/src/../.env", "r")),
    ("openat-dotdot", ("openat-dir", "{p}/src", "../secret/key", "r")),
    ("chdir-relative", ("chdir-open", "{p}/secret", "key", "r")),
    ("symlink-to-file", ("symlink-open", "{p}/.env", "{p}/src/link", "r")),
    ("symlink-to-dir", ("symlink-open", "{p}/secret/key", "{p}/src/link", "r")),
    ("hardlink-into-granted", ("link-open", "{p}/.env", "{p}/src/hard", "r")),
    ("rename-file-out", ("rename", "{p}/.env", "{p}/src/moved")),
    ("rename-dir-out", ("rename", "{p}/secret", "{p}/src/moved")),
    # Moving the hole's parent under a granted tree would give it that tree's rights.
    ("rename-parent", ("rename", "{p}/sub", "{p}/src/moved")),
    ("exchange-parent", ("exchange", "{p}/sub", "{p}/src")),
    ("replace-file", ("rename", "{p}/src/main.py", "{p}/.env")),
    ("reopen-proc-fd", ("reopen", "{p}/.env")),
    ("proc-self-root", ("open", "/proc/self/root{p}/.env", "r")),
]


@pytest.mark.parametrize(("name", "args"), ESCAPES, ids=[e[0] for e in ESCAPES])
async def test_escape_is_held(proj: pathlib.Path, helper: str, name: str,
                              args: tuple[str, ...]) -> None:
    denied, control = policies(proj, helper)
    argv = [helper, *(a.format(p=proj) for a in args)]
    assert await outcome(control, *argv) == 0, "control: the attempt works without the holes"
    # The control may have changed the tree: rebuild what the attempt aims at.
    _restore(proj)
    assert await outcome(denied, *argv) in HELD
    assert (proj / ".env").read_text() == "TOKEN=1\n"
    assert (proj / "secret" / "key").read_text() == "KEY\n"


def _restore(proj: pathlib.Path) -> None:
    for moved in ("moved", "link", "hard"):
        path = proj / "src" / moved
        if path.is_dir() and not path.is_symlink():
            path.rename(proj / ("secret" if (path / "key").exists() else "sub"))
        elif path.exists() or path.is_symlink():
            if moved == "moved" and not (proj / ".env").exists():
                path.rename(proj / ".env")
            else:
                path.unlink()
    if (proj / "src" / "sub").exists():  # exchanged back
        os.rename(proj / "sub", proj / "tmp")
        os.rename(proj / "tmp", proj / "src")
        shutil.rmtree(proj / "sub", ignore_errors=True)
    (proj / ".env").write_text("TOKEN=1\n")
    (proj / "secret").mkdir(exist_ok=True)
    (proj / "secret" / "key").write_text("KEY\n")
    shutil.rmtree(proj / "secret" / "sub", ignore_errors=True)
    for extra in ("new",):
        (proj / "secret" / extra).unlink(missing_ok=True)
    (proj / "src").mkdir(exist_ok=True)
    (proj / "src" / "main.py").write_text("print(1)\n")
    (proj / "sub").mkdir(exist_ok=True)
    (proj / "sub" / ".env").write_text("TOKEN=2\n")


async def test_proc_fd_of_an_o_path_handle_is_held(proj: pathlib.Path, helper: str) -> None:
    """An O_PATH handle needs no right; reopening it through /proc/self/fd is
    an open like any other, checked against the hole."""
    code = ("import os,sys; fd=os.open(sys.argv[1], os.O_PATH);"
            "print(open(f'/proc/self/fd/{fd}').read())")
    denied, control = policies(proj, helper)
    ok = await control.run(["/usr/bin/python3", "-c", code, str(proj / ".env")])
    assert ok.returncode == 0 and b"TOKEN" in ok.stdout
    held = await denied.run(["/usr/bin/python3", "-c", code, str(proj / ".env")])
    assert held.returncode != 0 and b"PermissionError" in held.stderr


async def test_beside_the_holes_everything_keeps_its_rights(proj: pathlib.Path,
                                                            helper: str) -> None:
    denied, _ = policies(proj, helper)
    for args in (("open", f"{proj}/notes.txt", "w"), ("open", f"{proj}/sub/ok", "r"),
                 ("open", f"{proj}/src/new", "c"), ("mkdir", f"{proj}/src/d"),
                 ("unlink", f"{proj}/src/main.py"), ("readdir", f"{proj}"),
                 ("rename", f"{proj}/src/new", f"{proj}/src/d/new")):
        assert await outcome(denied, helper, *args) == 0, args


async def test_holed_directories_list_but_take_no_new_entries(proj: pathlib.Path,
                                                              helper: str) -> None:
    """The project (it holds holes) can be listed, names of the holes
    included; nothing can be created in, or removed from, it directly."""
    denied, control = policies(proj, helper)
    listing = await denied.run([helper, "readdir", str(proj)])
    assert listing.returncode == 0
    assert set(listing.stdout.split()) >= {b".env", b"secret", b"notes.txt"}
    # Names inside a denied directory can be listed (READ_DIR is inherited).
    assert await outcome(denied, helper, "readdir", f"{proj}/secret") == 0
    for args in (("open", f"{proj}/new", "c"), ("mkdir", f"{proj}/newdir"),
                 ("unlink", f"{proj}/notes.txt")):
        assert await outcome(control, helper, *args) == 0, args
        _restore(proj)
        (proj / "notes.txt").write_text("notes\n")
        for made in ("new", "newdir"):
            if (proj / made).is_dir():
                (proj / made).rmdir()
            else:
                (proj / made).unlink(missing_ok=True)
        assert await outcome(denied, helper, *args) == errno.EACCES, args


async def test_entries_made_later_in_a_holed_directory_fail_closed(
        proj: pathlib.Path, helper: str) -> None:
    denied, _ = policies(proj, helper)
    assert await outcome(denied, helper, "open", f"{proj}/notes.txt", "r") == 0  # compiled now
    (proj / "later.txt").write_text("later\n")
    (proj / "later").mkdir()
    (proj / "later" / "f").write_text("f\n")
    assert await outcome(denied, helper, "open", f"{proj}/later.txt", "r") == errno.EACCES
    assert await outcome(denied, helper, "open", f"{proj}/later/f", "r") == errno.EACCES
    # A Sandbox made now lists them among the siblings.
    fresh, _ = policies(proj, helper)
    assert await outcome(fresh, helper, "open", f"{proj}/later.txt", "r") == 0


async def test_a_missing_denied_path_stays_denied_when_it_appears(proj: pathlib.Path,
                                                                  helper: str) -> None:
    readable = (*SYSTEM_READABLE, os.path.dirname(helper))
    sb = Sandbox(fs_readable=readable, fs_writable=[proj], fs_denied=[proj / "src" / "token"])
    assert await outcome(sb, helper, "open", f"{proj}/src/token", "c") == errno.EACCES
    assert await outcome(sb, helper, "open", f"{proj}/src/main.py", "w") == 0
    (proj / "src" / "token").write_text("t\n")
    assert await outcome(sb, helper, "open", f"{proj}/src/token", "r") == errno.EACCES


async def test_holes_named_through_links_and_grants_through_links(proj: pathlib.Path,
                                                                  helper: str) -> None:
    alias = proj.parent / "alias"
    alias.symlink_to(proj)
    (proj / "src" / "env-link").symlink_to("../.env")
    readable = (*SYSTEM_READABLE, os.path.dirname(helper))
    sb = Sandbox(fs_readable=readable, fs_writable=[alias], fs_denied=[alias / "src" / "env-link"])
    assert await outcome(sb, helper, "open", f"{proj}/.env", "r") == errno.EACCES
    assert await outcome(sb, helper, "open", f"{alias}/.env", "r") == errno.EACCES
    assert await outcome(sb, helper, "open", f"{proj}/notes.txt", "w") == 0


async def test_denied_wins_over_a_grant_it_contains(proj: pathlib.Path, helper: str) -> None:
    readable = (*SYSTEM_READABLE, os.path.dirname(helper))
    sb = Sandbox(fs_readable=readable, fs_writable=[proj / "src"], fs_denied=[proj])
    assert await outcome(sb, helper, "open", f"{proj}/src/main.py", "r") == errno.EACCES
    control = Sandbox(fs_readable=readable, fs_writable=[proj / "src"])
    assert await outcome(control, helper, "open", f"{proj}/src/main.py", "r") == 0


async def test_a_hole_in_a_readable_grant_under_a_writable_one(proj: pathlib.Path,
                                                               helper: str) -> None:
    """Grants add up: each one is carved, so no grant brings the hole back."""
    readable = (*SYSTEM_READABLE, os.path.dirname(helper), proj.parent)
    sb = Sandbox(fs_readable=readable, fs_writable=[proj], fs_denied=[proj / ".env"])
    assert await outcome(sb, helper, "open", f"{proj}/.env", "r") == errno.EACCES
    assert await outcome(sb, helper, "open", f"{proj}/notes.txt", "w") == 0


def test_fs_denied_is_validated() -> None:
    with pytest.raises(PolicyError, match="fs_denied"):
        Sandbox(fs_denied="/etc")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="fs_denied"):
        Sandbox(fs_denied=[""])
    with pytest.raises(PolicyError, match="fs_denied"):
        Sandbox(fs_denied=[3])  # type: ignore[list-item]
    sb = Sandbox(fs_denied=["/nonexistent/later", "relative", "/nonexistent/later"])
    assert sb.fs_denied == ("/nonexistent/later", os.path.abspath("relative"))


def test_without_landlock_fs_denied_is_named_unenforced() -> None:
    sb = Sandbox(fs_denied=["/nonexistent"])
    assert "fs_denied" in unenforced(sb, Subsystem.LANDLOCK)
    assert "fs_denied" in unenforced(sb, Subsystem.LANDLOCK_TRUNCATE)
    assert "fs_denied" not in unenforced(Sandbox(), Subsystem.LANDLOCK)


async def test_a_denied_program_in_a_system_tree_cannot_run() -> None:
    """A hole deep in SYSTEM_READABLE (/usr/bin holds ~1000 entries, each a rule)."""
    program = os.path.realpath(shutil.which("id") or "/usr/bin/id")
    sb = Sandbox(fs_readable=SYSTEM_READABLE, fs_denied=[program])
    with pytest.raises(SpawnError) as info:
        await sb.run([program])
    assert info.value.errno == errno.EACCES
    del info
    assert (await sb.run(["sh", "-c", "echo ok"])).stdout == b"ok\n"  # its siblings run
    assert (await Sandbox(fs_readable=SYSTEM_READABLE).run([program])).returncode == 0
