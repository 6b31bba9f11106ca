"""The built-in guards (``asyncsandlock/handlers``) against real escape attempts.

Each attempt is made by a small Python program (``PROBE``) run inside a
sandbox, and the very same program is run unconfined as the control: the
attempt must fail confined and work unconfined, so a held attempt means
something.  Targets outside the sandbox are copies made in scratch
directories and throwaway processes, never real system files or the test
runner's own limits.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence

import pytest

from asyncsandlock import Sandbox
from asyncsandlock._kernel import _bpf
from asyncsandlock._kernel._sys import SYSCALLS
from asyncsandlock._objects import Creds, within
from asyncsandlock.handlers import (
    ListenGuard,
    MetadataGuard,
    OwnProcessGuard,
    ProcessLimit,
    WatchGuard,
    builtin_handlers,
)
from asyncsandlock.handlers.metadata import FORMS

from conftest import PYTHON, system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

#: The interpreter the sandboxed probes run with (under SYSTEM_READABLE).
CHILD_PYTHON = "/usr/bin/python3"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs a root caller")
#: The filter of the `filter` branch denies a guarded syscall when no guard
#: is registered; before it, such a syscall simply runs.
needs_guarded_filter = pytest.mark.skipif(
    not hasattr(_bpf, "GUARDED"), reason="the filter does not deny unguarded syscalls yet")

#: Runs each operation of the JSON list in argv[1] and prints the list of
#: their errnos (0: it worked).
PROBE = r'''
import ctypes, json, os, resource, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)


def call(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


def libc_rc(rc):
    return ctypes.get_errno() if rc < 0 else 0


def on_fd(fn, path, *args):
    fd = os.open(path, os.O_RDONLY)
    try:
        return call(fn, fd, *args)
    finally:
        os.close(fd)


def listen(family, address):
    with socket.socket(family) as s:
        if address is not None:
            s.bind(tuple(address) if isinstance(address, list) else address)
        return call(s.listen)


def listen_after_disconnect(port):
    """connect() binds the socket implicitly; disconnecting it gives the port
    back, but getsockname() still reports it."""
    with socket.socket() as s:
        s.connect(("127.0.0.1", port))
        unspec = ctypes.create_string_buffer(16)  # a sockaddr with family AF_UNSPEC
        if libc.connect(s.fileno(), unspec, 16) < 0:
            return 254
        return call(s.listen)


def watch(path, opened=None, flags=0):
    fd = libc.inotify_init1(os.O_NONBLOCK)
    try:
        wd = libc.inotify_add_watch(fd, path.encode(), 0x20 | 0x100 | flags)  # IN_OPEN | IN_CREATE
        if wd < 0 or opened is None:
            return libc_rc(wd)
        os.close(os.open(os.path.join(path, opened), os.O_RDONLY))
        event = os.read(fd, 4096)
        # struct inotify_event: wd, mask, cookie, len, then the name
        return 0 if event[16:].rstrip(b"\0") == opened.encode() else 255
    finally:
        os.close(fd)


def on_process(action, target):
    """``action`` on pid ``target``: "self" is our own pid (not 0), "child" a
    process of our own, "thread" a thread of ours."""
    child = stop = None
    if target == "self":
        target = os.getpid()
    elif target == "child":
        child = target = os.fork()
        if child == 0:
            os.pause()
    elif target == "thread":
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        target = thread.native_id
    try:
        return call(ACTIONS[action], target)
    finally:
        if child is not None:
            os.kill(child, 9)
            os.waitpid(child, 0)
        if stop is not None:
            stop.set()
            thread.join()


def raw(name, *args):
    if libc.syscall(NR[name], *args) < 0:
        raise OSError(ctypes.get_errno(), name)


def ioprio(pid):
    raw("ioprio_set", 1, pid, (2 << 13) | 4)  # IOPRIO_WHO_PROCESS, best-effort, level 4


def at(fn, dirname, name, *args):
    """``fn`` with a path relative to a directory fd (an O_PATH one)."""
    dirfd = os.open(dirname, os.O_PATH | os.O_DIRECTORY)
    try:
        return call(fn, dirfd, name.encode(), *args)
    finally:
        os.close(dirfd)


def relative(dirname, op):
    """``op`` run from ``dirname`` as working directory, with relative paths."""
    cwd = os.getcwd()
    os.chdir(dirname)
    try:
        return run(op)
    finally:
        os.chdir(cwd)


def in_thread(op):
    out = []
    thread = threading.Thread(target=lambda: out.append(run(op)))
    thread.start()
    thread.join()
    return out[0]


class XattrArgs(ctypes.Structure):
    _fields_ = [("value", ctypes.c_char_p), ("size", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


ACTIONS = {
    "prlimit-get": lambda pid: resource.prlimit(pid, resource.RLIMIT_NOFILE),
    "prlimit-set": lambda pid: resource.prlimit(pid, resource.RLIMIT_NOFILE, (100, 100)),
    "nice": lambda pid: os.setpriority(os.PRIO_PROCESS, pid, 5),
    "affinity": lambda pid: os.sched_setaffinity(pid, os.sched_getaffinity(pid)),
    "scheduler": lambda pid: os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0)),
    "ioprio": ioprio,
}

OPS = {
    "chmod": lambda p, mode: call(os.chmod, p, mode),
    "fchmod": lambda p, mode: on_fd(os.fchmod, p, mode),
    # glibc emulates this with chmod("/proc/self/fd/N") on an O_PATH fd.
    "lchmod": lambda p, mode: libc_rc(libc.fchmodat(-100, p.encode(), mode, 0x100)),
    "chown": lambda p, uid, gid: call(os.chown, p, uid, gid),
    "fchown": lambda p, uid, gid: on_fd(os.fchown, p, uid, gid),
    "lchown": lambda p, uid, gid: call(os.lchown, p, uid, gid),
    "utime": lambda p, t: call(os.utime, p, (t, t)),
    "futime": lambda p, t: on_fd(os.utime, p, (t, t)),
    "touch": lambda p: call(os.utime, p),
    "setxattr": lambda p, name: call(os.setxattr, p, name, b"v"),
    "fsetxattr": lambda p, name: on_fd(os.setxattr, p, name, b"v"),
    "removexattr": lambda p, name: call(os.removexattr, p, name),
    # AT_EMPTY_PATH on an O_PATH fd of the file, or a path with AT_* flags
    "fchmodat2": lambda d, n, mode, flags: at(
        lambda fd, name: raw("fchmodat2", fd, name, mode, flags), d, n),
    "fchownat": lambda d, n, uid, gid, flags: at(
        lambda fd, name: raw("fchownat", fd, name, uid, gid, flags), d, n),
    "setxattrat": lambda d, n, attr: at(lambda fd, name: raw(
        "setxattrat", fd, name, 0, attr.encode(), ctypes.byref(XattrArgs(b"v", 1, 0)),
        ctypes.c_size_t(ctypes.sizeof(XattrArgs))), d, n),
    "removexattrat": lambda d, n, attr: at(
        lambda fd, name: raw("removexattrat", fd, name, 0, attr.encode()), d, n),
    "relative": relative,
    "thread": in_thread,
    "listen": lambda family, address: listen(getattr(socket, family), address),
    "listen-after-disconnect": listen_after_disconnect,
    "watch": watch,
    "process": on_process,
}


def run(op):
    return OPS[op[0]](*op[1:])


NR = json.loads(sys.argv[2])
print(json.dumps([run(op) for op in json.loads(sys.argv[1])]))
'''

Op = Sequence[object]


#: The raw syscalls the probe makes, by number (only those this arch has).
NUMBERS = json.dumps({name: SYSCALLS[name] for name in (
    "ioprio_set", "fchmodat2", "fchownat", "setxattrat", "removexattrat") if name in SYSCALLS})


def probe_argv(ops: Sequence[Op]) -> list[str]:
    return [CHILD_PYTHON, "-c", PROBE, json.dumps(ops), NUMBERS]


async def confined(sb: Sandbox, ops: Sequence[Op]) -> list[int]:
    """The errno of each operation, run inside ``sb``."""
    result = await sb.run(probe_argv(ops), timeout=60)
    assert result.returncode == 0, result
    return list(json.loads(result.stdout))


async def unconfined(ops: Sequence[Op]) -> list[int]:
    """The errno of each operation, run by the same program outside any sandbox.

    (subprocess, not anyio.run_process: asyncio's child watcher would start a
    thread, which ``no_leaks`` counts.)
    """
    result = subprocess.run(probe_argv(ops), capture_output=True, check=True)
    return list(json.loads(result.stdout))


@pytest.fixture
def tree() -> Iterator[pathlib.Path]:
    """``rw`` (to be fs_writable) and ``ro`` (fs_readable) with a root-owned
    regular file ``f`` (0644) in each, under a tree any uid can reach."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="asl-guards-", dir="/tmp"))
    try:
        base.chmod(0o755)
        for name in ("rw", "ro"):
            (base / name).mkdir(mode=0o777)
            (base / name).chmod(0o777)
            (base / name / "f").write_bytes(b"data")
            (base / name / "f").chmod(0o644)
        yield base
    finally:
        shutil.rmtree(base)


def policy(tree: pathlib.Path, **kwargs: object) -> Sandbox:
    return system_sandbox(fs_readable=[str(tree / "ro")], fs_writable=[str(tree / "rw")],
                          **kwargs)


def mode(path: pathlib.Path) -> int:
    return path.lstat().st_mode & 0o7777


# -- which guards a policy gets ------------------------------------------------

def test_builtin_handlers_follow_the_policy(tree: pathlib.Path) -> None:
    assert builtin_handlers(Sandbox()) == ()
    kinds = [type(h) for h in builtin_handlers(policy(tree))]
    assert kinds == [MetadataGuard, WatchGuard, OwnProcessGuard]
    # Reading alone needs no supervisor: the filter denies inotify_add_watch
    # and calls on other pids instead of making one for them.
    assert builtin_handlers(system_sandbox()) == ()
    kinds = [type(h) for h in builtin_handlers(system_sandbox(max_processes=9))]
    assert kinds == [ProcessLimit, WatchGuard, OwnProcessGuard]
    kinds = [type(h) for h in builtin_handlers(Sandbox(net_allow_bind=[8080]))]
    assert kinds == [ListenGuard, OwnProcessGuard]
    kinds = [type(h) for h in builtin_handlers(Sandbox(allow_unix_sockets=True,
                                                       max_processes=3))]
    assert kinds == [ListenGuard, ProcessLimit, OwnProcessGuard]
    sb = policy(tree)
    assert builtin_handlers(sb) is builtin_handlers(sb)  # built once per policy


def test_guards_name_only_guarded_syscalls() -> None:
    names = {*FORMS, *WatchGuard.syscalls, *ListenGuard.syscalls, *OwnProcessGuard.syscalls}
    if hasattr(_bpf, "GUARDED"):
        assert names == set(_bpf.GUARDED)
    assert "fchmodat2" in names and "setxattrat" in names


def test_within_and_creds() -> None:
    assert within("/a/b", ["/a"]) and within("/a", ["/a"]) and within("/x", ["/"])
    assert not within("/ab", ["/a"]) and not within("pipe:[3]", ["/a"])
    creds = Creds.parse(b"Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t9 10 \n")
    assert creds == Creds(4, 8, frozenset({9, 10}))


# -- metadata ------------------------------------------------------------------

@needs_root
async def test_chmod_outside_writable_fails(tree: pathlib.Path) -> None:
    """Regression test for ``chmod 4777`` on a root-owned binary under
    fs_readable by a root child (issue 8, item 3), by path and by fd."""
    target = tree / "ro" / "f"
    ops: list[Op] = [["chmod", str(target), 0o4777], ["chmod", str(target), 0o666],
                     ["fchmod", str(target), 0o4777], ["fchmod", str(target), 0o666],
                     ["lchmod", str(target), 0o666]]
    assert await confined(policy(tree), ops) == [errno.EPERM] * 5
    assert mode(target) == 0o644
    assert await unconfined(ops) == [0] * 5
    assert mode(target) == 0o666


@needs_root
async def test_chmod_inside_writable_works(tree: pathlib.Path) -> None:
    target = tree / "rw" / "f"
    ops: list[Op] = [["chmod", str(target), 0o600], ["fchmod", str(target), 0o640],
                     ["lchmod", str(target), 0o604]]
    assert await confined(policy(tree), ops) == [0, 0, 0]
    assert mode(target) == 0o604


@needs_root
async def test_at_forms_resolve_in_the_childs_context(tree: pathlib.Path) -> None:
    """dirfds (O_PATH ones too), the working directory, AT_EMPTY_PATH,
    AT_SYMLINK_NOFOLLOW and a call from a second thread are resolved as the
    child's, and the object they reach decides."""
    (tree / "rw" / "link").symlink_to(tree / "ro" / "f")
    ro, rw = str(tree / "ro"), str(tree / "rw")
    nofollow, empty = 0x100, 0x1000
    ops: list[Op] = [
        ["fchmodat2", ro, "f", 0o600, 0], ["fchmodat2", ro, "", 0o600, empty],
        ["fchmodat2", rw, "f", 0o600, 0], ["fchmodat2", rw, "", 0o700, empty],
        ["fchmodat2", rw, "link", 0o600, nofollow], ["fchmodat2", rw, "link", 0o600, 0],
        ["fchownat", rw, "link", 0, 0, nofollow], ["fchownat", rw, "link", 0, 0, 0],
        ["fchownat", ro, "", 0, 0, empty], ["fchmodat2", rw, "f", 0o600, 0x8000],
        ["setxattrat", rw, "f", "user.a"], ["setxattrat", ro, "f", "user.a"],
        ["removexattrat", rw, "f", "user.a"], ["removexattrat", ro, "f", "user.a"],
        ["relative", rw, ["chmod", "f", 0o640]], ["relative", ro, ["chmod", "f", 0o640]],
        ["relative", rw, ["chmod", "../ro/f", 0o640]],
        ["thread", ["fchmod", str(tree / "rw" / "f"), 0o604]],
        ["thread", ["relative", ro, ["fchmod", "f", 0o604]]],
    ]
    expected = [errno.EPERM, errno.EPERM, 0, 0, errno.EOPNOTSUPP, errno.EPERM,
                0, errno.EPERM, errno.EPERM, errno.EINVAL,
                0, errno.EPERM, 0, errno.EPERM,
                0, errno.EPERM, errno.EPERM, 0, errno.EPERM]
    if "setxattrat" not in NUMBERS:
        pytest.skip("this kernel's table has no setxattrat")
    assert await confined(policy(tree), ops) == expected
    assert mode(tree / "ro" / "f") == 0o644 and mode(tree / "rw" / "f") == 0o604
    assert mode(tree / "rw") == 0o700
    # The control: unconfined (root) every call but the kernel's own refusals works.
    assert await unconfined(ops) == [
        0 if code in (errno.EPERM, 0) else code for code in expected]


async def test_set_id_bits_are_refused_even_inside_writable(tree: pathlib.Path) -> None:
    target = tree / "rw" / "f"
    ops: list[Op] = [["chmod", str(target), 0o4755], ["chmod", str(target), 0o2755],
                     ["chmod", str(target), 0o1755]]
    assert await confined(policy(tree), ops) == [errno.EPERM, errno.EPERM, 0]
    assert mode(target) == 0o1755
    target.chmod(0o644)
    assert await unconfined(ops[:1]) == [0]  # the control: the same uid may, unconfined
    assert mode(target) == 0o4755


@needs_root
async def test_chown_utimes_xattr_outside_writable_fail(tree: pathlib.Path) -> None:
    target = tree / "ro" / "f"
    before = target.stat()
    ops: list[Op] = [["chown", str(target), 0, 0], ["fchown", str(target), 0, 0],
                     ["lchown", str(target), 0, 0], ["utime", str(target), 1000],
                     ["futime", str(target), 1000], ["touch", str(target)],
                     ["setxattr", str(target), "user.x"], ["fsetxattr", str(target), "user.y"],
                     ["removexattr", str(target), "user.x"]]
    assert await confined(policy(tree), ops) == [errno.EPERM] * len(ops)
    after = target.stat()
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    assert os.listxattr(target) == []
    assert await unconfined(ops) == [0] * len(ops)
    assert target.stat().st_mtime != before.st_mtime and os.listxattr(target) == ["user.y"]


@needs_root
async def test_metadata_inside_writable_works(tree: pathlib.Path) -> None:
    target = tree / "rw" / "f"
    ops: list[Op] = [["chown", str(target), 0, 0], ["fchown", str(target), -1, 0],
                     ["utime", str(target), 1000], ["futime", str(target), 2000],
                     ["setxattr", str(target), "user.x"], ["fsetxattr", str(target), "user.y"],
                     ["removexattr", str(target), "user.x"], ["touch", str(target)]]
    assert await confined(policy(tree), ops) == [0] * len(ops)
    assert os.listxattr(target) == ["user.y"]
    assert target.stat().st_mtime > 2000


@needs_root
async def test_privileged_xattr_namespaces_are_refused(tree: pathlib.Path) -> None:
    """``trusted.`` and ``security.`` would need capabilities the child does
    not have, but the supervisor performing the call might."""
    target = tree / "rw" / "f"
    ops: list[Op] = [["setxattr", str(target), "trusted.x"],
                     ["setxattr", str(target), "security.x"]]
    assert await confined(policy(tree), ops) == [errno.EPERM, errno.EPERM]
    assert await unconfined(ops) == [0, 0]


@needs_root
async def test_child_permissions_are_emulated(tree: pathlib.Path) -> None:
    """The supervisor is root with every capability; the child's own DAC
    applies: a file of uid 65534 inside fs_writable is not the root child's."""
    theirs = tree / "rw" / "theirs"
    theirs.write_bytes(b"")
    os.chown(theirs, 65534, 65534)
    theirs.chmod(0o644)
    shared = tree / "rw" / "shared"
    shared.write_bytes(b"")
    os.chown(shared, 65534, 65534)
    shared.chmod(0o666)
    link = tree / "rw" / "link"
    link.symlink_to(tree / "ro" / "f")
    ops: list[Op] = [["chmod", str(theirs), 0o600], ["chown", str(theirs), 0, -1],
                     ["chown", str(theirs), -1, 0], ["utime", str(theirs), 1000],
                     ["touch", str(theirs)], ["setxattr", str(theirs), "user.x"],
                     ["touch", str(shared)], ["utime", str(shared), 1000],
                     ["chown", str(tree / "rw" / "f"), 65534, -1],
                     ["lchown", str(link), 0, 0]]
    assert await confined(policy(tree), ops) == [
        errno.EPERM, errno.EPERM, errno.EPERM, errno.EPERM, errno.EACCES, errno.EPERM,
        0, errno.EPERM, errno.EPERM, 0]
    assert mode(theirs) == 0o644 and theirs.stat().st_uid == 65534
    assert await unconfined(ops) == [0] * len(ops)


RACE = r'''
import os, sys, time
writable, outside, op, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
inside, link, tmp = (os.path.join(writable, name) for name in ("inside", "link", "tmp"))
for leftover in (link, tmp):
    if os.path.lexists(leftover):
        os.unlink(leftover)
os.symlink(inside, link)
flipper = os.fork()
if flipper == 0:
    while True:
        for target in (inside, outside):
            os.symlink(target, tmp)
            os.rename(tmp, link)
done = denied = i = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    i += 1
    try:
        if op == "chmod":
            os.chmod(link, 0o600 if i % 2 else 0o640)
        elif op == "utime":
            os.utime(link, (i + 1, i + 1))
        else:
            os.setxattr(link, "user.race", b"x")
        done += 1
    except PermissionError:
        denied += 1
os.kill(flipper, 9)
os.waitpid(flipper, 0)
print(done, denied)
'''


@needs_root
@pytest.mark.parametrize("op", ["chmod", "utime", "setxattr"])
async def test_symlink_swap_race_never_reaches_outside(tree: pathlib.Path, op: str) -> None:
    """A symlink inside fs_writable flips between a writable file and an
    outside one while the child changes its metadata for a second (thousands of times):
    the outside file never changes (the guard acts on the object it checked)."""
    outside = tree / "ro" / "f"
    inside = tree / "rw" / "inside"
    inside.write_bytes(b"")
    before = outside.stat()
    argv = [CHILD_PYTHON, "-c", RACE, str(tree / "rw"), str(outside), op, "1.0"]
    result = await policy(tree).run(argv, timeout=120)
    assert result.returncode == 0, result
    done, denied = map(int, result.stdout.split())
    assert done > 0 and denied > 0, result.stdout  # both sides of the flip were hit
    after = outside.stat()
    assert (after.st_mode, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_mode, before.st_mtime_ns, before.st_ctime_ns)
    assert os.listxattr(outside) == []
    # The control: unconfined, the same race reaches the outside file.
    subprocess.run(argv, capture_output=True, check=True)
    after = outside.stat()
    assert after.st_ctime_ns != before.st_ctime_ns


@needs_root
async def test_builds_that_set_metadata_keep_working(tree: pathlib.Path) -> None:
    """tar (modes, times, owners), pip-style os.chmod and git inside the work directory."""
    source = tree / "ro" / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (source / "pkg" / "run.sh").chmod(0o751)
    os.utime(source / "pkg" / "run.sh", (5, 5))
    subprocess.run(["tar", "-C", str(source), "-cf", str(tree / "ro" / "a.tar"), "pkg"],
                   check=True)
    work = tree / "rw"
    script = (
        f"cd {work} && tar xpf {tree / 'ro' / 'a.tar'} && "
        f"{CHILD_PYTHON} -c 'import os; os.chmod(\"pkg/run.sh\", 0o755); "
        "os.utime(\"pkg\", None)' && "
        "git init -q && git config user.email a@b.c && git config user.name n && "
        "git add pkg && git commit -qm init && git log --oneline | wc -l")
    sb = policy(tree, env={"HOME": str(work)})
    result = await sb.run(["sh", "-c", script], timeout=60)
    assert result.returncode == 0 and result.stdout == b"1\n", result
    assert mode(work / "pkg" / "run.sh") == 0o755
    assert (work / "pkg" / "run.sh").stat().st_mtime == 5


@needs_guarded_filter
async def test_metadata_without_writable_paths_is_denied(tree: pathlib.Path) -> None:
    """No fs_writable, no MetadataGuard: the filter itself refuses."""
    target = tree / "ro" / "f"
    ops: list[Op] = [["chmod", str(target), 0o644], ["touch", str(target)]]
    sb = system_sandbox(fs_readable=[str(tree / "ro")])
    assert await confined(sb, ops) == [errno.EPERM, errno.EPERM]
    assert await unconfined(ops) == [0, 0]


# -- listen --------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_listen_on_unbound_socket_fails() -> None:
    """Regression test for listen() autobinding an ephemeral port on every
    address, which Landlock's bind hook never sees (issue 8, item 2)."""
    port = free_port()
    ops: list[Op] = [["listen", "AF_INET", None], ["listen", "AF_INET6", None],
                     ["listen", "AF_INET", ["127.0.0.1", port]]]
    sb = system_sandbox(net_allow_bind=[port])
    assert await confined(sb, ops) == [errno.EPERM, errno.EPERM, 0]
    assert await unconfined(ops) == [0, 0, 0]


async def test_listen_after_connect_and_disconnect_fails() -> None:
    """The stale port getsockname() reports after a disconnect must not pass
    for a bound one: listen() would autobind a new port on every address."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        ops: list[Op] = [["listen-after-disconnect", port]]
        sb = system_sandbox(net_allow=[f":{port}"], net_allow_bind=[free_port()])
        assert await confined(sb, ops) == [errno.EPERM]
        assert await unconfined(ops) == [0]


async def test_listen_on_unix_socket_works(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "s")
    sb = system_sandbox(fs_writable=[str(tmp_path)], allow_unix_sockets=True)
    assert await confined(sb, [["listen", "AF_UNIX", path]]) == [0]
    os.unlink(path)
    assert await unconfined([["listen", "AF_UNIX", path]]) == [0]


@needs_guarded_filter
async def test_listen_without_bind_ports_is_denied() -> None:
    sb = system_sandbox()
    assert await confined(sb, [["listen", "AF_INET", None]]) == [errno.EPERM]
    assert await unconfined([["listen", "AF_INET", None]]) == [0]


# -- inotify -------------------------------------------------------------------

async def test_watch_outside_policy_fails(tree: pathlib.Path) -> None:
    """Regression test for inotify marks on paths outside the policy (issue 8, item 9)."""
    ops: list[Op] = [["watch", str(tree)], ["watch", "/proc"], ["watch", str(tree / "ro")],
                     ["watch", str(tree / "rw")], ["watch", str(tree / "nothing")]]
    assert await confined(policy(tree), ops) == [errno.EPERM, errno.EPERM, 0, 0, errno.ENOENT]
    assert await unconfined(ops) == [0, 0, 0, 0, errno.ENOENT]


async def test_watch_resolves_symlinks_as_asked(tree: pathlib.Path) -> None:
    """A symlink inside the policy that leads out: followed, the watch would
    be outside; with IN_DONT_FOLLOW it is on the link; IN_ONLYDIR holds."""
    link = tree / "rw" / "out"
    link.symlink_to(tree)
    dont_follow, only_dir = 0x02000000, 0x01000000
    ops: list[Op] = [["watch", str(link)], ["watch", str(link), None, dont_follow],
                     ["watch", str(tree / "ro" / "f"), None, only_dir]]
    assert await confined(policy(tree), ops) == [errno.EPERM, 0, errno.ENOTDIR]
    assert await unconfined(ops) == [0, 0, errno.ENOTDIR]


async def test_watch_on_readable_dir_reports_events(tree: pathlib.Path) -> None:
    ops: list[Op] = [["watch", str(tree / "ro"), "f"]]
    assert await confined(policy(tree), ops) == [0]
    assert await unconfined(ops) == [0]


# -- other processes -----------------------------------------------------------

@pytest.fixture
def outsider() -> Iterator[int]:
    """A throwaway process of ours, outside any sandbox."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


ACTIONS = ["prlimit-set", "nice", "affinity", "scheduler", "ioprio"]


@pytest.mark.parametrize("action", ACTIONS)
async def test_other_process_is_out_of_reach(outsider: int, action: str) -> None:
    """Regression test for prlimit64 & co. on a same-uid process outside the
    sandbox (issue 8, item 4); the sandbox's own processes and threads stay in reach."""
    ops: list[Op] = [["process", action, outsider], ["process", action, "child"],
                     ["process", action, "thread"], ["process", action, "self"],
                     ["process", action, 0]]
    supervised = system_sandbox(max_processes=64)
    assert await confined(supervised, ops) == [errno.EPERM, 0, 0, 0, 0]
    # Without a supervisor, only pid 0 passes: the filter cannot tell the
    # sandbox's own pids from others, so it fails closed.
    assert await confined(system_sandbox(), ops) == [errno.EPERM] * 4 + [0]
    assert await unconfined(ops) == [0, 0, 0, 0, 0]


async def test_prlimit_on_the_caller_fails() -> None:
    """Only reads the caller's limits (never lowers the test runner's)."""
    ops: list[Op] = [["process", "prlimit-get", os.getpid()],
                     ["process", "prlimit-get", 99999999]]
    supervised = system_sandbox(max_processes=64)
    assert await confined(supervised, ops) == [errno.EPERM, errno.ESRCH]
    assert await confined(system_sandbox(), ops) == [errno.EPERM, errno.EPERM]
    assert await unconfined(ops) == [0, errno.ESRCH]


# -- an unprivileged caller ----------------------------------------------------

AS_NOBODY = r'''
import errno, json, os, subprocess, sys
import anyio, anyio._backends._asyncio, anyio._backends._trio, trio
from asyncsandlock import SYSTEM_READABLE, Sandbox

probe, numbers, base = sys.argv[1], sys.argv[2], sys.argv[3]
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
mine = os.path.join(base, "ro", "mine")
with open(mine, "w"):
    pass
os.chmod(mine, 0o644)
work = os.path.join(base, "rw", "mine")
with open(work, "w"):
    pass
outsider = subprocess.Popen(["sleep", "60"])
ops = [["chmod", mine, 0o666], ["fchmod", mine, 0o666], ["utime", mine, 1000],
       ["setxattr", mine, "user.x"], ["watch", base],
       ["process", "prlimit-set", outsider.pid], ["process", "nice", outsider.pid],
       ["chmod", work, 0o600], ["process", "prlimit-set", "child"]]
argv = ["/usr/bin/python3", "-c", probe, json.dumps(ops), numbers]
sb = Sandbox(fs_readable=[*SYSTEM_READABLE, os.path.join(base, "ro")],
             fs_writable=[os.path.join(base, "rw")])
try:
    for backend in ("asyncio", "trio"):
        result = anyio.run(sb.run, argv, backend=backend)
        assert result.returncode == 0, result
        assert json.loads(result.stdout) == [errno.EPERM] * 7 + [0, 0], result.stdout
    assert os.stat(mine).st_mode & 0o7777 == 0o644
    control = json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)
    assert control == [0] * 9, control
finally:
    outsider.kill()
    outsider.wait()
print("ok")
'''


@needs_root
def test_unprivileged_caller(tree: pathlib.Path) -> None:
    """The same escapes with caller and child as uid 65534, on that uid's own
    files and processes (where DAC alone would allow them)."""
    argv = [PYTHON, "-c", AS_NOBODY, PROBE, NUMBERS, str(tree)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1:] == ["ok"], (
        proc.stdout + proc.stderr)
