"""Policy -> seccomp BPF program, assembled here from per-arch syscall tables.

The program, in order:

1. kill the process if ``seccomp_data.arch`` is not the running arch, and on
   x86_64 if the number has the x32 bit set (x32 numbers alias x86_64 ones);
2. let the child's own pre-exec calls through when argument registers 3..5
   carry the per-policy key (see the essay at the top of ``csrc/spawn.c``);
3. argument checks: ``clone`` with namespace flags, ``clone3`` (ENOSYS, so
   libc falls back to ``clone``, whose flags BPF *can* read), ``socket`` and
   ``socketpair`` families/types, ``ioctl`` TIOCSTI/TIOCLINUX, ``personality``;
4. one search over the syscall number: denied (EPERM), sent to the
   supervisor (USER_NOTIF), or allowed.

Each check is written as ``jeq nr, next, skip; <body>`` so every jump is
short: BPF jumps are forward-only with 8-bit offsets.

Step 4 is a binary search tree of ``jge`` over runs of numbers, not a list
of ``jeq``: when a filter is attached, the kernel runs it once for every
syscall number to fill its allow cache (``seccomp_cache_prepare``), so the
cost of attaching it, paid by every spawn, grows with the path an allowed
syscall takes.  A ~70-entry list walked to the end ~450 times cost 50-75 us
per spawn here; the tree's path is ~8 instructions.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Mapping
from dataclasses import dataclass

#: What the child calls after installing the filter (csrc/spawn.c).
PRE_EXEC_CALLS = ("write", "sendmsg", "exit_group", "execve", "prlimit64")

# Opcodes (linux/bpf_common.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_JGE_K = 0x35
_RET_K = 0x06
_ALU_AND_K = 0x54
_JA = 0x05

RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_USER_NOTIF = 0x7FC00000
_RET_ERRNO = 0x00050000

_OFF_NR = 0
_OFF_ARCH = 4
_X32_SYSCALL_BIT = 0x40000000
AUDIT_ARCH_X86_64 = 0xC000003E


def _arg_lo(i: int) -> int:
    return 16 + 8 * i


def _arg_hi(i: int) -> int:
    return 16 + 8 * i + 4


def ret_errno(code: int) -> int:
    return _RET_ERRNO | (code & 0xFFFF)


#: Denied outright (EPERM): escapes from the sandbox, kernel attack surface,
#: and process-group escapes (setsid/setpgid) that would let a descendant
#: outlive a kill of the sandbox.
DEFAULT_DENY: tuple[str, ...] = (
    # filesystems and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsconfig",
    "fsmount", "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr",
    "listmount", "statmount", "open_by_handle_at", "name_to_handle_at", "quotactl",
    "quotactl_fd",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "process_madvise", "migrate_pages", "move_pages",
    # kernel attack surface
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "lookup_dcookie", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vhangup",
    # the machine itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "sethostname", "setdomainname", "syslog", "acct",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    # containment of the process group
    "setsid", "setpgid",
)

# clone flags that create namespaces (or share a foreign fs view).
_CLONE_NS_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                   | 0x20000000 | 0x40000000 | 0x00000080)
_AF_UNIX = 1
_AF_INET = 2
_AF_INET6 = 10
_SOCK_STREAM = 1
_SOCK_DGRAM = 2
_SOCK_TYPE_MASK = 0xF
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """Everything a filter depends on; equal specs give equal programs."""

    arch: int
    table: Mapping[str, int]
    deny: frozenset[str]
    notify: frozenset[str]
    key: tuple[int, int, int] | None
    allow_udp: bool
    allow_unix: bool = False


class _Asm:
    def __init__(self) -> None:
        self.insns: list[tuple[int, int, int, int]] = []

    def emit(self, code: int, k: int = 0, jt: int = 0, jf: int = 0) -> None:
        self.insns.append((code, jt, jf, k & 0xFFFFFFFF))

    def load(self, offset: int) -> None:
        self.emit(_LD_W_ABS, offset)

    def ret(self, action: int) -> None:
        self.emit(_RET_K, action)

    def block(self, nr: int, body: _Asm) -> None:
        """``if nr == A: body`` (body must end by returning or reloading nr)."""
        if len(body.insns) > 255:
            raise ValueError("BPF block too long for a short jump")
        self.emit(_JEQ_K, nr, 0, len(body.insns))
        self.insns.extend(body.insns)

    def assemble(self) -> bytes:
        if len(self.insns) > 4096:
            raise ValueError(f"BPF program has {len(self.insns)} instructions; the limit is 4096")
        return b"".join(struct.pack("=HBBI", c, jt, jf, k) for c, jt, jf, k in self.insns)


def _keyed_exemption(key: tuple[int, int, int]) -> _Asm:
    """Allow when args 3..5 equal ``key``; else fall through with nr reloaded."""
    body = _Asm()
    words = []
    for i, value in enumerate(key):
        words += [(_arg_lo(3 + i), value & 0xFFFFFFFF), (_arg_hi(3 + i), value >> 32)]
    for n, (offset, word) in enumerate(words):
        remaining = len(words) - n - 1
        body.load(offset)
        # mismatch: jump over the rest of the checks and the ALLOW to the reload
        body.emit(_JEQ_K, word, 0, 2 * remaining + 1)
    body.ret(RET_ALLOW)
    body.load(_OFF_NR)
    return body


def _socket_rule(spec: FilterSpec, pair: bool, allow: int) -> _Asm:
    """socketpair: unix only.  socket: unix if allowed; inet/inet6: TCP
    streams, and UDP datagrams if allowed.

    Landlock (up to ABI 7) does not govern connect() or sendto() to a
    *pathname* unix socket: with socket(AF_UNIX) allowed, a child could reach
    any listening socket on the host whose path it can name (a container
    runtime's, a message bus's).  So socket(AF_UNIX) is refused unless the
    policy opts in; socketpair() makes an anonymous, already connected pair
    and stays allowed.
    """
    body = _Asm()
    deny = ret_errno(errno.EAFNOSUPPORT)
    body.load(_arg_lo(0))
    body.emit(_JEQ_K, _AF_UNIX, 0, 1)
    body.ret(allow if pair or spec.allow_unix else ret_errno(errno.EACCES))
    if pair:
        body.ret(deny)
        return body
    # Indices below are fixed: 15 is ALLOW, 16 is DENY.
    body.emit(_JEQ_K, _AF_INET, 1, 0)  # 3
    body.emit(_JEQ_K, _AF_INET6, 0, 11)  # 4
    body.load(_arg_lo(1))  # 5
    body.emit(_ALU_AND_K, _SOCK_TYPE_MASK)  # 6: drop SOCK_NONBLOCK / SOCK_CLOEXEC
    body.emit(_JEQ_K, _SOCK_STREAM, 0, 3)  # 7
    body.load(_arg_lo(2))  # 8
    body.emit(_JEQ_K, 0, 5, 0)  # 9: default protocol of a stream is TCP
    body.emit(_JEQ_K, _IPPROTO_TCP, 4, 5)  # 10: not SCTP/MPTCP, Landlock sees TCP only
    body.emit(_JEQ_K, _SOCK_DGRAM if spec.allow_udp else 0xFFFF, 0, 4)  # 11
    body.load(_arg_lo(2))  # 12
    body.emit(_JEQ_K, 0, 1, 0)  # 13
    body.emit(_JEQ_K, _IPPROTO_UDP, 0, 1)  # 14: not ICMP "ping" sockets
    body.ret(allow)  # 15
    body.ret(deny)  # 16
    return body


def _rules(spec: FilterSpec) -> _Asm:
    """Argument-checked syscalls; each block ends by returning or reloading nr.

    Where a block would allow a syscall that a handler traps, it notifies
    instead, so built-in confinement decides first and handlers see the rest.
    """
    asm = _Asm()
    table = spec.table

    def allow(name: str) -> int:
        return RET_USER_NOTIF if name in spec.notify else RET_ALLOW

    if "clone" in table and "clone" not in spec.deny:
        body = _Asm()
        body.load(_arg_lo(0))
        body.emit(_JSET_K, _CLONE_NS_FLAGS, 0, 1)
        body.ret(ret_errno(errno.EPERM))
        body.load(_OFF_NR)
        asm.block(table["clone"], body)
    if "clone3" in table:
        body = _Asm()
        body.ret(ret_errno(errno.ENOSYS))
        asm.block(table["clone3"], body)
    for name, pair in (("socket", False), ("socketpair", True)):
        if name in table and name not in spec.deny:
            asm.block(table[name], _socket_rule(spec, pair, allow(name)))
    if "ioctl" in table and "ioctl" not in spec.deny:
        body = _Asm()
        body.load(_arg_lo(1))  # the kernel reads cmd as a 32-bit int
        body.emit(_JEQ_K, _TIOCSTI, 1, 0)
        body.emit(_JEQ_K, _TIOCLINUX, 0, 1)
        body.ret(ret_errno(errno.EPERM))
        body.load(_OFF_NR)
        asm.block(table["ioctl"], body)
    if "personality" in table and "personality" not in spec.deny:
        # Reading the persona (0xffffffff) or keeping PER_LINUX is harmless;
        # anything else could turn off ASLR (ADDR_NO_RANDOMIZE) and the like.
        body = _Asm()
        body.load(_arg_lo(0))
        body.emit(_JEQ_K, 0xFFFFFFFF, 1, 0)
        body.emit(_JEQ_K, 0, 0, 1)
        body.ret(allow("personality"))
        body.ret(ret_errno(errno.EPERM))
        asm.block(table["personality"], body)
    return asm


def _runs(actions: Mapping[int, int], default: int) -> list[tuple[int, int]]:
    """``[(first number, action), ...]``: each number up to the next entry's
    first gets the action; runs of consecutive numbers with one action merge."""
    spans: list[list[int]] = []  # [first, last + 1, action]
    for nr in sorted(actions):
        if spans and spans[-1][1] == nr and spans[-1][2] == actions[nr]:
            spans[-1][1] = nr + 1
        else:
            spans.append([nr, nr + 1, actions[nr]])
    runs = [(0, default)]
    for first, end, action in spans:
        if runs[-1][0] == first:
            runs[-1] = (first, action)
        else:
            runs.append((first, action))
        runs.append((end, default))
    return runs


def _search(runs: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Code returning the action of the run that holds the number in A."""
    if len(runs) == 1:
        return [(_RET_K, 0, 0, runs[0][1])]
    mid = len(runs) // 2
    low, high = _search(runs[:mid]), _search(runs[mid:])
    if len(low) <= 255:
        return [(_JGE_K, len(low), 0, runs[mid][0]), *low, *high]
    # Too far for jge's 8-bit offset: hop over the low half with a ja.
    return [(_JGE_K, 0, 1, runs[mid][0]), (_JA, 0, 0, len(low)), *low, *high]


def build_filter(spec: FilterSpec) -> bytes:
    """Assemble the filter described by ``spec`` (``struct sock_filter[]``)."""
    asm = _Asm()
    asm.load(_OFF_ARCH)
    asm.emit(_JEQ_K, spec.arch, 1, 0)
    asm.ret(RET_KILL_PROCESS)
    asm.load(_OFF_NR)
    if spec.arch == AUDIT_ARCH_X86_64:
        asm.emit(_JGE_K, _X32_SYSCALL_BIT, 0, 1)
        asm.ret(RET_KILL_PROCESS)
    if spec.key is not None:
        # Only where the filter would not simply allow the call: a syscall
        # whose answer depends on its arguments is no longer in the kernel's
        # allow cache, and write() is hot.  Denied ones must be exempt too, or
        # a policy denying exit_group would leave the child spinning in its
        # error path, and the caller blocked in vfork, for ever.
        for name in PRE_EXEC_CALLS:
            if name in spec.notify or name in spec.deny:
                asm.block(spec.table[name], _keyed_exemption(spec.key))
    asm.insns.extend(_rules(spec).insns)
    table = spec.table
    actions = {table[n]: RET_USER_NOTIF for n in spec.notify if n in table}
    actions.update({table[n]: ret_errno(errno.EPERM) for n in spec.deny if n in table})
    asm.insns.extend(_search(_runs(actions, RET_ALLOW)))
    return asm.assemble()
