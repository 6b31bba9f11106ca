"""The escape battery's plumbing, shared by ``tests/test_escapes_*.py``.

Every attempt is one run of ``tests/helpers/escape.c`` (exit 0 = the attack
worked, else the errno of the refusing call) against a :class:`World`: a
scratch tree, a throwaway victim process, listening sockets and IPC objects
that belong to the caller and lie outside the sandbox.  An attempt is
*held* when the confined run fails the way the table says and the world is
left exactly as it was; its *control* runs the same command unconfined on a
fresh world and must work, so a held attempt means the sandbox held.

The world is rebuilt whenever a run may have changed it (every control, and
a confined run that did damage), so a control that chmodded a file or took
a message from a queue never spoils the next run.  This module is also the
script that runs callers in a subprocess (as uid 65534, with a terminal,
dying: see ``main``), so it imports pytest only inside the functions that
need it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import importlib
import json
import os
import pathlib
import resource
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from asyncsandlock import SYSTEM_READABLE, ExitReason, Sandbox
from asyncsandlock._plan import compile_plan, peek

#: The helper's "the calls worked but changed nothing" and usage statuses.
NOEFFECT = 124
USAGE = 125
#: The outcome of a process killed by SIGSYS (the filter's kill action).
SIGSYS = -int(signal.SIGSYS)
DENIED = frozenset({errno.EPERM, errno.EACCES})
#: The helper's attacks that can touch the world's IPC objects.
IPC_ATTACKS = frozenset({"shm-read", "shmat-id", "shmctl", "semop", "semctl", "msgrcv", "msgsnd",
                         "msgctl", "ipc-create", "mq"})
#: The policies attempts run under (see :meth:`World._build`).
POLICIES = ("readme", "proc", "netother", "unix", "limits", "ipc", "bind")


@dataclass(frozen=True)
class Attempt:
    """One way out.  ``args`` are ``str.format`` templates over
    :attr:`World.ctx`; ``held`` the confined outcomes that count as refused
    (None: any failure); ``control`` the unconfined outcomes that show the
    attack is real; ``item`` the issue-8 item it belongs to, if any."""

    id: str
    args: tuple[str, ...]
    held: frozenset[int] | None = DENIED
    control: frozenset[int] = frozenset({0})
    policy: str = "readme"
    item: str = ""


def attempt(id: str, *args: str, held: Iterable[int] | None = DENIED,
            control: Iterable[int] = (0,), policy: str = "readme", item: str = "") -> Attempt:
    return Attempt(id, args, None if held is None else frozenset(held), frozenset(control),
                   policy, item)


def ids(attempts: Iterable[Attempt]) -> list[str]:
    return [a.id for a in attempts]


def _rw_address(pid: int) -> int:
    """The top page of ``pid``'s stack: mapped, written, and never made
    read-only (a data segment may be, by RELRO, while the process starts)."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[stack]"):
                return int(line.split()[0].split("-")[1], 16) - 4096
    raise AssertionError(f"no stack in process {pid}")


@dataclass
class World:
    """What the attacks aim at, all owned by the calling uid."""

    base: pathlib.Path
    helper: str
    ctx: dict[str, str] = field(default_factory=dict)
    sockets: list[socket.socket] = field(default_factory=list)
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    victim_fd: int = -1
    held_fd: int = -1
    baseline: dict[str, object] = field(default_factory=dict)
    #: Whether a run may have changed the world (its IPC objects) since the
    #: last reset.
    dirty: bool = True
    ipc_dirty: bool = True

    # -- set up and tear down ------------------------------------------------

    @classmethod
    def create(cls, helper: str) -> World:
        # Under /tmp, not pytest's tmp_path (a 0700 tree): the uid-65534
        # battery builds its world the same way.
        base = pathlib.Path(tempfile.mkdtemp(prefix="asl-escape-", dir="/tmp"))
        base.chmod(0o755)
        world = cls(base, helper)
        try:
            world._start()
        except BaseException:
            world.close()
            raise
        return world

    def _start(self) -> None:
        work = self.base / "work"
        work.mkdir()
        work.chmod(0o777)
        (self.base / "empty").mkdir()
        listeners = {}
        for name, family, host in (("port4", socket.AF_INET, "127.0.0.1"),
                                   ("port6", socket.AF_INET6, "::1"),
                                   ("portm", socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            if name == "portm":  # dual stack: v4-mapped peers reach it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, 0))
            sock.listen(64)
            sock.setblocking(False)
            self.sockets.append(sock)
            listeners[name] = str(sock.getsockname()[1])
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        (self.base / "sockets").mkdir(mode=0o755)
        unix.bind(str(self.base / "sockets" / "outside.sock"))
        unix.listen(8)
        unix.setblocking(False)
        self.sockets.append(unix)
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        abstract_name = f"asl-escape-{secrets.token_hex(6)}"
        abstract.bind(b"\0" + abstract_name.encode())
        abstract.listen(8)
        abstract.setblocking(False)
        self.sockets.append(abstract)
        self.victim_fd, victim = self._start_victim()
        held = self.base / "held"
        held.write_text("held-secret\n")
        self.held_fd = os.open(held, os.O_RDONLY)  # an fd of ours on a file outside
        me = os.getpid()
        ldso = next((p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")
                     if os.path.exists(p)), "/nonexistent")
        self.ctx.update(
            base=str(self.base), work=str(work), ro=str(self.base / "ro"),
            out=str(self.base / "out"), helperdir=os.path.dirname(self.helper),
            caller=str(me), callerpgid=str(os.getpgid(0)), callertid=str(me),
            victim=str(victim), victimpgid=str(os.getpgid(victim)),
            victimaddr=hex(_rw_address(victim)), uid=str(os.getuid()),
            calleraddr=hex(_rw_address(me)),
            other=str(int(listeners["port4"]) ^ 1 or 1), sock=str(self.base / "sockets"),
            abstract="@" + abstract_name, ldso=ldso, heldfd=str(self.held_fd),
            ipckey=str(0x5A000000 | (secrets.randbits(20) << 2)),
            mq=f"/asl-escape-{secrets.token_hex(6)}", newmq=f"/asl-escape-{secrets.token_hex(6)}",
            **listeners)
        self.reset()
        for policy in POLICIES:
            self.sandboxes[policy] = self._build(policy)

    @staticmethod
    def _start_victim() -> tuple[int, int]:
        """A sleeping process of the caller's uid that is not our child
        (so it is no leak of any test), held by a pidfd."""
        # setsid: its own process group, which attempts on "a group" aim at.
        out = subprocess.run(["sh", "-c", "setsid sleep 3600 </dev/null >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
        pid = int(out.stdout)
        fd = os.pidfd_open(pid)
        for _ in range(1000):  # until it is sleep, not the shell's fork on its way there
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == "sleep":
                    break
            time.sleep(0.001)
        return fd, pid

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.held_fd >= 0:
            os.close(self.held_fd)
        if self.victim_fd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.victim_fd, signal.SIGKILL)
            os.close(self.victim_fd)
            self.victim_fd = -1
        if "ipckey" in self.ctx:
            self.tool("world-cleanup", *self._ipc_names())
        for sandbox in self.sandboxes.values():
            compiled = peek(sandbox)
            if compiled is not None and hasattr(compiled, "close"):
                compiled.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def tool(self, *args: str) -> str:
        """Run the helper unconfined for set-up work; its stdout."""
        done = subprocess.run([self.helper, *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        return done.stdout

    # -- the state an attack could change -------------------------------------

    def reset(self) -> None:
        """Put back every target the previous run may have changed."""
        # The tree roots stay: the policies' rulesets hold their inodes.
        for tree in ("ro", "out", "work"):
            root = self.base / tree
            root.mkdir(exist_ok=True)
            for entry in root.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        for tree, text in (("ro", "ro-secret\n"), ("out", "out-secret\n")):
            root = self.base / tree
            root.chmod(0o755)
            (root / "file").write_text(text)
            (root / "file").chmod(0o644)
            shutil.copy("/bin/true", root / "bin")
            (root / "bin").chmod(0o755)
            os.setxattr(root / "file", "user.keep", b"1")
            (root / "dir").mkdir()
            (root / "link").symlink_to(root / "file")
        work = self.base / "work"
        work.chmod(0o777)
        (work / "own").write_text("own\n")
        (work / "own").chmod(0o644)
        shutil.copy("/bin/true", work / "true")
        (work / "true").chmod(0o755)
        self._reset_victim()
        self._drain()
        if self.ipc_dirty:
            ids = self.tool("world-reset", *self._ipc_names())
            self.ctx["shmid"], self.ctx["semid"], self.ctx["msgid"] = ids.split()
            key = int(self.ctx["ipckey"])
            self.ctx.update(semkey=str(key + 1), msgkey=str(key + 2))
        self.baseline = self.state(ipc=self.ipc_dirty)
        self.dirty = self.ipc_dirty = False

    def _ipc_names(self) -> tuple[str, str, str]:
        return self.ctx["ipckey"], self.ctx["mq"], self.ctx["newmq"]

    def _reset_victim(self) -> None:
        pid = int(self.ctx["victim"])
        # Without CAP_SYS_NICE a raised niceness cannot be lowered again: then
        # a new victim is simpler.
        if not self._victim_alive() or os.getpriority(os.PRIO_PROCESS, pid) != os.getpriority(
                os.PRIO_PROCESS, 0):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.victim_fd, signal.SIGKILL)
            os.close(self.victim_fd)
            self.victim_fd, pid = self._start_victim()
            self.ctx.update(victim=str(pid), victimpgid=str(os.getpgid(pid)),
                            victimaddr=hex(_rw_address(pid)))
        # A ptrace attach leaves it stopped; whatever else a control changed is
        # put back here.
        signal.pidfd_send_signal(self.victim_fd, signal.SIGCONT)
        with contextlib.suppress(OSError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE,
                             resource.getrlimit(resource.RLIMIT_NOFILE))
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, os.sched_getaffinity(0))
        with contextlib.suppress(OSError):
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))

    def _victim_alive(self) -> bool:
        """A pidfd polls readable once its process has exited (a zombie
        still takes signals, so signal 0 cannot tell).  A signal the run just
        sent may still be on its way, or the victim on its way out: then wait
        for it to act."""
        pid = self.ctx["victim"]
        try:
            with open(f"/proc/{pid}/status") as f:
                pending = any(int(line.split()[1], 16) for line in f
                              if line.startswith(("SigPnd:", "ShdPnd:")))
            with open(f"/proc/{pid}/stat") as f:
                flags = int(f.read().rsplit(")", 1)[1].split()[6])
        except (FileNotFoundError, ProcessLookupError):
            pending, flags = True, 0
        exiting = flags & 0x4  # PF_EXITING
        wait = 1 if pending or exiting else 0
        return not select.select([self.victim_fd], [], [], wait)[0]

    def _drain(self) -> list[str]:
        """Accept whatever reached our listeners; name the ones reached."""
        reached = []
        for sock in self.sockets:
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                reached.append(str(sock.getsockname()))
        return reached

    def state(self, ipc: bool) -> dict[str, object]:
        """What attacks could change; the IPC objects only if ``ipc`` (it takes
        a helper run), else as the baseline has them."""
        out: dict[str, object] = {}
        for path in sorted(self.base.rglob("*")):
            if path == self.base / "work" or (
                    path.parent == self.base / "work" and path.name not in ("own", "true")):
                continue  # the sandbox's own files
            st = path.lstat()
            xattrs: dict[str, bytes] = {}
            if not path.is_symlink():
                xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)}
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            out[str(path)] = (oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, xattrs,
                              zlib.crc32(content))
        pid = int(self.ctx["victim"])
        if self._victim_alive():
            with open(f"/proc/{pid}/stat") as f:
                stopped = f.read().rsplit(")", 1)[1].split()[0] in "Tt"  # ptrace, SIGSTOP
            out["victim"] = ("stopped" if stopped else "running",
                             resource.prlimit(pid, resource.RLIMIT_NOFILE),
                             os.sched_getaffinity(pid), os.sched_getscheduler(pid),
                             os.getpriority(os.PRIO_PROCESS, pid), self._ioprio(pid))
        else:
            out["victim"] = "dead"
        # shm intact, semaphore value, messages queued; messages in mq, newmq
        out["ipc"] = (self.tool("world-state", *self._ipc_names()).split() if ipc
                      else self.baseline.get("ipc"))
        return out

    @staticmethod
    def _ioprio(pid: int) -> str:
        with open(f"/proc/{pid}/io", "rb"):
            pass  # the process exists; ioprio_get has no Python binding
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return str(libc.syscall(252 if os.uname().machine == "x86_64" else 31, 1, pid))

    def damage(self, ipc: bool = True) -> list[str]:
        """What differs from the world as the last reset left it."""
        changed = [f"connection to {name}" for name in self._drain()]
        now = self.state(ipc)
        for key in sorted(set(now) | set(self.baseline)):
            if now.get(key) != self.baseline.get(key):
                changed.append(f"{key}: {self.baseline.get(key)!r} -> {now.get(key)!r}")
        return changed

    # -- policies and runs ----------------------------------------------------

    def sandbox(self, policy: str) -> Sandbox:
        return self.sandboxes[policy]

    def _build(self, policy: str) -> Sandbox:
        readable = [*SYSTEM_READABLE, self.ctx["helperdir"], self.ctx["ro"]]
        extra: dict[str, object] = {}
        if policy == "proc":
            readable.append("/proc")
        elif policy == "netother":
            extra["net_allow"] = [f":{self.ctx['other']}"]
        elif policy == "unix":
            extra["allow_unix_sockets"] = True
        elif policy == "limits":
            extra.update(max_open_files=64, max_memory="1G", max_processes=8, no_coredump=True)
        elif policy == "ipc":
            extra["allow_sysv_ipc"] = True
        elif policy == "bind":
            extra["net_allow_bind"] = [int(self.ctx["other"])]
        elif policy != "readme":
            raise ValueError(policy)
        sb = Sandbox(fs_readable=readable, fs_writable=[self.ctx["work"]], **extra)  # type: ignore[arg-type]
        anyio.run(compile_plan, sb)  # built now: its fds are no leak of a test
        return sb

    def argv(self, a: Attempt) -> list[str]:
        if any("{handle}" in arg for arg in a.args):
            self.ctx["handle"] = self.tool("handle", str(self.base / "out" / "file")).strip()
        return [self.helper, *(arg.format(**self.ctx) for arg in a.args)]

    def _reap(self, stdout: bytes) -> None:
        """Reap what clone(CLONE_PARENT) made our child."""
        for line in stdout.decode(errors="replace").split():
            if line.isdigit():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(line), 0)

    async def confined(self, a: Attempt) -> tuple[int, bytes, list[str]]:
        """Run ``a`` in its sandbox; (outcome, stdout, damage)."""
        if self.dirty:
            self.reset()
        sb = self.sandbox(a.policy)
        result = await sb.run(self.argv(a), timeout=30)
        stdout = result.stdout or b""
        if a.id == "clone-parent":
            self._reap(stdout)
        assert result.reason in (ExitReason.EXITED, ExitReason.SIGNALED), result
        ipc = a.args[0] in IPC_ATTACKS
        damage = self.damage(ipc)
        self.dirty = bool(damage)
        self.ipc_dirty = ipc and self.dirty
        for entry in (self.base / "work").iterdir():  # the sandbox's own files
            if entry.name in ("own", "true"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return result.returncode, stdout, damage

    def unconfined(self, a: Attempt) -> tuple[int, bytes]:
        if self.dirty:
            self.reset()
        self.dirty = True
        self.ipc_dirty = a.args[0] in IPC_ATTACKS
        done = subprocess.run(self.argv(a), capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=30)
        if a.id == "clone-parent":
            self._reap(done.stdout)
        return done.returncode, done.stdout


def describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return {0: "0 (it worked)", NOEFFECT: "124 (no effect)", USAGE: "125 (usage)"}.get(
        code, f"{code} ({errno.errorcode.get(code, '?')})")


def check_held(a: Attempt, code: int, damage: list[str], stdout: bytes = b"") -> None:
    assert code != USAGE, f"{a.id}: the helper was misused"
    assert code != 0, f"{a.id} got out: {stdout[:200]!r} {damage}"
    if a.held is not None:
        assert code in a.held, f"{a.id}: refused by {describe(code)}, not {sorted(a.held)}"
    assert damage == [], f"{a.id} failed but changed the world: {damage}"


def check_control(a: Attempt, code: int) -> None:
    assert code in a.control, f"{a.id} does not work unconfined: {describe(code)}"


async def assert_held(world: World, a: Attempt) -> None:
    code, stdout, damage = await world.confined(a)
    check_held(a, code, damage, stdout)


def assert_control(world: World, a: Attempt) -> None:
    code, _ = world.unconfined(a)
    check_control(a, code)


async def assert_accepted(world: World, a: Attempt, reason: str, request: Any) -> None:
    """An attempt that gets out, accepted and documented (docs/confinement.md):
    a strict xfail, so that the day it is held the test says so."""
    import pytest

    request.applymarker(pytest.mark.xfail(strict=True, reason=f"accepted: {reason}"))
    await assert_held(world, a)


def battery(attempts: Sequence[Attempt]) -> tuple[Any, Any]:
    """A module's ``test_held`` and ``test_control`` over ``attempts``:
    ``test_held, test_control = battery(ATTEMPTS)``, after the list is
    complete (it is read here), beside ``world = world_fixture()``."""
    import pytest

    @pytest.mark.parametrize("a", attempts, ids=ids(attempts))
    async def test_held(world: World, a: Attempt, no_leaks: None) -> None:
        await assert_held(world, a)

    @pytest.mark.parametrize("a", attempts, ids=ids(attempts))
    def test_control(world: World, a: Attempt) -> None:
        assert_control(world, a)

    return test_held, test_control


def accepted_battery(accepted: Sequence[tuple[Attempt, str]]) -> tuple[Any, Any]:
    """A module's ``test_accepted`` and ``test_accepted_control`` over
    ``accepted`` (attempt, reason) pairs, as :func:`battery`."""
    import pytest

    ids_ = [a.id for a, _ in accepted]

    @pytest.mark.parametrize(("a", "reason"), accepted, ids=ids_)
    async def test_accepted(world: World, a: Attempt, reason: str, request: pytest.FixtureRequest,
                            no_leaks: None) -> None:
        await assert_accepted(world, a, reason, request)

    @pytest.mark.parametrize(("a", "reason"), accepted, ids=ids_)
    def test_accepted_control(world: World, a: Attempt, reason: str) -> None:
        assert_control(world, a)

    return test_accepted, test_accepted_control


def world_fixture() -> Any:
    """A module's ``world`` fixture (``world = world_fixture()``)."""
    import pytest

    from conftest import build_helper

    @pytest.fixture(scope="module")
    def world() -> Iterator[World]:
        if os.geteuid() != 0:
            # Some controls need root's capabilities (mknod, setcap, chroot);
            # test_escapes_nobody runs what uid 65534 can try.
            pytest.skip("the battery's controls assume a root caller")
        w = World.create(build_helper("escape"))
        yield w
        w.close()

    return world


PYTHON = sys.executable


# -- callers in a subprocess: another uid, a terminal of their own -----------
#
# ``python tests/escapes.py MODE [--uid UID] HELPER ARGS...`` is a fresh
# caller.  ``dying HOW BACKEND`` starts a process that double-forks (see
# _dying) for the test to kill the caller under; the others run attempts and
# print one JSON line of outcomes:
#   battery MODULE:TABLE... : the listed tables' attempts, each confined on
#       both backends and unconfined, against a World of this caller's own;
#   terminal : the terminal attempts of test_escapes_terminal.TTY, with the
#       caller a session leader whose controlling terminal is a new pty.

BACKENDS = ("asyncio", "trio")


def run_caller(mode: str, helper: str, *args: str, uid: int | None = None,
               timeout: float = 120) -> dict[str, dict[str, object]]:
    cmd = [PYTHON, __file__, mode, *(["--uid", str(uid)] if uid is not None else []), helper, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result: dict[str, dict[str, object]] = json.loads(done.stdout.splitlines()[-1])
    return result


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _tables(specs: Iterable[str]) -> list[Attempt]:
    out: list[Attempt] = []
    for spec in specs:
        module, name = spec.split(":")
        out += getattr(importlib.import_module(module), name)
    return out


def _battery(helper: str, attempts: list[Attempt]) -> dict[str, dict[str, object]]:
    world = World.create(helper)
    results: dict[str, dict[str, object]] = {}
    try:
        for a in attempts:
            entry: dict[str, object] = {}
            for backend in BACKENDS:
                code, stdout, damage = anyio.run(world.confined, a, backend=backend)
                entry[backend] = [code, damage, stdout.decode(errors="replace")[:200]]
            entry["control"] = world.unconfined(a)[0]
            results[a.id] = entry
    finally:
        world.close()
    return results


def _terminal(helper: str, attempts: list[Attempt]) -> dict[str, dict[str, object]]:
    """Each attempt gets the terminal as fd 0 (``stdin=0``), except ``read``,
    which checks what run() hands over by default."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    os.dup2(slave, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # to take the foreground back
    winches: list[int] = []
    signal.signal(signal.SIGWINCH, lambda *_: winches.append(1))
    typed = b"typed-secret\n"
    base = pathlib.Path(tempfile.mkdtemp(prefix="asl-escape-tty-", dir="/tmp"))
    readable = [*SYSTEM_READABLE, os.path.dirname(helper)]
    sb = Sandbox(fs_readable=readable, fs_writable=[base])
    interactive = Sandbox(fs_readable=readable, fs_writable=[base], interactive=True)
    size = fcntl.ioctl(slave, termios.TIOCGWINSZ, bytes(8))

    def prepare() -> None:
        fcntl.ioctl(slave, termios.TIOCSCTTY, 1 if os.getuid() == 0 else 0)
        os.tcsetpgrp(slave, os.getpgrp())
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
        termios.tcflush(slave, termios.TCIFLUSH)
        os.write(master, typed)
        winches.clear()

    def damage(stdout: bytes) -> list[str]:
        out = []
        if winches:
            out.append("SIGWINCH sent to the caller")
        try:
            if os.tcgetpgrp(slave) != os.getpgrp():
                out.append("the caller's terminal has another foreground group")
        except OSError:
            out.append("the caller lost its controlling terminal")
        if typed.strip() in stdout:
            out.append("read what the user typed")
        return out

    results: dict[str, dict[str, object]] = {}
    for a in attempts:
        argv = [helper, *a.args]
        kwargs = {} if a.args == ("tty", "read") else {"stdin": 0}
        entry: dict[str, object] = {}
        for backend in BACKENDS:
            prepare()
            run = functools.partial(sb.run, argv, timeout=30, **kwargs)  # type: ignore[arg-type]
            r = anyio.run(run, backend=backend)
            stdout = r.stdout or b""
            entry[backend] = [r.returncode, damage(stdout), stdout.decode(errors="replace")[:200]]
        prepare()
        granted = functools.partial(interactive.run, argv, timeout=30, stdin=0)
        entry["interactive"] = anyio.run(granted).returncode
        prepare()
        # Like the sandbox, the control runs in a process group of its own.
        done = subprocess.run(argv, capture_output=True, process_group=0, timeout=30)
        entry["control"] = done.returncode
        entry["control_damage"] = damage(done.stdout)
        results[a.id] = entry
    prepare()
    shutil.rmtree(base, ignore_errors=True)
    return results


def _dying(helper: str, how: str, backend: str) -> None:
    """Start ``escape daemon wait`` (a child whose double-forked grandchild
    sleeps), confined or not; print "CHILD GRANDCHILD" and wait to be killed."""
    argv = [helper, "daemon", "wait"]

    async def confined() -> None:
        sb = Sandbox(fs_readable=[*SYSTEM_READABLE, os.path.dirname(helper)])
        proc = await sb.open(argv, stdin=None, stdout=subprocess.PIPE, stderr=None)
        assert proc.stdout is not None
        line = await proc.stdout.receive()
        print(proc.pid, line.decode().strip(), flush=True)
        await anyio.sleep(3600)

    if how == "confined":
        anyio.run(confined, backend=backend)
    else:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert child.stdout is not None
        print(child.pid, child.stdout.readline().decode().strip(), flush=True)
        signal.pause()


def main(argv: list[str]) -> None:
    mode, *rest = argv
    uid = None
    if rest[0] == "--uid":
        uid, rest = int(rest[1]), rest[2:]
    helper, *specs = rest
    if mode == "dying":
        importlib.import_module(f"anyio._backends._{specs[1]}")
        if uid is not None:
            _drop_to(uid)
        _dying(helper, *specs)
        return
    if mode == "terminal":
        os.setsid()
        specs = ["test_escapes_terminal:TTY"]
    attempts = _tables(specs)  # every import before the drop: /root is 0700
    import anyio._backends._asyncio
    import anyio._backends._trio  # noqa: F401

    if uid is not None:
        _drop_to(uid)
    run = _terminal if mode == "terminal" else _battery
    print(json.dumps(run(helper, attempts)))


if __name__ == "__main__":
    main(sys.argv[1:])
