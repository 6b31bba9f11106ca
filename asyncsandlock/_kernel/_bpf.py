"""Policy -> seccomp BPF program, assembled here from per-arch syscall tables.

Every syscall of the table has a decision (``_syscall_policy.py``): allow,
an argument check, a guard, or an errno.  The program, in order:

1. kill the process if ``seccomp_data.arch`` is not the running arch, and on
   x86_64 if the number has the x32 bit set (x32 numbers alias x86_64 ones);
2. one search over the syscall number, whose leaves either return the
   action (allow, USER_NOTIF, an errno; ENOSYS for numbers no table names)
   or jump to the block of an argument-checked syscall, placed after the
   search.  A block returns on every path.

The search is a binary search tree of ``jge`` over runs of numbers, not a
list of ``jeq``: when a filter is attached, the kernel runs it once for every
syscall number to fill its allow cache (``seccomp_cache_prepare``), so the
cost of attaching it, paid by every spawn, grows with the path each number
takes (the tree's shape weighs that walk: ``_search``).  Attaching also
costs ~0.2-0.3 us per instruction (the kernel checks, translates and
JIT-compiles the program each time), so the program
is built as a graph of hash-consed nodes (``_Graph``) and laid out at the
end: every return is emitted once and jumped to from anywhere, two
syscalls with equal code share it, the keyed exemption is one check for
every keyed call, and a number alone between two runs of one action is a
``jeq`` at the merged run's leaf instead of two boundaries.  The guards'
policy went from 381 to 206 instructions on x86_64, then to 192 (a
64-bit key check, or none: ``_key_words``, ``_keyed``), every decision the
same (``tests/test_bpf.py`` compares the laid-out program with each
syscall's own code).  Argument checks hang off the leaves: a chain of
checks before the search would be walked by every syscall the cache does
not hold.  The hot calls (read, write, close, fstat, mmap, futex...) never
look at their arguments, so they stay in the cache; ``openat`` is checked
in three instructions.

BPF compares 32-bit words.  The checks read the low word of an argument
where the kernel itself reads an ``int`` (modes, flags, pids, ioctl
commands): high bits cannot hide a value from the filter that the kernel
would then ignore.

The child's own calls after the filter is installed (``PRE_EXEC_CALLS``,
see the essay at the top of ``csrc/spawn.c``) carry a 192-bit key in
argument registers 3..5, of which the filter compares 64 (``_key_words``);
such a call is allowed when the key matches, unless its own code already
allows it with the arguments the child passes (``CHILD_ARGS``): then it
needs no key, and a policy like the README's has no key check at all.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._syscall_policy import DECISIONS, Rule, names

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


_EPERM = ret_errno(errno.EPERM)

#: Sent to a built-in guard when the policy has one, else EPERM (see
#: ``FilterSpec.guarded``); a user handler alone never opens them.
GUARDED: frozenset[str] = names(Rule.GUARDED)
#: Guarded only when the policy has a network guard (``handlers/net.py``):
#: CHECKED in the table, since without one they are allowed (Landlock and the
#: socket checks decide); with one they go to it (sendto only with an
#: address), or fail closed (EPERM) without the supervisor.
NET_GUARDED: frozenset[str] = frozenset(("connect", "sendto", "sendmsg", "sendmmsg"))
#: Refused whatever the policy (EPERM, or ENOSYS where the table says so).
DEFAULT_DENY: tuple[str, ...] = tuple(sorted(names(Rule.EPERM) | names(Rule.ENOSYS)))
#: SysV IPC and POSIX message queues: refused unless ``allow_sysv_ipc``.
IPC_CALLS: frozenset[str] = names(Rule.IPC)

# clone flags a thread or a process of the sandbox may use: the exit signal
# (CSIGNAL, below 0x80), VM FS FILES SIGHAND PIDFD VFORK THREAD SYSVSEM SETTLS
# PARENT_SETTID CHILD_CLEARTID DETACHED CHILD_SETTID IO.  Refused: PTRACE,
# PARENT (the child would be the caller's, out of the sandbox's reach),
# UNTRACED, and every NEW* namespace flag (NEWTIME is 0x80 for clone3 only;
# clone reads 0x80 as part of an invalid exit signal, refused too).
_CLONE_ALLOWED = (0x0000007F | 0x00000100 | 0x00000200 | 0x00000400 | 0x00000800
                  | 0x00001000 | 0x00004000 | 0x00010000 | 0x00040000 | 0x00080000
                  | 0x00100000 | 0x00200000 | 0x00400000 | 0x01000000 | 0x80000000)
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
_AF_INET = 2
_AF_INET6 = 10
_SOCK_STREAM = 1
_SOCK_DGRAM = 2
_SOCK_TYPE_MASK = 0xF
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_IPPROTO_ICMP = 1
_IPPROTO_ICMPV6 = 58
_TCP_FASTOPEN_CONNECT = 30
_MSG_FASTOPEN = 0x20000000
_S_ISUID_ISGID = 0o6000
# O_CREAT | __O_TMPFILE: the flags under which open reads its mode (the same
# on x86_64 and aarch64).
_O_CREATING = 0o100 | 0o20000000
#: ioctls refused always: faking terminal input (TIOCSTI), the console's
#: ioctl multiplexer (TIOCLINUX), changing the terminal's line discipline
#: (TIOCSETD), inode flags (FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR) and fs-verity,
#: which would freeze any file the child's uid owns.
_IOCTL_DENIED = (0x5412, 0x541C, 0x5423, 0x40086602, 0x401C5820, 0x40806685)
#: ioctls that take over the terminal (TIOCSPGRP TIOCSCTTY TIOCSWINSZ
#: TIOCCONS TIOCNOTTY): refused unless ``interactive``.
_IOCTL_TERMINAL = (0x5410, 0x540E, 0x5414, 0x541D, 0x5422)
_PRIO_USER = 2
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_WHO_PGRP = 2


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """Everything a filter depends on; equal specs give equal programs."""

    arch: int
    table: Mapping[str, int]
    #: Refused outright: ``DEFAULT_DENY`` plus the policy's extra denials.
    deny: frozenset[str]
    #: Trapped for the handlers where the filter would allow them.
    notify: frozenset[str]
    key: tuple[int, int, int] | None
    allow_udp: bool
    allow_unix: bool = False
    #: The GUARDED syscalls a built-in guard of the policy serves.
    guarded: frozenset[str] = frozenset()
    allow_sysv_ipc: bool = False
    #: The child may take over its terminal (TIOCSPGRP and the like).
    interactive: bool = False
    #: TCP fast open may connect anywhere: ``net_allow`` opens every TCP port.
    fastopen_ok: bool = False
    #: False: no decision table, only ``deny`` and ``notify`` (probe children).
    baseline: bool = True
    #: Guarded syscalls whose calls on the process itself (pid 0) a user
    #: handler traps: those are trapped too, while the guards alone let
    #: them through unseen (glibc reads RLIMIT_STACK at every exec).  And
    #: ``clone`` when a handler wants the clones that make a thread of the
    #: process itself (CLONE_THREAD): ``max_processes`` alone lets them
    #: through unseen (``handlers/process_limit.py``, ``sees_threads``);
    #: likewise ``rt_sigaction``, of which it sees only new SIGCHLD actions
    #: (``sees_every_sigaction``).
    self_trapped: frozenset[str] = frozenset()
    #: Kernel ping sockets (SOCK_DGRAM with IPPROTO_ICMP or ICMPV6): ``icmp://`` rules.
    allow_icmp: bool = False


class _Asm:
    def __init__(self) -> None:
        self.insns: list[tuple[int, int, int, int]] = []

    def emit(self, code: int, k: int = 0, jt: int = 0, jf: int = 0) -> None:
        self.insns.append((code, jt, jf, k & 0xFFFFFFFF))

    def load(self, offset: int) -> None:
        self.emit(_LD_W_ABS, offset)

    def ret(self, action: int) -> None:
        self.emit(_RET_K, action)

    def assemble(self) -> bytes:
        if len(self.insns) > 4096:
            raise ValueError(f"BPF program has {len(self.insns)} instructions; the limit is 4096")
        return b"".join(struct.pack("=HBBI", c, jt, jf, k) for c, jt, jf, k in self.insns)


#: What a syscall gets: a return value, or a block of code that returns.
_Action = int | tuple[tuple[int, int, int, int], ...]


def _block(asm: _Asm) -> _Action:
    return tuple(asm.insns)


def _test(arg: int, op: int, k: int, hit: int, miss: int) -> _Action:
    """``return hit if (args[arg] op k) else miss``, on the argument's low word."""
    if hit == miss:
        return hit
    asm = _Asm()
    asm.load(_arg_lo(arg))
    asm.emit(op, k, 0, 1)
    asm.ret(hit)
    asm.ret(miss)
    return _block(asm)


def _key_words(key: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(offset, word) of the key words the filter compares: the two of
    ``key[1]``, in argument 4.

    64 bits are what the threat needs, and each word compared costs the
    program two instructions (~0.8 us per spawn to attach).  The threat is
    an online guess: the sandboxed program, which cannot read the key (see
    the essay of ``csrc/spawn.c``), makes a keyed call with a guess in its
    registers and sees whether the filter let it through.  Each guess is a
    system call through the filter (~0.1 us at the very least, usually a
    round trip with the supervisor), no faster in parallel than the cores
    allow: 2**63 guesses, the expected number, take ~290 years at a
    billion a second.  ``key[1]`` because all its 64 bits are random:
    ``key[0]`` has two fixed bits (``_plan._new_key``, for prlimit64), and
    the child keeps passing all three words, so the kernel sees the same
    calls as before."""
    return [(_arg_lo(4), key[1] & 0xFFFFFFFF), (_arg_hi(4), key[1] >> 32)]


def _keyed_exemption(key: tuple[int, int, int]) -> _Asm:
    """Allow when the call carries ``key`` (``_key_words``); else fall
    through to what follows."""
    body = _Asm()
    words = _key_words(key)
    for n, (offset, word) in enumerate(words):
        remaining = len(words) - n - 1
        body.load(offset)
        # mismatch: jump over the rest of the checks and the ALLOW
        body.emit(_JEQ_K, word, 0, 2 * remaining + 1)
    body.ret(RET_ALLOW)
    return body


class _Ctx:
    """The answers a check may give for one syscall of one spec."""

    def __init__(self, spec: FilterSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        #: Where the filter lets the call through: the handlers see it if they trap it.
        self.allow = RET_USER_NOTIF if name in spec.notify else RET_ALLOW
        #: A guarded call that passed the filter's own checks.
        self.guard = RET_USER_NOTIF if name in spec.guarded and name in spec.notify else _EPERM
        #: The call on the process itself (pid 0): nothing for a guard to check.
        self.own = (RET_ALLOW if name in spec.guarded and name not in spec.self_trapped
                    else self.allow)


def _clone(c: _Ctx) -> _Action:
    """Flags outside ``_CLONE_ALLOWED``: EPERM.  A thread (CLONE_THREAD)
    goes untrapped unless a handler wants to see threads (``self_trapped``):
    trapped, it costs a round trip with the supervisor for nothing
    (docs/limits.md, "Forks and signals").  Only the low word counts: the
    kernel reads the flags as 32 bits."""
    if c.allow != RET_USER_NOTIF or c.name in c.spec.self_trapped:
        return _test(0, _JSET_K, ~_CLONE_ALLOWED, _EPERM, c.allow)
    asm = _Asm()
    asm.load(_arg_lo(0))
    asm.emit(_JSET_K, ~_CLONE_ALLOWED, 0, 1)
    asm.ret(_EPERM)
    asm.emit(_JSET_K, _CLONE_THREAD, 0, 1)
    asm.ret(RET_ALLOW)
    asm.ret(c.allow)
    return _block(asm)


_SIGCHLD = 17  # the same on every arch of the table


def _rt_sigaction(c: _Ctx) -> _Action:
    """Trapped for ``max_processes`` alone (no handler of ``self_trapped``
    wants every call): only a new action for SIGCHLD, so that the
    supervisor can make its handler restart (``handlers/process_limit.py``,
    docs/limits.md "Forks and signals").  Every other signal, and a query
    (``act`` NULL, both words 0), passes unseen: a program sets dozens of
    actions as it starts.  The signal is an ``int``: its low word."""
    if c.allow != RET_USER_NOTIF or c.name in c.spec.self_trapped:
        return c.allow
    asm = _Asm()
    asm.load(_arg_lo(0))
    asm.emit(_JEQ_K, _SIGCHLD, 1, 0)
    asm.ret(RET_ALLOW)
    asm.load(_arg_lo(1))
    asm.emit(_JEQ_K, 0, 1, 0)
    asm.ret(c.allow)
    asm.load(_arg_hi(1))
    asm.emit(_JEQ_K, 0, 0, 1)
    asm.ret(RET_ALLOW)
    asm.ret(c.allow)
    return _block(asm)


def _socket_rule(c: _Ctx) -> _Action:
    """socketpair: unix only.  socket: unix if allowed; inet/inet6: TCP
    streams, and UDP datagrams if allowed.

    Landlock (up to ABI 7) does not govern connect() or sendto() to a
    *pathname* unix socket: with socket(AF_UNIX) allowed, a child could reach
    any listening socket on the host whose path it can name (a container
    runtime's, a message bus's).  So socket(AF_UNIX) is refused unless the
    policy opts in; socketpair() makes an anonymous, already connected pair
    and stays allowed.
    """
    spec, allow, pair = c.spec, c.allow, c.name == "socketpair"
    body = _Asm()
    deny = ret_errno(errno.EAFNOSUPPORT)
    body.load(_arg_lo(0))
    body.emit(_JEQ_K, _AF_UNIX, 0, 1)
    body.ret(allow if pair or spec.allow_unix else ret_errno(errno.EACCES))
    if pair:
        body.ret(deny)
        return _block(body)
    # Indices below are fixed: 20 is ALLOW, 21 is DENY.
    udp = allow if spec.allow_udp else deny
    icmp = allow if spec.allow_icmp else deny
    body.emit(_JEQ_K, _AF_INET, 1, 0)  # 3
    body.emit(_JEQ_K, _AF_INET6, 0, 16)  # 4
    body.load(_arg_lo(1))  # 5
    body.emit(_ALU_AND_K, _SOCK_TYPE_MASK)  # 6: drop SOCK_NONBLOCK / SOCK_CLOEXEC
    body.emit(_JEQ_K, _SOCK_STREAM, 0, 3)  # 7
    body.load(_arg_lo(2))  # 8
    body.emit(_JEQ_K, 0, 10, 0)  # 9: default protocol of a stream is TCP
    body.emit(_JEQ_K, _IPPROTO_TCP, 9, 10)  # 10: not SCTP/MPTCP, Landlock sees TCP only
    body.emit(_JEQ_K, _SOCK_DGRAM, 0, 9)  # 11: raw sockets never
    body.load(_arg_lo(2))  # 12
    body.emit(_JEQ_K, 0, 0, 1)  # 13: default protocol of a datagram is UDP
    body.ret(udp)  # 14
    body.emit(_JEQ_K, _IPPROTO_UDP, 0, 1)  # 15: not UDP-Lite
    body.ret(udp)  # 16
    # Kernel "ping" sockets; the address family decides ICMP or ICMPv6.
    body.emit(_JEQ_K, _IPPROTO_ICMP, 1, 0)  # 17
    body.emit(_JEQ_K, _IPPROTO_ICMPV6, 0, 2)  # 18
    body.ret(icmp)  # 19
    body.ret(allow)  # 20
    body.ret(deny)  # 21
    return _block(body)


def _creating(flags: int, mode: int) -> Callable[[_Ctx], _Action]:
    """open/openat: EPERM when creating with a setuid/setgid mode.  The mode
    is tested first: it is 0 in nearly every call, so the usual path is
    three instructions."""
    def check(c: _Ctx) -> _Action:
        asm = _Asm()
        asm.load(_arg_lo(mode))
        asm.emit(_JSET_K, _S_ISUID_ISGID, 0, 3)
        asm.load(_arg_lo(flags))
        asm.emit(_JSET_K, _O_CREATING, 0, 1)
        asm.ret(_EPERM)
        asm.ret(c.allow)
        return _block(asm)
    return check


def _mode(arg: int, guarded: bool) -> Callable[[_Ctx], _Action]:
    """EPERM for a setuid/setgid bit in the mode ``arg``; else allowed, or
    guarded (chmod: the file may not be the sandbox's)."""
    return lambda c: _test(arg, _JSET_K, _S_ISUID_ISGID, _EPERM, c.guard if guarded else c.allow)


def _send(flags: int, addr: int | None) -> Callable[[_Ctx], _Action]:
    """MSG_FASTOPEN connects with the data, and Landlock's connect check
    (up to ABI 7) is not on that path: only where every port is open.

    With a network guard (``NET_GUARDED`` in the spec's guarded), a send
    carrying an address goes to it: sendto when its ``addr`` argument (a
    64-bit pointer: both words) is not NULL; sendmsg and sendmmsg always,
    since their address is in memory BPF cannot read."""
    def check(c: _Ctx) -> _Action:
        # A send without an address is data on a connected socket: allowed
        # unseen (``own``), unless a user handler traps the syscall too.
        after = c.guard if c.name in c.spec.guarded and addr is None else c.own
        asm = _Asm()
        if not c.spec.fastopen_ok:
            asm.load(_arg_lo(flags))
            asm.emit(_JSET_K, _MSG_FASTOPEN, 0, 1)
            asm.ret(_EPERM)
        if c.name in c.spec.guarded and addr is not None:
            asm.load(_arg_lo(addr))
            asm.emit(_JEQ_K, 0, 0, 3)
            asm.load(_arg_hi(addr))
            asm.emit(_JEQ_K, 0, 0, 1)
            asm.ret(after)
            asm.ret(c.guard)
        elif not asm.insns:
            return after
        else:
            asm.ret(after)
        return _block(asm)
    return check


def _connect(c: _Ctx) -> _Action:
    """To the network guard when the policy has one (its sockaddr is in
    memory BPF cannot read), else Landlock decides."""
    return c.guard if c.name in c.spec.guarded else c.allow


def _setsockopt(c: _Ctx) -> _Action:
    """TCP_FASTOPEN_CONNECT makes the next connect() a fast open, whose
    write then connects as MSG_FASTOPEN does."""
    if c.spec.fastopen_ok:
        return c.allow
    asm = _Asm()
    asm.load(_arg_lo(1))
    asm.emit(_JEQ_K, _IPPROTO_TCP, 0, 3)
    asm.load(_arg_lo(2))
    asm.emit(_JEQ_K, _TCP_FASTOPEN_CONNECT, 0, 1)
    asm.ret(_EPERM)
    asm.ret(c.allow)
    return _block(asm)


def _self_only(c: _Ctx) -> _Action:
    """pid 0 (the caller) only; not worth a guard."""
    return _test(0, _JEQ_K, 0, c.allow, _EPERM)


def _self_or_guard(c: _Ctx) -> _Action:
    """pid 0 (the caller) allowed; another pid goes to the guard."""
    return _test(0, _JEQ_K, 0, c.own, c.guard)


def _setpriority(c: _Ctx) -> _Action:
    """PRIO_PROCESS (0) or PRIO_PGRP (1) of who 0 (self, the sandbox's own
    group): allowed; other pids and groups: the guard; PRIO_USER: never."""
    asm = _Asm()
    asm.load(_arg_lo(0))
    asm.emit(_JGE_K, _PRIO_USER, 4, 0)
    asm.load(_arg_lo(1))
    asm.emit(_JEQ_K, 0, 0, 1)
    asm.ret(c.own)
    asm.ret(c.guard)
    asm.ret(_EPERM)
    return _block(asm)


def _ioprio_set(c: _Ctx) -> _Action:
    """As setpriority, with IOPRIO_WHO_PROCESS (1) and IOPRIO_WHO_PGRP (2)."""
    asm = _Asm()
    asm.load(_arg_lo(0))
    asm.emit(_JEQ_K, _IOPRIO_WHO_PROCESS, 1, 0)
    asm.emit(_JEQ_K, _IOPRIO_WHO_PGRP, 0, 4)
    asm.load(_arg_lo(1))
    asm.emit(_JEQ_K, 0, 0, 1)
    asm.ret(c.own)
    asm.ret(c.guard)
    asm.ret(_EPERM)
    return _block(asm)


def _ioctl(c: _Ctx) -> _Action:
    """The kernel reads cmd as an unsigned int: compare its low word only."""
    denied = _IOCTL_DENIED + (() if c.spec.interactive else _IOCTL_TERMINAL)
    asm = _Asm()
    asm.load(_arg_lo(1))
    for i, cmd in enumerate(denied):
        asm.emit(_JEQ_K, cmd, len(denied) - i, 0)
    asm.ret(c.allow)
    asm.ret(_EPERM)
    return _block(asm)


def _personality(c: _Ctx) -> _Action:
    """Reading the persona (0xffffffff) or keeping PER_LINUX is harmless;
    anything else could turn off ASLR (ADDR_NO_RANDOMIZE) and the like."""
    asm = _Asm()
    asm.load(_arg_lo(0))
    asm.emit(_JEQ_K, 0xFFFFFFFF, 1, 0)
    asm.emit(_JEQ_K, 0, 0, 1)
    asm.ret(c.allow)
    asm.ret(_EPERM)
    return _block(asm)


_PR_SET_THP_DISABLE = 41


def _prctl(c: _Ctx) -> _Action:
    """PR_SET_THP_DISABLE only to turn huge pages off, all of them: with
    arg2 0 it turns them back on, and with a flag in arg3 (6.18's
    PR_THP_DISABLE_EXCEPT_ADVISED) it lets madvised memory have them again.
    Under ``max_memory`` the child starts with them off (``_limits.py``,
    ``huge_pages_off``).  The option is an int (its low word alone); arg2
    is a bool of all 64 bits and arg3 a long, so both words of each count."""
    asm = _Asm()
    asm.load(_arg_lo(0))
    asm.emit(_JEQ_K, _PR_SET_THP_DISABLE, 1, 0)
    asm.ret(c.allow)
    asm.load(_arg_lo(1))
    asm.emit(_JEQ_K, 0, 0, 2)  # arg2 low word 0: the high one decides
    asm.load(_arg_hi(1))
    asm.emit(_JEQ_K, 0, 4, 0)  # arg2 == 0: turns them on
    asm.load(_arg_lo(2))
    asm.emit(_JEQ_K, 0, 0, 2)
    asm.load(_arg_hi(2))
    asm.emit(_JEQ_K, 0, 1, 0)
    asm.ret(_EPERM)
    asm.ret(c.allow)
    return _block(asm)


#: The CHECKED and GUARDED syscalls: name -> its check.
CHECKS: Mapping[str, Callable[[_Ctx], _Action]] = {
    "open": _creating(1, 2),
    "openat": _creating(2, 3),
    "creat": _mode(1, False),
    "mknod": _mode(1, False),
    "mknodat": _mode(2, False),
    "chmod": _mode(1, True),
    "fchmod": _mode(1, True),
    "fchmodat": _mode(2, True),
    "fchmodat2": _mode(2, True),
    "sendto": _send(3, 4),
    "sendmsg": _send(2, None),
    "sendmmsg": _send(3, None),
    "connect": _connect,
    "setsockopt": _setsockopt,
    "socket": _socket_rule,
    "socketpair": _socket_rule,
    "clone": _clone,
    "ioctl": _ioctl,
    "personality": _personality,
    "prctl": _prctl,
    "migrate_pages": _self_only,
    "move_pages": _self_only,
    "get_robust_list": _self_only,
    "prlimit64": _self_or_guard,
    "sched_setaffinity": _self_or_guard,
    "sched_setscheduler": _self_or_guard,
    "sched_setparam": _self_or_guard,
    "sched_setattr": _self_or_guard,
    "setpriority": _setpriority,
    "ioprio_set": _ioprio_set,
}

#: Allowed syscalls whose trap, when a built-in handler asks for one, is
#: narrowed to the calls it needs; the rest pass unseen.
NARROWED: Mapping[str, Callable[[_Ctx], _Action]] = {
    "rt_sigaction": _rt_sigaction,
}


def _unkeyed(spec: FilterSpec, name: str) -> _Action:
    """What the filter does with ``name``, keyed exemption aside."""
    c = _Ctx(spec, name)
    rule = DECISIONS[name].rule if spec.baseline else Rule.ALLOW
    action: _Action
    if name in spec.deny:
        action = ret_errno(errno.ENOSYS if rule is Rule.ENOSYS else errno.EPERM)
    elif rule is Rule.ALLOW:
        action = NARROWED[name](c) if name in NARROWED else c.allow
    elif rule is Rule.ENOSYS:
        action = ret_errno(errno.ENOSYS)
    elif rule is Rule.EPERM:
        action = _EPERM
    elif rule is Rule.IPC:
        action = c.allow if spec.allow_sysv_ipc else _EPERM
    elif name in CHECKS:
        action = CHECKS[name](c)
    else:  # GUARDED with no check of its own
        action = c.guard
    return action


#: The arguments the child's own calls always pass (``KEYED`` in
#: csrc/spawn.c): sendmsg of the listener with no flags, prlimit64 on itself,
#: exit_group(127).  The others (the fd and length of a write, execve's
#: pointers) vary.
CHILD_ARGS: Mapping[str, Mapping[int, int]] = {
    "sendmsg": {2: 0},
    "prlimit64": {0: 0},
    "exit_group": {0: 127, 1: 0, 2: 0},
}


def _allows(code: tuple[tuple[int, int, int, int], ...], known: Mapping[int, int]) -> bool:
    """Whether every path of ``code`` that arguments with the ``known``
    values (index -> value) can take returns ALLOW; the other arguments
    may be anything."""
    words = {_arg_lo(i): v & 0xFFFFFFFF for i, v in known.items()}
    words.update({_arg_hi(i): v >> 32 for i, v in known.items()})

    def walk(pc: int, acc: int | None) -> bool:
        while True:
            c, jt, jf, k = code[pc]
            pc += 1
            if c == _RET_K:
                return k == RET_ALLOW
            if c == _LD_W_ABS:
                acc = words.get(k)
            elif c == _ALU_AND_K:
                acc = None if acc is None else acc & k
            elif c == _JA:
                pc += k
            elif acc is None:
                return walk(pc + jt, None) and walk(pc + jf, None)
            else:
                holds = (acc == k if c == _JEQ_K else acc >= k if c == _JGE_K
                         else bool(acc & k))
                pc += jt if holds else jf
    return walk(0, None)


def _keyed(spec: FilterSpec, name: str, action: _Action) -> bool:
    """The child's own call, made while the parent sleeps in vfork and can
    answer no notification (a denied exit_group would leave it spinning):
    allowed when it carries the key.  Not where the call's own code already
    allows it with the arguments the child passes (``CHILD_ARGS``): the
    listener's sendmsg has no MSG_FASTOPEN, prlimit64 is on the child
    itself (``own``, allowed under the guards alone).  Then the call gets
    the same answer with or without the key, and the program has no key
    check for it (and none at all when no keyed call is left)."""
    if spec.key is None or name not in PRE_EXEC_CALLS:
        return False
    if isinstance(action, int):
        return action != RET_ALLOW
    return not _allows(action, CHILD_ARGS.get(name, {}))


def _action(spec: FilterSpec, name: str) -> _Action:
    """What the filter does with ``name``, keyed exemption included, as code
    of its own: the meaning ``build_filter`` lays out."""
    action = _unkeyed(spec, name)
    if spec.key is None or not _keyed(spec, name, action):
        return action
    asm = _keyed_exemption(spec.key)
    if isinstance(action, int):
        asm.ret(action)
    else:
        asm.insns.extend(action)
    return _block(asm)


def _runs(actions: Mapping[int, int], default: int) -> list[tuple[int, int]]:
    """``[(first number, action), ...]``: each number up to the next entry's
    first gets the action; runs of consecutive numbers with one action merge."""
    spans: list[tuple[int, int, int]] = []  # (first, last + 1, action)
    for nr in sorted(actions):
        if spans and spans[-1][1] == nr and spans[-1][2] == actions[nr]:
            spans[-1] = (spans[-1][0], nr + 1, actions[nr])
        else:
            spans.append((nr, nr + 1, actions[nr]))
    runs: list[tuple[int, int]] = [(0, default)]
    for first, end, action in spans:
        if runs[-1][0] == first:
            runs[-1] = (first, action)
        else:
            runs.append((first, action))
        runs.append((end, default))
    return runs


class _Graph:
    """A program as a graph of instructions, hash-consed: equal nodes are one
    node, so a return, a check's tail or the block of two syscalls is emitted
    once, and every jump goes straight to it.  A node is ``(code, k)`` for a
    return, ``(code, k, next)`` for a load or an AND, ``(code, k, true,
    false)`` for a conditional jump; successors are node ids."""

    def __init__(self) -> None:
        self.nodes: list[tuple[int, ...]] = []
        self._ids: dict[tuple[int, ...], int] = {}

    def node(self, *n: int) -> int:
        found = self._ids.get(n)
        if found is None:
            found = self._ids[n] = len(self.nodes)
            self.nodes.append(n)
        return found

    def jump(self, op: int, k: int, true: int, false: int) -> int:
        return true if true == false else self.node(op, k & 0xFFFFFFFF, true, false)

    def code(self, insns: tuple[tuple[int, int, int, int], ...]) -> int:
        """The node of straight-line code that returns on every path (a block)."""
        memo: dict[int, int] = {}

        def at(pc: int) -> int:
            if pc not in memo:
                c, jt, jf, k = insns[pc]
                if c == _RET_K:
                    memo[pc] = self.node(c, k)
                elif c == _JA:
                    memo[pc] = at(pc + 1 + k)
                elif c in (_LD_W_ABS, _ALU_AND_K):
                    memo[pc] = self.node(c, k, at(pc + 1))
                else:
                    memo[pc] = self.jump(c, k, at(pc + 1 + jt), at(pc + 1 + jf))
            return memo[pc]
        return at(0)

    def layout(self, entry: int) -> list[tuple[int, int, int, int]]:
        """The instructions, every node before its successors (reverse
        postorder, a load's successor visited last so it lands right after
        it; else a ``ja`` follows).  A conditional jump farther than its
        8-bit offsets reach goes through a ``ja`` placed right after it."""
        post: list[int] = []
        seen: set[int] = set()

        def visit(n: int) -> None:
            seen.add(n)
            for succ in reversed(self.nodes[n][2:]):
                if succ not in seen:
                    visit(succ)
            post.append(n)
        visit(entry)
        order = post[::-1]
        follows = dict(itertools.pairwise(order))
        extra = {n: int(len(self.nodes[n]) == 3 and follows.get(n) != self.nodes[n][2])
                 for n in order}
        while True:  # trampolines only grow the program: a fixed point comes
            pos, pc = {}, 0
            for n in order:
                pos[n] = pc
                pc += 1 + extra[n]
            grown = False
            for n in order:
                if len(self.nodes[n]) == 4:
                    far = sum(pos[t] - pos[n] - 1 > 255 for t in self.nodes[n][2:])
                    if far > extra[n]:
                        extra[n], grown = far, True
            if not grown:
                break
        out: list[tuple[int, int, int, int]] = []
        for n in order:
            code, k, *succs = self.nodes[n]
            if len(succs) == 2:
                offsets: list[int] = []
                hops: list[int] = []
                for t in succs:
                    d = pos[t] - pos[n] - 1
                    if d > 255:
                        offsets.append(len(hops))
                        hops.append(t)
                    else:
                        offsets.append(d)
                assert len(hops) == extra[n]
                out.append((code, offsets[0], offsets[1], k))
                for i, t in enumerate(hops):
                    out.append((_JA, 0, 0, pos[t] - (pos[n] + 1 + i) - 1))
            else:
                out.append((code, 0, 0, k))
                if extra[n]:
                    out.append((_JA, 0, 0, pos[succs[0]] - pos[n] - 2))
        return out


def _lift_singles(runs: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """A number alone between two runs of one action costs two ``jge`` in a
    search; as an exception (one ``jeq`` at the merged run's leaf) it costs
    one.  Returns the merged runs and {number: action}."""
    merged: list[tuple[int, int]] = []
    singles: dict[int, int] = {}
    i = 0
    while i < len(runs):
        first, action = runs[i]
        if (merged and i + 1 < len(runs) and runs[i + 1][0] == first + 1
                and merged[-1][1] == runs[i + 1][1]):
            singles[first] = action
            i += 2
            continue
        merged.append((first, action))
        i += 1
    return merged, singles


#: What one instruction of the program costs to attach, in steps of the
#: allow cache's walk (see ``_search``): ~0.19 us to check, convert and
#: JIT-compile an eBPF instruction, ~2.7 ns per step walked (6.18 in a VM,
#: docs/performance.md, "Attaching the filter").
_STEPS_PER_INSN = 70


def _search(g: _Graph, runs: list[tuple[int, int]], walked: int = 0) -> int:
    """The node returning the action (a node) of the run holding the number
    in A: a tree of ``jge``, its leaves a ``jeq`` per lifted number.

    Attaching a filter costs two things the tree decides.  The kernel runs
    it once for every number below ``walked`` (the size of its table) to
    fill its allow cache (``seccomp_cache_prepare``: every instruction a
    step of an emulator, interrupts off), so each level of the tree costs
    a step per number under it.  And a ``jge`` neither of whose targets
    can follow it (both are returns, emitted once at the end) is two eBPF
    instructions, not one, once the kernel converts the program.  So the
    tree is the cheapest by those two counts (``_STEPS_PER_INSN``), found
    by dynamic programming over the runs (Knuth's bounds on the root): a
    wide run (x86_64's 337-423, never assigned) sits near the root, and
    two returns meet under one ``jge`` as seldom as the steps allow.  A
    run the walk never visits weighs a little, which keeps the rest of the
    tree balanced for the calls made at run time."""
    merged, singles = _lift_singles(runs)
    starts = [first for first, _ in merged]
    n = len(merged)
    ends = [*starts[1:], 1 << 32]
    # A run's weight: the numbers of it the walk visits, each counting as
    # much as n runs never visited.
    weight = [n * max(0, min(end, walked) - first) + 1
              for first, end in zip(starts, ends, strict=True)]
    prefix = [0, *itertools.accumulate(weight)]
    # A lone run is a return (emitted once, elsewhere) unless numbers lifted
    # into it make it a jeq of its own, which can follow its jge.
    lifted = {bisect.bisect_right(starts, nr) - 1 for nr in singles}
    alone = [g.nodes[node][0] == _RET_K and i not in lifted for i, (_, node) in enumerate(merged)]
    pair = _STEPS_PER_INSN * n
    cost = [[0] * (n + 1) for _ in range(n + 1)]
    root = [[0] * (n + 1) for _ in range(n + 1)]
    for i in range(n - 1):
        root[i][i + 2] = i + 1
        cost[i][i + 2] = prefix[i + 2] - prefix[i] + (pair if alone[i] and alone[i + 1] else 0)
    for size in range(3, n + 1):
        for i in range(n - size + 1):
            j = i + size
            best, at = -1, 0
            # Knuth's bounds, both within (i, j); the pair term may break
            # their order, and any root in between still makes a tree.
            low, high = sorted((root[i][j - 1], root[i + 1][j]))
            for r in range(low, high + 1):
                c = cost[i][r] + cost[r][j]
                if best < 0 or c < best:
                    best, at = c, r
            cost[i][j] = best + prefix[j] - prefix[i]
            root[i][j] = at

    def tree(lo: int, hi: int) -> int:
        if hi - lo == 1:
            node = merged[lo][1]
            for nr in sorted((n for n in singles if starts[lo] <= n < ends[lo]), reverse=True):
                node = g.jump(_JEQ_K, nr, singles[nr], node)
            return node
        mid = root[lo][hi]
        return g.jump(_JGE_K, starts[mid], tree(mid, hi), tree(lo, mid))
    return tree(0, n)


def build_filter(spec: FilterSpec) -> bytes:
    """Assemble the filter described by ``spec`` (``struct sock_filter[]``)."""
    g = _Graph()
    kill = g.node(_RET_K, RET_KILL_PROCESS)
    actions: dict[int, int] = {}
    keyed: dict[int, int] = {}
    for name, nr in spec.table.items():
        action = _unkeyed(spec, name)
        node = g.code(action) if isinstance(action, tuple) else g.node(_RET_K, action)
        if _keyed(spec, name, action):
            keyed[nr] = node
        else:
            actions[nr] = node
    if spec.key is not None and keyed:
        # One key check for every keyed call: on a mismatch, the number (A
        # was overwritten) picks the call's own code again.
        *others, last = sorted(keyed)
        otherwise = keyed[last]
        for nr in others:
            otherwise = g.jump(_JEQ_K, nr, keyed[nr], otherwise)
        if others:
            otherwise = g.node(_LD_W_ABS, _OFF_NR, otherwise)
        check = g.node(_RET_K, RET_ALLOW)
        for offset, word in reversed(_key_words(spec.key)):
            check = g.node(_LD_W_ABS, offset, g.jump(_JEQ_K, word, check, otherwise))
        actions.update(dict.fromkeys(keyed, check))
    default = g.node(_RET_K, ret_errno(errno.ENOSYS) if spec.baseline else RET_ALLOW)
    runs = _runs(actions, default)
    if spec.arch == AUDIT_ARCH_X86_64:
        # x32 numbers (the bit set) alias x86_64 ones: killed.
        runs.append((_X32_SYSCALL_BIT, kill))
    search = g.node(_LD_W_ABS, _OFF_NR, _search(g, runs, max(spec.table.values(), default=0) + 1))
    entry = g.node(_LD_W_ABS, _OFF_ARCH, g.jump(_JEQ_K, spec.arch, search, kill))
    asm = _Asm()
    asm.insns = g.layout(entry)
    return asm.assemble()
