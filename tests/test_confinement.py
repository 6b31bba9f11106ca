"""Escape attempts: every confinement claim of the core, tried from inside.

Most checks run ``tests/helpers/try_syscall.c`` in a sandbox: it makes one
system call and exits with the errno, so each test can tell the layer that
refused (seccomp: EPERM/EAFNOSUPPORT/ENOSYS, Landlock: EACCES, or EPERM for
scoped signals and sockets) from a refusal the kernel would give anyway.
``test_helper_reports_success_outside_a_sandbox`` shows the same calls
succeed unconfined, so a pass here is the sandbox's doing.
"""

from __future__ import annotations

import errno
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from asyncsandlock import (
    DEVNULL,
    SYSTEM_READABLE,
    ExitReason,
    Protection,
    Sandbox,
    SpawnError,
    Subsystem,
)

from conftest import system_sandbox

pytestmark = pytest.mark.anyio


def helper_sandbox(helper: str, **kwargs: object) -> Sandbox:
    """The system directories and the helper's directory readable, plus ``kwargs``."""
    readable = (os.path.dirname(helper), *kwargs.pop("fs_readable", ()))  # type: ignore[misc]
    return system_sandbox(fs_readable=readable, **kwargs)


async def errno_of(sb: Sandbox, helper: str, *args: str) -> int:
    """Run ``try_syscall ARGS`` in ``sb``; its exit status is the errno."""
    result = await sb.run([helper, *args], stdin=DEVNULL, timeout=30)
    assert result.reason is ExitReason.EXITED, result
    assert result.returncode != 125, result.stderr  # the helper's usage error
    return result.returncode


# -- seccomp: the default deny list and the argument checks ---------------

DENIED = [
    ("mount", errno.EPERM),
    ("unshare", errno.EPERM),
    ("unshare-user", errno.EPERM),
    ("ptrace", errno.EPERM),
    ("ptrace-traceme", errno.EPERM),
    ("process_vm_readv", errno.EPERM),
    ("io_uring_setup", errno.EPERM),
    ("bpf", errno.EPERM),
    ("keyctl", errno.EPERM),
    ("perf_event_open", errno.EPERM),
    ("userfaultfd", errno.EPERM),
    ("setsid", errno.EPERM),
    ("setpgid", errno.EPERM),
    ("clone-newns", errno.EPERM),
    ("clone3", errno.ENOSYS),
    ("ioctl-tiocsti", errno.EPERM),
    ("personality", errno.EPERM),
    ("socket-raw", errno.EAFNOSUPPORT),
    ("socket-udp", errno.EAFNOSUPPORT),
    ("socket-udp6", errno.EAFNOSUPPORT),
    ("socket-ping", errno.EAFNOSUPPORT),
    ("socket-packet", errno.EAFNOSUPPORT),
    ("socket-netlink", errno.EAFNOSUPPORT),
    # Landlock (<= ABI 7) cannot govern connect() to a pathname unix socket.
    ("socket-unix", errno.EACCES),
]


@pytest.mark.parametrize(("call", "expected"), DENIED, ids=[c for c, _ in DENIED])
async def test_denied_syscall(try_syscall: str, call: str, expected: int) -> None:
    sb = helper_sandbox(try_syscall)
    got = await errno_of(sb, try_syscall, call)
    assert got == expected, f"{call}: {errno.errorcode.get(got, got)}"


# Calls that must keep working, or the deny rules are too broad.
ALLOWED = ["fork", "personality-query", "socket-tcp", "uname"]


@pytest.mark.parametrize("call", ALLOWED)
async def test_ordinary_syscall_still_works(try_syscall: str, call: str) -> None:
    assert await errno_of(helper_sandbox(try_syscall), try_syscall, call) == 0


# Harmless to make unconfined, and each would succeed as root: so the
# refusals above come from the sandbox, not from the kernel or the helper.
UNCONFINED_OK = ["setsid", "setpgid", "clone3", "personality", "socket-udp", "socket-raw", "fork"]


@pytest.mark.parametrize("call", UNCONFINED_OK)
def test_helper_reports_success_outside_a_sandbox(try_syscall: str, call: str) -> None:
    if call == "socket-raw" and os.geteuid() != 0:
        pytest.skip("raw sockets need CAP_NET_RAW")
    assert subprocess.run([try_syscall, call], stdin=subprocess.DEVNULL).returncode == 0


def test_helper_reports_errno_outside_a_sandbox(try_syscall: str) -> None:
    status = subprocess.run([try_syscall, "ioctl-tiocsti"], stdin=subprocess.DEVNULL).returncode
    assert status == errno.ENOTTY  # the sandbox's EPERM is not the kernel's answer


async def test_extra_deny_syscalls(try_syscall: str) -> None:
    assert await errno_of(helper_sandbox(try_syscall), try_syscall, "uname") == 0
    sb = helper_sandbox(try_syscall, extra_deny_syscalls=["uname"])
    assert await errno_of(sb, try_syscall, "uname") == errno.EPERM
    result = await sb.run(["uname", "-s"], timeout=30)
    assert result.returncode != 0
    assert result.stdout == b""


async def test_x32_syscalls_kill_the_process(try_syscall: str) -> None:
    result = await helper_sandbox(try_syscall).run([try_syscall, "x32-getpid"], timeout=30)
    assert result.reason is ExitReason.SIGNALED
    assert result.signal == signal.SIGSYS


async def test_landlock_and_seccomp_are_active() -> None:
    result = await system_sandbox().run(["true"], timeout=30)
    assert result.success
    for sub in (Subsystem.LANDLOCK, Subsystem.SECCOMP, Subsystem.LANDLOCK_NET,
                Subsystem.LANDLOCK_SCOPE):
        assert result.protections[sub] is Protection.ACTIVE, sub


# -- signals and abstract unix sockets (Landlock scoping) ----------------


@pytest.fixture
def sigterm_catcher() -> Iterator[list[int]]:
    """Record SIGTERMs to this process instead of dying from them."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _frame: received.append(sig))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_cannot_signal_the_parent(try_syscall: str, sigterm_catcher: list[int]) -> None:
    sb = helper_sandbox(try_syscall)
    assert await errno_of(sb, try_syscall, "kill-parent", "0") == errno.EPERM
    assert await errno_of(sb, try_syscall, "kill-parent", str(int(signal.SIGTERM))) == errno.EPERM
    assert sigterm_catcher == []


async def test_cannot_signal_an_outside_process(try_syscall: str) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        sb = helper_sandbox(try_syscall)
        got = await errno_of(sb, try_syscall, "kill", str(victim.pid), str(int(signal.SIGKILL)))
        assert got == errno.EPERM
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


async def test_can_signal_inside_the_sandbox() -> None:
    result = await system_sandbox().run(
        ["sh", "-c", "sleep 60 & kill -TERM $!; wait $!; echo $?"], timeout=30)
    assert result.stdout == b"143\n"


@pytest.fixture
def abstract_listener() -> Iterator[str]:
    name = f"asyncsandlock-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.listen()
        yield name


async def test_abstract_unix_socket_outside_is_unreachable(try_syscall: str,
                                                           abstract_listener: str) -> None:
    unconfined = subprocess.run([try_syscall, "connect-abstract", abstract_listener])
    assert unconfined.returncode == 0
    default = helper_sandbox(try_syscall)
    assert await errno_of(default, try_syscall, "connect-abstract", abstract_listener) \
        == errno.EACCES  # no unix socket at all
    sb = helper_sandbox(try_syscall, allow_unix_sockets=True)
    assert await errno_of(sb, try_syscall, "socket-unix") == 0
    assert await errno_of(sb, try_syscall, "connect-abstract", abstract_listener) == errno.EPERM
    # Nobody listens on this one: the kernel's own answer, not the scope's.
    missing = abstract_listener + "-missing"
    assert await errno_of(sb, try_syscall, "connect-abstract", missing) == errno.ECONNREFUSED


# -- TCP (Landlock network rules) -----------------------------------------


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_tcp_connect_denied_without_net_allow(try_syscall: str, tcp_listener: int) -> None:
    sb = helper_sandbox(try_syscall)
    assert await errno_of(sb, try_syscall, "connect-tcp", str(tcp_listener)) == errno.EACCES


@pytest.mark.parametrize("rule", ["{port}", "tcp://{port}", "*"])
async def test_tcp_connect_allowed_by_net_allow(try_syscall: str, tcp_listener: int,
                                                rule: str) -> None:
    spec = rule.format(port=f":{tcp_listener}") if "{" in rule else rule
    sb = helper_sandbox(try_syscall, net_allow=[spec])
    assert await errno_of(sb, try_syscall, "connect-tcp", str(tcp_listener)) == 0


async def test_tcp_connect_to_another_port_denied(try_syscall: str, tcp_listener: int) -> None:
    other = tcp_listener + 1 if tcp_listener < 65535 else tcp_listener - 1
    sb = helper_sandbox(try_syscall, net_allow=[f":{other}"])
    assert await errno_of(sb, try_syscall, "connect-tcp", str(tcp_listener)) == errno.EACCES


async def test_tcp_bind(try_syscall: str, free_port: int) -> None:
    denied = helper_sandbox(try_syscall)
    assert await errno_of(denied, try_syscall, "bind-tcp", str(free_port)) == errno.EACCES
    # net_allow opens outbound connections only, never a listening port.
    outbound = helper_sandbox(try_syscall, net_allow=["*"])
    assert await errno_of(outbound, try_syscall, "bind-tcp", str(free_port)) == errno.EACCES
    allowed = helper_sandbox(try_syscall, net_allow_bind=[free_port])
    assert await errno_of(allowed, try_syscall, "bind-tcp", str(free_port)) == 0


async def test_udp_only_with_an_udp_rule(try_syscall: str) -> None:
    tcp_only = helper_sandbox(try_syscall, net_allow=["tcp://:53"])
    assert await errno_of(tcp_only, try_syscall, "socket-udp") == errno.EAFNOSUPPORT
    # No scheme: TCP and UDP (the network guard checks the UDP ports).
    both = helper_sandbox(try_syscall, net_allow=[":53"])
    assert await errno_of(both, try_syscall, "socket-udp") == 0
    udp = helper_sandbox(try_syscall, net_allow=["udp://*"])
    assert await errno_of(udp, try_syscall, "socket-udp") == 0
    assert await errno_of(udp, try_syscall, "socket-raw") == errno.EAFNOSUPPORT


# -- the filesystem (Landlock path rules) ---------------------------------


@pytest.fixture
def trees(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    """A read-only tree, a writable one and an unlisted one, each with a file."""
    out = {}
    for name in ("ro", "rw", "hidden"):
        tree = tmp_path / name
        tree.mkdir()
        (tree / "file").write_text(f"{name} content\n")
        out[name] = tree
    return out


def snapshot(tree: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(tree.rglob("*"))}


# Each line tries one change to directory $1 (using $2, a writable tree) and
# prints "ok NAME" if it worked.
WRITE_ATTEMPTS = """
d=$1 w=$2
try() { name=$1; shift; if "$@" 2>/dev/null; then echo "ok $name"; fi; }
try create sh -c 'echo x > "$0/new"' "$d"
try append sh -c 'echo x >> "$0/file"' "$d"
try truncate sh -c ': > "$0/file"' "$d"
try mkdir mkdir "$d/sub"
try symlink ln -s /etc/passwd "$d/link"
try fifo mkfifo "$d/fifo"
try remove rm -f "$d/file"
try rename mv "$d/file" "$d/renamed"
try hardlink-in ln "$w/file" "$d/hard"
try move-in mv "$w/file" "$d/moved-in"
try move-out mv "$d/file" "$w/moved-out"
true
"""


async def test_writes_outside_fs_writable_fail(trees: dict[str, pathlib.Path]) -> None:
    ro, rw = trees["ro"], trees["rw"]
    before_ro, before_rw = snapshot(ro), snapshot(rw)
    sb = system_sandbox(fs_readable=[ro], fs_writable=[rw])
    result = await sb.run(["sh", "-c", WRITE_ATTEMPTS, "sh", str(ro), str(rw)], timeout=30)
    assert result.success, result.stderr
    assert result.stdout == b""
    assert snapshot(ro) == before_ro
    assert snapshot(rw) == before_rw


async def test_writes_inside_fs_writable_work(trees: dict[str, pathlib.Path]) -> None:
    rw = trees["rw"]
    (rw / "src").mkdir()
    (rw / "src" / "file").write_text("moved\n")
    sb = system_sandbox(fs_writable=[rw])
    result = await sb.run(["sh", "-c", WRITE_ATTEMPTS, "sh", str(rw), str(rw / "src")],
                          timeout=30)
    worked = {line.removeprefix("ok ") for line in result.stdout.decode().splitlines()}
    assert worked >= {"create", "append", "truncate", "mkdir", "symlink", "fifo", "remove",
                      "move-in"}
    assert (rw / "new").read_text() == "x\n"
    assert (rw / "moved-in").read_text() == "moved\n"


async def test_writes_to_unlisted_places_fail(tmp_path: pathlib.Path) -> None:
    target = tmp_path / f"escape-{secrets.token_hex(4)}"
    sb = system_sandbox()
    for cmd in (f"echo x > {target}", f"mkdir {target}", f"touch {target}",
                "echo x >> /etc/hostname", f"cp /etc/hostname {target}"):
        result = await sb.run(["sh", "-c", cmd], timeout=30)
        assert result.returncode != 0, cmd
        assert not target.exists(), cmd


async def test_unlisted_tree_is_unreadable(trees: dict[str, pathlib.Path]) -> None:
    hidden, rw = trees["hidden"], trees["rw"]
    (rw / "link").symlink_to(hidden / "file")
    sb = system_sandbox(fs_readable=[trees["ro"]], fs_writable=[rw])
    for args in (["cat", str(hidden / "file")], ["ls", str(hidden)],
                 ["cat", str(rw / "link")], ["cp", str(hidden / "file"), str(rw / "copy")]):
        result = await sb.run(args, timeout=30)
        assert result.returncode != 0, args
        assert b"hidden content" not in result.stdout, args
        assert b"Permission denied" in result.stderr, args
    assert not (rw / "copy").exists()
    readable = await sb.run(["cat", str(trees["ro"] / "file")], timeout=30)
    assert readable.stdout == b"ro content\n"


async def test_home_and_proc_are_not_readable_by_default() -> None:
    result = await system_sandbox().run(["sh", "-c", "ls /root || ls /proc/1/"], timeout=30)
    assert result.returncode != 0
    assert result.stdout == b""


async def test_writable_tree_is_not_executable(trees: dict[str, pathlib.Path]) -> None:
    rw = trees["rw"]
    binary = rw / "true"
    shutil.copy("/bin/true", binary)
    with pytest.raises(PermissionError) as info:
        await system_sandbox(fs_writable=[rw]).run([str(binary)], timeout=30)
    assert isinstance(info.value, SpawnError)
    assert info.value.step == "execve"
    via_shell = await system_sandbox(fs_writable=[rw]).run(["sh", "-c", str(binary)], timeout=30)
    assert via_shell.returncode == 126
    both = system_sandbox(fs_readable=[rw], fs_writable=[rw])
    assert (await both.run([str(binary)], timeout=30)).success


async def test_command_outside_fs_readable_cannot_run() -> None:
    with pytest.raises(PermissionError) as info:
        await Sandbox().run(["/bin/true"], timeout=30)
    assert isinstance(info.value, SpawnError)
    assert info.value.step == "execve"


# -- limits and devices ---------------------------------------------------


async def test_max_open_files(try_syscall: str) -> None:
    sb = helper_sandbox(try_syscall, max_open_files=16)
    assert (await sb.run(["sh", "-c", "ulimit -n"], timeout=30)).stdout == b"16\n"
    assert await errno_of(sb, try_syscall, "open-many", "8") == 0
    assert await errno_of(sb, try_syscall, "open-many", "32") == errno.EMFILE
    unlimited = helper_sandbox(try_syscall)
    assert await errno_of(unlimited, try_syscall, "open-many", "32") == 0


async def test_dev_null_and_friends_are_usable() -> None:
    sb = Sandbox(fs_readable=[p for p in SYSTEM_READABLE if not p.startswith("/etc")])
    script = ("echo x > /dev/null && cat /dev/null && head -c 3 /dev/zero | wc -c "
              "&& head -c 3 /dev/urandom | wc -c")
    result = await sb.run(["sh", "-c", script], timeout=30)
    assert result.success, result.stderr
    assert result.stdout.split() == [b"3", b"3"]
    quiet = await sb.run(["sh", "-c", "echo out; echo err >&2"], stdout=DEVNULL, stderr=DEVNULL,
                         timeout=30)
    assert quiet.success
    assert quiet.stdout is None and quiet.stderr is None


async def test_other_device_access_is_limited() -> None:
    # /dev/zero is readable only; writing to it works unconfined (as root).
    write_zero = ["sh", "-c", "echo x > /dev/zero"]
    assert subprocess.run(write_zero).returncode == 0
    result = await system_sandbox().run(write_zero, timeout=30)
    assert result.returncode != 0
    assert b"Permission denied" in result.stderr
