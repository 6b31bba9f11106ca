"""``uid``/``gid`` and ``no_coredump``: the child's identity, from a root
caller (setresuid) and from an unprivileged one (a user namespace, run here
as uid 65534 in a subprocess), and what the kernel's ownership checks then
protect.  Each escape is paired with its control: the same attempt without
the identity (or on a file the identity owns) works.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import asyncsandlock._identity
from asyncsandlock import (
    SYSTEM_READABLE,
    ConfinementUnavailable,
    PolicyError,
    Protection,
    Sandbox,
    Subsystem,
    allow_degraded,
)
from asyncsandlock._cli import main as cli_main
from asyncsandlock._plan import peek

from conftest import build_helper

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

PY = "/usr/bin/python3"
IDS = "import os; print(*os.getresuid(), *os.getresgid(), *os.getgroups())"
PR_GET_DUMPABLE = 3
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs a root caller")


# -- validation -------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"uid": -1}, "uid"), ({"uid": 1 << 32}, "uid"), ({"uid": (1 << 32) - 1}, "uid"),
    ({"uid": 1 << 4000}, "uid"), ({"uid": True}, "uid"), ({"uid": "65534"}, "uid"),
    ({"uid": 1.0}, "uid"), ({"uid": 1, "gid": -5}, "gid"), ({"gid": 5}, "gid"),
    ({"no_coredump": 1}, "no_coredump"),
])
def test_bad_identity_fields_are_policy_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        Sandbox(**kwargs)


def test_gid_defaults_to_uid() -> None:
    assert (Sandbox(uid=65534).uid, Sandbox(uid=65534).gid) == (65534, 65534)
    assert Sandbox(uid=0, gid=5).gid == 5
    assert Sandbox(uid=(1 << 32) - 2).uid == (1 << 32) - 2


# -- a root caller ------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[pathlib.Path]:
    """A writable tree holding root's files: one private, one in a root-owned
    directory, and one owned by 65534 (the control)."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="asl-identity-", dir="/tmp"))
    base.chmod(0o777)
    (base / "root-private").write_text("secret\n")
    (base / "root-private").chmod(0o600)
    (base / "root-dir").mkdir(mode=0o755)
    (base / "root-dir" / "f").write_text("f\n")
    (base / "root-dir" / "f").chmod(0o644)
    (base / "own").write_text("own\n")
    (base / "own").chmod(0o600)
    if os.geteuid() == 0:
        os.chown(base / "own", 65534, 65534)
    yield base
    shutil.rmtree(base)


def sandbox(tree: pathlib.Path, **kwargs: Any) -> Sandbox:
    helper = build_helper("escape")
    return Sandbox(fs_readable=[*SYSTEM_READABLE, os.path.dirname(helper)],
                   fs_writable=[tree], **kwargs)


@root_only
async def test_ids_inside(tree: pathlib.Path) -> None:
    got = await sandbox(tree, uid=65534).run([PY, "-c", IDS])
    assert got.stdout.split() == [b"65534"] * 6  # no supplementary group
    assert got.protections[Subsystem.IDENTITY] is Protection.ACTIVE
    other = await sandbox(tree, uid=1000, gid=1001).run([PY, "-c", IDS])
    assert other.stdout.split() == [b"1000"] * 3 + [b"1001"] * 3
    control = await sandbox(tree).run([PY, "-c", IDS])
    assert control.stdout.split()[:6] == [b"0"] * 6
    assert control.protections[Subsystem.IDENTITY] is Protection.NOT_REQUESTED


@root_only
async def test_the_callers_dumpable_flag_and_the_childs_pdeathsig_survive(
        tree: pathlib.Path) -> None:
    """Regression test: setresuid in a child that shares the caller's memory
    made the caller undumpable, and cleared the child's parent-death signal."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1
    code = ("import ctypes; s = ctypes.c_int(); "
            "ctypes.CDLL(None).prctl(2, ctypes.byref(s), 0, 0, 0); print(s.value)")
    held = await sandbox(tree, uid=65534).run([PY, "-c", code])
    assert held.stdout.strip() == str(int(signal.SIGKILL)).encode()
    assert libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1
    control = await sandbox(tree).run([PY, "-c", code])
    assert control.stdout == held.stdout


ROOT_FILES = [
    ("read-root-private", ("open", "{t}/root-private", "r")),
    ("write-root-file", ("open", "{t}/root-dir/f", "w")),
    ("create-in-root-dir", ("open", "{t}/root-dir/new", "c")),
    ("unlink-in-root-dir", ("unlink", "{t}/root-dir/f")),
    ("chmod-root-file", ("chmod", "{t}/root-dir/f", "0666")),
]


@root_only
@pytest.mark.parametrize(("name", "args"), ROOT_FILES, ids=[r[0] for r in ROOT_FILES])
async def test_uid_65534_cannot_touch_root_files_in_granted_trees(
        tree: pathlib.Path, name: str, args: tuple[str, ...]) -> None:
    argv = [build_helper("escape"), *(a.format(t=tree) for a in args)]
    held = await sandbox(tree, uid=65534).run(argv)
    assert held.returncode in (errno.EACCES, errno.EPERM), held
    assert (tree / "root-private").read_text() == "secret\n"
    assert (tree / "root-dir" / "f").stat().st_mode & 0o777 == 0o644
    control = await sandbox(tree).run(argv)  # the same, as the root child it is without
    assert control.returncode == 0, control


@root_only
async def test_uid_65534_keeps_what_it_owns(tree: pathlib.Path) -> None:
    helper = build_helper("escape")
    assert (await sandbox(tree, uid=65534).run([helper, "open", f"{tree}/own", "w"])
            ).returncode == 0
    assert (await sandbox(tree, uid=65534).run([helper, "open", f"{tree}/made", "c"])
            ).returncode == 0
    assert (tree / "made").stat().st_uid == 65534


@root_only
async def test_a_low_bind_port_needs_the_uid_to_keep_a_capability(tree: pathlib.Path) -> None:
    """setresuid to a non-zero uid empties the capability sets: the child
    keeps no CAP_NET_BIND_SERVICE (see docs/files.md)."""
    sb = Sandbox(fs_readable=SYSTEM_READABLE, net_allow_bind=[80], uid=65534)
    got = await sb.run([PY, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 80))"])
    assert got.returncode != 0 and b"PermissionError" in got.stderr
    # The control: without a uid, the root child keeps CAP_NET_BIND_SERVICE for it.
    control = await Sandbox(fs_readable=SYSTEM_READABLE, net_allow_bind=[80]).run(
        [PY, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 80))"])
    assert control.returncode == 0, control.stderr


# -- no_coredump --------------------------------------------------------------

CRASH = ("import os, resource\n"
         "try:\n"
         "    resource.setrlimit(resource.RLIMIT_CORE, (-1, -1))\n"
         "except (ValueError, OSError) as exc:\n"
         "    print('raise refused', exc, flush=True)\n"
         "print(resource.getrlimit(resource.RLIMIT_CORE), flush=True)\n"
         "os.abort()\n")


async def test_no_coredump_leaves_no_core(tree: pathlib.Path) -> None:
    work = tree / "work"
    work.mkdir(mode=0o777)
    sb = Sandbox(fs_readable=SYSTEM_READABLE, fs_writable=[work], cwd=work, no_coredump=True)
    held = await sb.run([PY, "-c", CRASH])
    assert held.returncode == -6
    assert b"raise refused" in held.stdout and b"(0, 0)" in held.stdout
    assert not [p for p in work.iterdir() if p.name.startswith("core")]
    if pathlib.Path("/proc/sys/kernel/core_pattern").read_text().strip() != "core":
        pytest.skip("the control needs core_pattern 'core' (cores written in the cwd)")
    control = await Sandbox(fs_readable=SYSTEM_READABLE, fs_writable=[work], cwd=work).run(
        [PY, "-c", CRASH])
    assert control.returncode == -6 and b"raise refused" not in control.stdout
    assert [p for p in work.iterdir() if p.name.startswith("core")]


# -- a refusal ----------------------------------------------------------------


async def test_a_refused_identity_goes_to_on_unavailable(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A user namespace whose map the kernel refuses (here: an outer id
    that does not exist) is a refusal of IDENTITY, not a silent skip."""
    monkeypatch.setattr(asyncsandlock._identity, "permitted_mask", lambda: 0)
    monkeypatch.setattr(asyncsandlock._identity.os, "geteuid", lambda: (1 << 32) - 1)
    refused = Sandbox(fs_readable=SYSTEM_READABLE, uid=5)
    with pytest.raises(ConfinementUnavailable) as info:
        await refused.run([PY, "-c", IDS])
    assert info.value.subsystem is Subsystem.IDENTITY
    assert info.value.unenforced == ("uid", "gid")
    del info
    sb = Sandbox(fs_readable=SYSTEM_READABLE, uid=5,
                 on_unavailable=allow_degraded(Subsystem.IDENTITY))
    with caplog.at_level(logging.WARNING, logger="asyncsandlock"):
        got = await sb.run([PY, "-c", IDS])
    assert "identity" in caplog.text and "uid, gid" in caplog.text
    assert got.protections[Subsystem.IDENTITY] is Protection.DEGRADED
    assert got.unenforced[Subsystem.IDENTITY] == ("uid", "gid")
    assert got.stdout.split()[0] == str(os.getuid()).encode()
    # The owner keeps the refusal, whose traceback holds the Sandbox: close
    # it, or the ruleset fd lives as long as this process.
    for policy in (sb, refused):
        owner = peek(policy)
        if owner is not None:
            owner.close()


# -- an unprivileged caller: a user namespace ----------------------------------

_CALLER = r"""
import json, os, sys
import anyio
from asyncsandlock import SYSTEM_READABLE, Sandbox, Subsystem
import asyncsandlock._run, asyncsandlock._process, asyncsandlock._pipeline
import anyio._backends._asyncio, anyio._backends._trio  # every import before the drop
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
tree, helper, backend = sys.argv[1:4]
IDS = "import os; print(*os.getresuid(), *os.getresgid(), *os.getgroups())"
async def main():
    out = {}
    for label, kw in (("none", {}), ("root", {"uid": 0}), ("other", {"uid": 1234, "gid": 5})):
        sb = Sandbox(fs_readable=[*SYSTEM_READABLE, os.path.dirname(helper)],
                     fs_writable=[tree], **kw)
        ids = await sb.run(["/usr/bin/python3", "-c", IDS])
        mine = await sb.run([helper, "open", tree + "/own", "w"])
        roots = await sb.run([helper, "open", tree + "/root-private", "r"])
        chown = await sb.run([helper, "chown", tree + "/own", "0", "0"])
        holed = Sandbox(fs_readable=[*SYSTEM_READABLE, os.path.dirname(helper)],
                        fs_writable=[tree], fs_denied=[tree + "/own"], **kw)
        denied = await holed.run([helper, "open", tree + "/own", "w"])
        out[label] = [ids.stdout.decode().split(), mine.returncode, roots.returncode,
                      chown.returncode, ids.protections[Subsystem.IDENTITY].value,
                      denied.returncode]
    print(json.dumps(out))
anyio.run(main, backend=backend)
"""


@root_only
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_unprivileged_caller_maps_the_ids_in_a_user_namespace(tree: pathlib.Path,
                                                              backend: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CALLER, str(tree), build_helper("escape"),
                           backend], capture_output=True, text=True, timeout=60,
                          cwd="/", stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    # The control: the caller's own identity, which owns "own" (unless denied).
    assert out["none"] == [["65534"] * 6, 0, errno.EACCES, errno.EPERM, "not-requested",
                           errno.EACCES]
    # uid 0 inside is the caller outside: it owns "own", not root's files,
    # and cannot give its file away; fs_denied holds in the namespace too.
    assert out["root"][0] == ["0"] * 6
    assert out["root"][1:] == [0, errno.EACCES, errno.EPERM, "active", errno.EACCES]
    assert out["other"][0] == ["1234"] * 3 + ["5"] * 3
    assert out["other"][1:] == [0, errno.EACCES, errno.EPERM, "active", errno.EACCES]


# -- the command line ------------------------------------------------------------


@root_only
def test_cli_uid_gid_and_deny(tree: pathlib.Path, capfd: pytest.CaptureFixture[str]) -> None:
    read = [arg for path in SYSTEM_READABLE for arg in ("-r", path)]
    code = cli_main(["run", *read, "-r", str(tree), "--uid", "65534", "--gid", "5",
                     "--deny", str(tree / "own"), "--no-coredump", "--",
                     "sh", "-c", f"id -u; id -g; ulimit -Hc; cat {tree}/own"])
    out, err = capfd.readouterr()
    assert out.split() == ["65534", "5", "0"]
    assert code == 1 and "Permission denied" in err
