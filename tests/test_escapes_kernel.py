"""Escape battery, namespaces and kernel calls: unshare/clone/setns, the
mount API, keyrings, BPF, perf, userfaultfd, io_uring, kexec and modules,
machine settings, personality, and the i386 (``int 0x80``) and x32 ABIs.

A control must work unconfined.  Where working would harm the machine
(mount over a directory, unload a kexec image, reboot) the control makes
the call with an argument the kernel rejects *after* its permission checks
(ENODEV, EINVAL, ENOENT), which shows the confined EPERM is the sandbox's.
Where this kernel lacks the syscall (ENOSYS unconfined) the pair still runs
and says so in its id (``-nosys``), but proves only that the filter answers
first.
"""

from __future__ import annotations

import errno
import os
import platform
import socket

import pytest

from asyncsandlock._kernel._sys import SYSCALLS

from escapes import SIGSYS, Attempt, World, assert_control, assert_held, attempt, ids, world_fixture

pytestmark = pytest.mark.anyio

EPERM = {errno.EPERM}
NAMESPACES = {"mnt": 0x20000, "uts": 0x04000000, "ipc": 0x08000000, "user": 0x10000000,
              "pid": 0x20000000, "net": 0x40000000, "cgroup": 0x02000000, "time": 0x80}

KERNEL: list[Attempt] = []
for ns, flag in NAMESPACES.items():
    KERNEL.append(attempt(f"unshare-{ns}", "unshare", hex(flag), held=EPERM))
    KERNEL.append(attempt(f"clone-new{ns}", "clone", hex(flag), held=EPERM))
KERNEL += [
    attempt("clone3-newuser", "clone3", hex(NAMESPACES["user"]), held={errno.ENOSYS, errno.EPERM}),
    attempt("clone3-plain", "clone3", "0", held={errno.ENOSYS, errno.EPERM}),
    attempt("setns-victim-net", "setns", "{victim}", hex(NAMESPACES["net"]), held=EPERM),
    attempt("setns-caller-mnt", "setns", "{caller}", hex(NAMESPACES["mnt"]), held=EPERM),
    attempt("bpf-map-create", "bpf-map", held=EPERM),
    attempt("perf-event-open", "perf", held=EPERM),
    attempt("personality-addr-no-randomize", "personality", "0x0040000", held=EPERM),
    attempt("personality-read-implies-exec", "personality", "0x0400000", held=EPERM),
    attempt("personality-uname26", "personality", "0x0020000", held=EPERM),
    attempt("mknod-block-device", "mknod", "{work}/disk", "060600", "8", "0"),
]


def raw(id: str, name: str, *args: str, control: tuple[int, ...] = (0,)) -> None:
    if name not in SYSCALLS:
        return
    KERNEL.append(attempt(id, "raw", str(SYSCALLS[name]), *args, held=EPERM, control=control))


raw("userfaultfd", "userfaultfd", "0")
raw("io-uring-setup", "io_uring_setup", "1", "b:120")
raw("fanotify-init", "fanotify_init", "0", "0")
raw("keyctl-get-keyring", "keyctl", "0", "-3", "0")
raw("add-key", "add_key", "s:user", "s:asl-escape", "s:x", "1", "-2")
raw("request-key", "request_key", "s:user", "s:asl-nonexistent", "0", "-2",
    control=(errno.ENOKEY,))
raw("mount", "mount", "s:none", "s:{work}", "s:asl-nonexistent-fs", "0", "0",
    control=(errno.ENODEV,))
raw("umount2", "umount2", "s:{work}", "0", control=(errno.EINVAL,))
raw("fsopen", "fsopen", "s:tmpfs", "0")
raw("fspick", "fspick", "-100", "s:/", "0")
raw("open-tree", "open_tree", "-100", "s:{work}", "0")
raw("move-mount", "move_mount", "-100", "s:/nonexistent", "-100", "s:{work}", "0",
    control=(errno.ENOENT,))
raw("mount-setattr", "mount_setattr", "-100", "s:{work}", "0", "b:32", "32")
raw("pivot-root", "pivot_root", "s:{work}", "s:{work}", control=(errno.EBUSY, errno.EINVAL))
raw("chroot", "chroot", "s:{work}")
raw("syslog-read-size", "syslog", "10", "0", "0")
raw("settimeofday", "settimeofday", "0", "0")
raw("clock-settime-monotonic", "clock_settime", "1", "b:16", control=(errno.EINVAL,))
raw("reboot-bad-magic", "reboot", "0", "0", "0", "0", control=(errno.EINVAL,))
raw("swapon", "swapon", "s:/nonexistent", "0", control=(errno.ENOENT,))
raw("swapoff", "swapoff", "s:/nonexistent", control=(errno.ENOENT,))
raw("acct", "acct", "s:/nonexistent", control=(errno.ENOENT,))
raw("sethostname-same", "sethostname", f"s:{socket.gethostname()}",
    str(len(socket.gethostname())))
# Absent from this kind of kernel (ENOSYS unconfined) on some hosts; see above.
NOSYS = (errno.ENOSYS, errno.EINVAL, errno.EBADF, errno.ENOENT)
raw("kexec-load-bad-flags", "kexec_load", "0", "0", "0", "0xdead0000", control=NOSYS)
raw("kexec-file-load", "kexec_file_load", "-1", "-1", "0", "s:", "0xdead", control=NOSYS)
raw("init-module", "init_module", "b:16", "16", "s:", control=(*NOSYS, errno.ENOEXEC))
raw("finit-module", "finit_module", "-1", "s:", "0", control=NOSYS)
raw("delete-module", "delete_module", "s:asl_nonexistent", "0", control=NOSYS)
if platform.machine() == "x86_64":
    raw("iopl", "iopl", "3", control=(0, errno.ENOSYS))
    raw("ioperm", "ioperm", "0x80", "1", "1", control=(0, errno.ENOSYS))

# The i386 ABI through int 0x80: another syscall table, another arch in
# seccomp_data, killed by the filter's arch check whatever the call.
I386 = {"getpid": ("20",), "setsid": ("66",), "chmod-4777": ("15", "s:{ro}/bin", "04777"),
        "unshare-user": ("310", hex(NAMESPACES["user"])), "socket-packet": ("359", "17", "3", "0"),
        "personality": ("136", "0x40000"), "kill-caller": ("37", "{caller}", "0"),
        "ptrace-seize-victim": ("26", "0x4206", "{victim}", "0", "0")}
# x32: the x86_64 table with bit 30 set; killed whether or not the kernel has it.
X32 = {"getpid": ("39",), "setsid": ("112",), "unshare-user": ("272", hex(NAMESPACES["user"])),
       "chmod-4777": ("90", "s:{ro}/bin", "04777")}
if platform.machine() == "x86_64":
    KERNEL += [attempt(f"i386-{name}", "i386", *args, held={SIGSYS}) for name, args in I386.items()]
    KERNEL += [attempt(f"x32-{name}", "x32", *args, held={SIGSYS}, control=(0, errno.ENOSYS))
               for name, args in X32.items()]


world = world_fixture()


@pytest.mark.parametrize("a", KERNEL, ids=ids(KERNEL))
async def test_held(world: World, a: Attempt, no_leaks: None) -> None:
    await assert_held(world, a)


@pytest.mark.parametrize("a", KERNEL, ids=ids(KERNEL))
def test_control(world: World, a: Attempt) -> None:
    if a.id == "i386-setsid" and os.getsid(0) == os.getpid():
        pytest.skip("a session leader cannot setsid")
    assert_control(world, a)
