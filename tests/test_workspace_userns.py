"""Copy-on-write workspaces for an unprivileged caller (uid 65534): the
child builds the layer and the overlay in a user namespace of its own
(csrc/spawn.c ``build_workspace``), and hands the layer's tmpfs to us.

Each test runs a caller that drops to uid 65534 in a fresh interpreter (as
tests/test_escapes_nobody.py does), on both backends.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the caller drops from root to uid 65534")

CALLER = """
import json, os, sys
import anyio, anyio._backends._asyncio, anyio._backends._trio  # root's files: import first
import asyncsandlock as a
root, backend, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
# The escape: take the overlay off the workdir (the child owned the user
# namespace it was built in), then write through to the directory under it.
SCRIPT = ("W=$PWD; umount -l $W 2>/dev/null; umount $W 2>/dev/null; cd /; cd $W; "
          "echo new > edit.txt; rm gone.txt; mkdir d; echo x > d/f; echo s > closed; "
          "chmod 000 closed; mkdir shut; echo y > shut/f; chmod 000 shut; id -u")
async def main():
    out = {}
    sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, on_exit="keep", **extra)
    try:
        r = await sb.run(["sh", "-c", SCRIPT])
    except a.ConfinementUnavailable as exc:
        print(json.dumps({"refused": exc.subsystem.value})); return
    out["rc"], out["id"] = r.returncode, r.stdout.decode().strip()
    out["err"] = r.stderr.decode()
    out["changes"] = [[c.path, c.kind, c.mode & 0o7777] for c in r.changes]
    out["protection"] = r.protections[a.Subsystem.WORKSPACE_OVERLAY].value
    out["mechanism"] = r.workspace.mechanism
    out["before_commit"] = open(os.path.join(root, "edit.txt")).read()
    out["gone_before_commit"] = os.path.exists(os.path.join(root, "gone.txt"))
    await r.workspace.commit()
    out["after_commit"] = open(os.path.join(root, "edit.txt")).read()
    out["listing"] = sorted(os.listdir(root))
    out["modes"] = {n: os.stat(os.path.join(root, n)).st_mode & 0o777 for n in ("closed", "shut")}
    # A detached tmpfs's root reads as "/" (SYSTEM_READABLE names no "/").
    def target(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None  # the listing's own fd
    out["roots"] = [f for f in os.listdir("/proc/self/fd") if target(f) == "/"]
    print(json.dumps(out))
anyio.run(main, backend=backend)
"""


@pytest.fixture
def world() -> Iterator[pathlib.Path]:
    """A project uid 65534 owns, where it can reach it (pytest's tmp_path is
    root's, 0700)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="workspace-userns-", dir="/tmp"))
    path.chmod(0o755)
    project = path / "project"
    project.mkdir()
    (project / "edit.txt").write_text("old\n")
    (project / "gone.txt").write_text("bye\n")
    temp = path / "tmp"
    temp.mkdir()
    for item in (project, project / "edit.txt", project / "gone.txt", temp):
        os.chown(item, 65534, 65534)
    yield project
    shutil.rmtree(path)


def _caller(project: pathlib.Path, backend: str, **extra: object) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CALLER, str(project), backend,
                           json.dumps(extra)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(project.parent / "tmp")})
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extra", [{}, {"uid": 0, "gid": 0}, {"network": "loopback"},
                                   {"uid": 1000, "gid": 1000, "network": "loopback"}],
                         ids=["plain", "uid0", "loopback", "uid1000+loopback"])
def test_an_unprivileged_caller_gets_a_layer_of_its_own(world: pathlib.Path, backend: str,
                                                        extra: dict[str, object]) -> None:
    out = _caller(world, backend, **extra)
    assert out["rc"] == 0, out["err"]
    assert out["id"] == str(extra.get("uid", 65534))
    assert out["protection"] == "active"
    assert out["mechanism"] == "overlay-userns"
    assert out["changes"] == [["closed", "added", 0], ["d", "added", 0o755],
                              ["d/f", "added", 0o644], ["edit.txt", "modified", 0o644],
                              ["gone.txt", "deleted", 0o644], ["shut", "added", 0],
                              ["shut/f", "added", 0o644]]
    # Escape: nothing reached the workdir before the commit ...
    assert out["before_commit"] == "old\n"
    assert out["gone_before_commit"] is True
    # ... control: the commit brings it all, modes as the command left them.
    assert out["after_commit"] == "new\n"
    assert out["listing"] == ["closed", "d", "edit.txt", "shut"]
    assert out["modes"] == {"closed": 0, "shut": 0}
    assert out["roots"] == []  # the layer's tmpfs went with the commit
    assert os.listdir(world.parent / "tmp") == []
    for name in ("shut", "closed"):
        os.chmod(world / name, 0o700)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extra", [{}, {"uid": 1000, "gid": 1000, "network": "loopback"}],
                         ids=["plain", "uid1000+loopback"])
def test_an_unprivileged_caller_gets_a_snapshot_of_its_own(world: pathlib.Path, backend: str,
                                                           extra: dict[str, object]) -> None:
    # The same script in a snapshot (uid 65534 may not write beside the
    # workdir: the copy goes to TMPDIR): the same changes, entries the
    # command closed (chmod 000) read and committed, nothing left behind.
    out = _caller(world, backend, workdir_mechanism="snapshot", **extra)
    assert out["rc"] == 0, out["err"]
    assert out["id"] == str(extra.get("uid", 65534))
    assert out["protection"] == "not-requested"  # the overlay's: a snapshot was asked for
    assert out["mechanism"] == "snapshot"
    assert out["changes"] == [["closed", "added", 0], ["d", "added", 0o755],
                              ["d/f", "added", 0o644], ["edit.txt", "modified", 0o644],
                              ["gone.txt", "deleted", 0o644], ["shut", "added", 0],
                              ["shut/f", "added", 0o644]]
    assert out["before_commit"] == "old\n" and out["gone_before_commit"] is True
    assert out["after_commit"] == "new\n"
    assert out["listing"] == ["closed", "d", "edit.txt", "shut"]
    assert out["modes"] == {"closed": 0, "shut": 0}
    assert os.listdir(world.parent / "tmp") == []
    for name in ("shut", "closed"):
        os.chmod(world / name, 0o700)


NO_SYS_ADMIN = """
import ctypes, json, os, sys
import anyio, anyio._backends._asyncio, anyio._backends._trio
import asyncsandlock as a
root, backend = sys.argv[1], sys.argv[2]
# Root without CAP_SYS_ADMIN (21), as in a container that lacks it: it may
# still setresuid (CAP_SETUID), but not mount.
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(24, 21, 0, 0, 0) == 0  # PR_CAPBSET_DROP
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
assert libc.capget(header, data) == 0
for i in (0, 1):  # effective, permitted of the low word
    data[i] &= ~(1 << 21)
assert libc.capset(header, data) == 0
async def main():
    out = {}
    for name, extra in (("uid", {"uid": 65534, "gid": 65534, "workdir_mechanism": "overlay"}),
                        ("plain", {}), ("uid-auto", {"uid": 65534, "gid": 65534})):
        sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, on_exit="abort", **extra)
        try:
            r = await sb.run(["sh", "-c", "echo new > edit.txt; id -u"])
            out[name] = [r.returncode, r.stdout.decode().strip(), [c.path for c in r.changes]]
        except a.ConfinementUnavailable as exc:
            out[name] = ["refused", exc.subsystem.value, str(exc)]
    print(json.dumps(out))
anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_caller_that_may_setuid_but_not_mount_is_refused_a_set_identity(
        world: pathlib.Path, backend: str) -> None:
    # Escape-shaped: uid=65534 from such a caller would be a setresuid to an
    # id its workspace's user namespace does not map.  It is refused before
    # anything starts, by name, not a spawn failing in the child; the
    # control: the same caller without uid gets its workspace.  By default
    # (workdir_mechanism="auto") a snapshot takes the overlay's place, where
    # uid 65534 meets root's files as it would in workdir: unwritable.
    for item in (world, world / "edit.txt"):
        os.chown(item, 0, 0)  # the caller's, as uid 0 without capabilities writes it
    done = subprocess.run([sys.executable, "-c", NO_SYS_ADMIN, str(world), backend],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["uid"][:2] == ["refused", "workspace-overlay"]
    assert "CAP_SYS_ADMIN" in out["uid"][2]
    assert out["plain"] == [0, "0", ["edit.txt"]]
    assert out["uid-auto"] == [0, "65534", []]
    assert (world / "edit.txt").read_text() == "old\n"


NO_USERNS = """
import os, sys
import anyio
import asyncsandlock as a
root, backend = sys.argv[1], sys.argv[2]
async def main():
    # In a user namespace of its own whose limit of nested ones is 0 (the
    # caller's own: the host's sysctl is untouched), as where the host
    # refuses them: the caller can't mount (its mount namespace is the
    # host's) and the child can't make the namespace to build the layer in.
    sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, workdir_mechanism="overlay",
                   on_unavailable=a.allow_degraded(*a.Subsystem))
    try:
        await sb.run(["sh", "-c", "echo new > edit.txt"])
        print("ran")
    except a.ConfinementUnavailable as exc:
        print("refused", exc.subsystem.value, exc.errno)
    plain = await a.Sandbox(fs_readable=a.SYSTEM_READABLE).run(["true"])
    print("control", plain.returncode)
    # workdir_mechanism="auto" (the default): a snapshot takes the overlay's place.
    auto = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, on_exit="keep")
    r = await auto.run(["sh", "-c", "echo new > edit.txt; echo escaped > " + root
                        + "/edit.txt; pwd"])
    print("auto", r.returncode, r.workspace.mechanism,
          r.protections[a.Subsystem.WORKSPACE_OVERLAY].value,
          r.protections[a.Subsystem.WORKSPACE_SNAPSHOT].value, dict(r.unenforced) != {},
          [(c.path, c.kind) for c in r.changes], r.stdout.decode().strip() != root)
    print("before", open(root + "/edit.txt").read().strip())
    await r.workspace.commit()
    print("after", open(root + "/edit.txt").read().strip())
anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_escape_no_user_namespace_is_a_snapshot_not_a_shared_workdir(world: pathlib.Path,
                                                                      backend: str) -> None:
    # Escape: without its layer the command would write the workdir itself.
    # Asked for an overlay, the run is refused by name, whatever
    # on_unavailable says (control: a run without a workspace works there);
    # by default a snapshot takes its place, reported as such, and the
    # workdir is untouched (by the absolute path too) until the commit.
    for item in (world, world / "edit.txt"):
        os.chown(item, 0, 0)
    done = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c",
         'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "-",
         sys.executable, "-c", NO_USERNS, str(world), backend],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [
        f"refused workspace-overlay {errno.ENOSPC}", "control 0",
        "auto 0 snapshot degraded active True [('edit.txt', 'modified')] True",
        "before old", "after new"], done.stderr
    assert not [n for n in os.listdir(world.parent) if ".asyncsandlock-" in n]


MAX_DISK = """
import json, os, sys
import anyio, anyio._backends._asyncio, anyio._backends._trio
import asyncsandlock as a
root, backend = sys.argv[1], sys.argv[2]
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
async def main():
    out = {}
    for size in ("1M", None):
        sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, max_disk=size,
                       on_exit="abort")
        r = await sb.run(["sh", "-c", "head -c 2000000 /dev/zero > big"])
        out[str(size)] = [r.returncode, "No space left" in r.stderr.decode(),
                          [(c.path, c.size) for c in r.changes]]
    print(json.dumps(out))
anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_disk_bounds_a_layer_built_in_the_child(world: pathlib.Path, backend: str) -> None:
    done = subprocess.run([sys.executable, "-c", MAX_DISK, str(world), backend],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    rc, full, changes = out["1M"]
    assert rc != 0 and full
    assert changes[0][0] == "big" and changes[0][1] <= 1 << 20
    # Control: without max_disk the same write fits.
    assert out["None"] == [0, False, [["big", 2000000]]]
    assert not (world / "big").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("extra", [{"uid": 65534, "gid": 65534}, {"network": "loopback"},
                                   {"uid": 65534, "gid": 65534, "network": "loopback"}],
                         ids=["uid", "loopback", "uid+loopback"])
async def test_a_privileged_caller_combines_the_overlay_with_identity_and_network(
        world: pathlib.Path, no_leaks: None, extra: dict[str, object]) -> None:
    # The caller's own overlay (attached in the child's mount namespace,
    # before its network and identity steps), with setresuid and a network
    # namespace after it.  Escape: the writes stay in the layer; control:
    # they are listed there.
    from asyncsandlock import SYSTEM_READABLE, Sandbox

    world.chmod(0o777)
    (world / "edit.txt").chmod(0o666)
    sb = Sandbox(fs_readable=SYSTEM_READABLE, workdir=world, on_exit="abort",
                 **extra)  # type: ignore[arg-type]
    result = await sb.run(["sh", "-c", "echo new > edit.txt; touch made; id -u"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{extra.get('uid', 0)}\n".encode()
    assert [c.path for c in result.changes or ()] == ["edit.txt", "made"]
    assert (world / "edit.txt").read_text() == "old\n"
    assert not (world / "made").exists()


# -- the run's ruleset: a copy of the policy's (Recipe) --------------------------


PROBE = """
import socket, sys
def attempt(what, fn):
    try:
        fn(); print(what, "ok")
    except OSError as exc:
        print(what, exc.errno)
attempt("read-outside", lambda: open(sys.argv[1]).read())
attempt("read-readable", lambda: open(sys.argv[2]).read())
attempt("bind-other", lambda: socket.socket().bind(("127.0.0.1", int(sys.argv[3]))))
attempt("bind-allowed", lambda: socket.socket().bind(("127.0.0.1", int(sys.argv[4]))))
"""


@pytest.mark.anyio
async def test_escape_the_run_ruleset_confines_as_the_policy_does(world: pathlib.Path,
                                                                   no_leaks: None) -> None:
    # The per-run copy must hold every rule of the policy's ruleset and no
    # more: a file outside fs_readable and a port net_allow_bind does not
    # open stay refused; controls: the readable file and the allowed port.
    import socket

    from asyncsandlock import SYSTEM_READABLE, Sandbox

    outside = world.parent / "outside.txt"
    outside.write_text("secret\n")
    inside = world.parent / "readable"
    inside.mkdir()
    (inside / "ok.txt").write_text("ok\n")
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    sb = Sandbox(fs_readable=[*SYSTEM_READABLE, str(inside)], workdir=world,
                 net_allow_bind=[ports[1]], on_exit="abort")
    result = await sb.run(["/usr/bin/python3", "-c", PROBE, str(outside),
                           str(inside / "ok.txt"), str(ports[0]), str(ports[1])])
    assert result.returncode == 0, result.stderr
    assert (result.stdout or b"").decode().split("\n")[:4] == [
        f"read-outside {errno.EACCES}", "read-readable ok", f"bind-other {errno.EACCES}",
        "bind-allowed ok"]


OPEN = """
import json, os, sys
import anyio, anyio._backends._asyncio, anyio._backends._trio
import asyncsandlock as a
root, backend = sys.argv[1], sys.argv[2]
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
async def main():
    out = {}
    for mechanism in ("auto", "snapshot"):
        sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, on_exit="keep",
                       workdir_mechanism=mechanism)
        async with await sb.open(["sh", "-c", "echo " + mechanism + " > edit.txt"]) as proc:
            await proc.wait()
        before = open(os.path.join(root, "edit.txt")).read().strip()
        await proc.workspace.commit()
        out[mechanism] = [proc.workspace.mechanism, [c.path for c in proc.changes], before,
                          open(os.path.join(root, "edit.txt")).read().strip()]
        await anyio.sleep(0.02)  # a change in the tick a run starts in is a conflict
    # A pipeline: an overlay built in one child's user namespace cannot be
    # attached by another; its stages share a snapshot.
    sb = a.Sandbox(fs_readable=a.SYSTEM_READABLE, workdir=root, on_exit="keep")
    r = await (sb.cmd(["sh", "-c", "echo piped > edit.txt; echo go"])
               | sb.cmd(["sh", "-c", "cat; cat edit.txt"])).run()
    out["pipeline"] = [r.workspace.mechanism, r.stdout.decode().split(),
                       [c.path for c in r.changes]]
    await r.workspace.abort()
    print(json.dumps(out))
anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unprivileged_caller_opens_a_process_in_a_workspace(world: pathlib.Path,
                                                               backend: str) -> None:
    # Sandbox.open() as uid 65534: the overlay the child builds in its user
    # namespace, or a snapshot; the workdir untouched until the commit.
    done = subprocess.run([sys.executable, "-c", OPEN, str(world), backend],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(world.parent / "tmp")})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"auto": ["overlay-userns", ["edit.txt"], "old", "auto"],
                   "snapshot": ["snapshot", ["edit.txt"], "auto", "snapshot"],
                   "pipeline": ["snapshot", ["go", "piped"], ["edit.txt"]]}
    assert os.listdir(world.parent / "tmp") == []
