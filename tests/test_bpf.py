"""The seccomp programs of ``_bpf.py``, run by a small classic-BPF interpreter.

No kernel is involved: each program is checked the way the kernel's loader
checks it (``bpf_check_classic`` + ``seccomp_check_filter``), then run on
synthetic ``struct seccomp_data`` for both architectures' tables and several
policies.  The expected actions are written down here from the kernel's and
the policy's point of view, independently of how the assembler gets there.
"""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest

from asyncsandlock._bpf import DEFAULT_DENY, FilterSpec, build_filter
from asyncsandlock._plan import probe_plan
from asyncsandlock._sys import AUDIT_ARCH, SYSCALLS
from asyncsandlock._syscalls import AARCH64, X86_64

# -- what the kernel defines (uapi headers), written out independently -----

KILL_PROCESS = 0x80000000
ALLOW = 0x7FFF0000
USER_NOTIF = 0x7FC00000


def ERRNO(code: int) -> int:  # SECCOMP_RET_ERRNO | code
    return 0x00050000 | code


EPERM = ERRNO(errno.EPERM)
ENOSYS = ERRNO(errno.ENOSYS)
EACCES = ERRNO(errno.EACCES)
EAFNOSUPPORT = ERRNO(errno.EAFNOSUPPORT)

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_ARM = 0x40000028
X32_SYSCALL_BIT = 0x40000000

ARCHES = {"x86_64": (X86_64, AUDIT_ARCH_X86_64), "aarch64": (AARCH64, AUDIT_ARCH_AARCH64)}

CLONE_NS_FLAGS = {
    "CLONE_NEWTIME": 0x00000080, "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000, "CLONE_NEWNET": 0x40000000,
}
SIGCHLD = 17
# What glibc's pthread_create passes to clone.
CLONE_PTHREAD = 0x00000100 | 0x00000200 | 0x00000400 | 0x00000800 | 0x00010000 | 0x00040000 \
    | 0x00080000 | 0x00100000 | 0x00200000

AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6 = 0, 1, 2, 10
AF_NETLINK, AF_PACKET, AF_BLUETOOTH, AF_ALG, AF_VSOCK = 16, 17, 31, 38, 40
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
IPPROTO_SCTP, IPPROTO_UDPLITE, IPPROTO_RAW, IPPROTO_MPTCP = 132, 136, 255, 262

TIOCSTI, TIOCLINUX = 0x5412, 0x541C
TCGETS, TIOCGWINSZ, FIONREAD = 0x5401, 0x5413, 0x541B

PER_LINUX, PER_QUERY = 0, 0xFFFFFFFF
PER_LINUX32, ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC = 0x0008, 0x0040000, 0x0400000

KEY = (0x0123456789ABCDEF, 0xFEDCBA9876543210, 0x0F1E2D3C4B5A6978)
#: The child's own calls after its filter is attached (csrc/spawn.c).
KEYED = ("write", "sendmsg", "exit_group", "execve")
SWEEP = range(600)  # beyond the highest number of either table (~470)

# -- a classic BPF machine, restricted to what _bpf.py may emit --------------

LD_W_ABS, ALU_AND_K, JA = 0x20, 0x54, 0x05
JEQ_K, JGE_K, JSET_K, RET_K = 0x15, 0x35, 0x45, 0x06
SECCOMP_DATA_SIZE = 64  # nr, arch, instruction_pointer, args[6]
BPF_MAXINSNS = 4096


def decode(prog: bytes) -> list[tuple[int, int, int, int]]:
    """``struct sock_filter[]`` -> [(code, jt, jf, k)], refused as the kernel would."""
    assert len(prog) % 8 == 0
    insns = list(struct.iter_unpack("=HBBI", prog))
    assert 0 < len(insns) <= BPF_MAXINSNS
    for pc, (code, jt, jf, k) in enumerate(insns):
        if code == LD_W_ABS:
            assert k % 4 == 0 and k < SECCOMP_DATA_SIZE, f"{pc}: load of offset {k}"
        elif code == JA:
            assert pc + 1 + k < len(insns), f"{pc}: ja out of the program"
        elif code in (JEQ_K, JGE_K, JSET_K):
            assert pc + 1 + max(jt, jf) < len(insns), f"{pc}: jump out of the program"
        elif code not in (ALU_AND_K, RET_K):
            pytest.fail(f"{pc}: opcode {code:#x} is not one _bpf.py should emit")
    assert insns[-1][0] == RET_K, "the last instruction must return"
    return insns


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = ()) -> bytes:
    """``struct seccomp_data`` as the kernel fills it (both arches are little-endian)."""
    full = (*args, *(0,) * (6 - len(args)))
    return struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0x401000, *full)


def execute(insns: list[tuple[int, int, int, int]], data: bytes) -> int:
    """Run the program on ``data``; returns the RET value."""
    pc = acc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == LD_W_ABS:
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == ALU_AND_K:
            acc &= k
        elif code == JA:
            pc += k
        elif code == JEQ_K:
            pc += jt if acc == k else jf
        elif code == JGE_K:
            pc += jt if acc >= k else jf
        elif code == JSET_K:
            pc += jt if acc & k else jf
        else:
            assert code == RET_K
            return k


@dataclass(frozen=True)
class Filter:
    """A program built from a spec, ready to be run on syscalls."""

    spec: FilterSpec
    insns: list[tuple[int, int, int, int]]

    @classmethod
    def build(cls, spec: FilterSpec) -> Filter:
        return cls(spec, decode(build_filter(spec)))

    def nr(self, name: str) -> int:
        return self.spec.table[name]

    def run(self, nr: int | str, *args: int, arch: int | None = None) -> int:
        number = self.nr(nr) if isinstance(nr, str) else nr
        data = seccomp_data(number, self.spec.arch if arch is None else arch, args)
        return execute(self.insns, data)

    def allowed(self, name: str) -> int:
        """What an allowed call of ``name`` gets: handlers see it if they trap it."""
        return USER_NOTIF if name in self.spec.notify else ALLOW


def spec(arch: str, *, deny: frozenset[str] = frozenset(DEFAULT_DENY),
         notify: frozenset[str] = frozenset(), udp: bool = False,
         unix: bool = False) -> FilterSpec:
    """A spec as ``_plan`` makes one: the key only when something is notified."""
    table, audit = ARCHES[arch]
    return FilterSpec(audit, table, deny, notify, KEY if notify else None, udp, unix)


# -- the policies swept ------------------------------------------------------


def _every_other(table: Mapping[str, int], parity: int) -> frozenset[str]:
    """Alternating numbers: the most runs, hence the longest search tree."""
    return frozenset(n for n, nr in table.items() if nr % 2 == parity and n not in KEYED)


def _by_thirds(table: Mapping[str, int], third: int) -> frozenset[str]:
    return frozenset(n for n, nr in table.items()
                     if nr % 3 == third and n not in KEYED and n != "clone3")


def policies(arch: str) -> Iterator[tuple[str, FilterSpec, bool]]:
    """(name, spec, takes the long-jump path of the binary search)."""
    table = ARCHES[arch][0]
    default = frozenset(DEFAULT_DENY)
    yield "default", spec(arch), False
    yield "default, udp and unix", spec(arch, udp=True, unix=True), False
    yield "max_processes", spec(arch, notify=frozenset({"fork", "vfork", "clone"})), False
    yield "handlers", spec(arch, notify=frozenset(
        {"openat", "getpid", "connect", "socket", "socketpair", "ioctl", "personality",
         "clone", *KEYED}), udp=True), False
    yield "extra deny of the argument-checked calls", spec(arch, deny=default | {
        "clone", "clone3", "socket", "socketpair", "ioctl", "personality"}), False
    yield "every other number denied", spec(arch, deny=default | _every_other(table, 0)), True
    yield "thirds denied / notified / allowed", spec(
        arch, deny=default | _by_thirds(table, 0), notify=_by_thirds(table, 1) - default,
        unix=True), True


POLICIES = [pytest.param(arch, name, s, long, id=f"{arch}-{name}")
            for arch in ARCHES for name, s, long in policies(arch)]


def sweep_action(s: FilterSpec, name: str | None) -> int:
    """What a call of ``name`` with every argument 0 must get."""
    if name == "clone3":
        return ENOSYS  # always: libc falls back to clone, whose flags BPF can read
    if name in s.deny:
        return EPERM
    if name in ("socket", "socketpair"):
        return EAFNOSUPPORT  # family 0, AF_UNSPEC
    return USER_NOTIF if name in s.notify else ALLOW


@pytest.mark.parametrize(("arch", "name", "s", "long"), POLICIES)
def test_every_number_gets_its_action(arch: str, name: str, s: FilterSpec, long: bool) -> None:
    f = Filter.build(s)
    names = {nr: n for n, nr in s.table.items()}
    wrong = [(nr, names.get(nr), hex(got), hex(sweep_action(s, names.get(nr))))
             for nr in SWEEP if (got := f.run(nr)) != sweep_action(s, names.get(nr))]
    assert wrong == []
    # Numbers past the table (new kernels' syscalls) are not this policy's business.
    for nr in (1000, 0xFFFF, X32_SYSCALL_BIT - 1):
        assert f.run(nr) == ALLOW
    # The policy cases meant to exercise the long jump of the search do.
    assert any(code == JA for code, *_ in f.insns) == long


@pytest.mark.parametrize(("arch", "name", "s", "long"), POLICIES)
def test_a_foreign_arch_is_killed(arch: str, name: str, s: FilterSpec, long: bool) -> None:
    f = Filter.build(s)
    others = {AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, AUDIT_ARCH_ARM, 0,
              0xFFFFFFFF, s.arch ^ 1} - {s.arch}
    for other in others:
        for nr in (0, 1, f.nr("execve"), f.nr("getpid"), f.nr("clone3"), 400):
            assert f.run(nr, arch=other) == KILL_PROCESS
            assert f.run(nr, *(0, 0, 0, *KEY), arch=other) == KILL_PROCESS


@pytest.mark.parametrize("arch", ARCHES)
def test_x32_numbers_are_killed_on_x86_64_only(arch: str) -> None:
    f = Filter.build(spec(arch, notify=frozenset({"openat"})))
    for nr in (0, 1, 59, 512, 520, 547, 0x3FFFFFFF):
        got = f.run(X32_SYSCALL_BIT | nr)
        assert got == (KILL_PROCESS if arch == "x86_64" else ALLOW), hex(nr)
        # ...before the keyed exemption is looked at.
        assert f.run(X32_SYSCALL_BIT | nr, 0, 0, 0, *KEY) == got


# -- the keyed exemption -------------------------------------------------------


def _flipped(bit: int) -> tuple[int, ...]:
    """The key in args 3..5 with one of its 192 bits flipped."""
    key = list(KEY)
    key[bit // 64] ^= 1 << (bit % 64)
    return (0, 0, 0, *key)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("denied", [False, True], ids=["notified", "denied"])
def test_keyed_exemption_needs_the_whole_key(arch: str, denied: bool) -> None:
    deny = frozenset(DEFAULT_DENY) | (frozenset(KEYED) if denied else frozenset())
    f = Filter.build(spec(arch, deny=deny, notify=frozenset({"openat"}) | (
        frozenset() if denied else frozenset(KEYED))))
    otherwise = EPERM if denied else USER_NOTIF
    for name in KEYED:
        assert f.run(name, 0, 0, 0, *KEY) == ALLOW
        assert f.run(name) == otherwise
        assert f.run(name, *KEY) == otherwise  # in args 0..2: not the key
        assert f.run(name, 0, 0, 0, *KEY[::-1]) == otherwise
        for bit in range(192):
            assert f.run(name, *_flipped(bit)) == otherwise, f"{name}: bit {bit} flipped"


@pytest.mark.parametrize("arch", ARCHES)
def test_the_key_opens_nothing_else(arch: str) -> None:
    f = Filter.build(spec(arch, notify=frozenset({"openat", "getpid", *KEYED})))
    keyed = (0, 0, 0, *KEY)
    assert f.run("openat", *keyed) == USER_NOTIF
    assert f.run("getpid", *keyed) == USER_NOTIF
    assert f.run("mount", *keyed) == EPERM
    assert f.run("clone3", *keyed) == ENOSYS
    assert f.run("clone", CLONE_NS_FLAGS["CLONE_NEWUSER"], *keyed[1:]) == EPERM
    assert f.run("socket", AF_PACKET, SOCK_RAW, 0, *KEY) == EAFNOSUPPORT


def test_plan_keys_the_filter_of_a_supervised_run() -> None:
    """``Plan.filter_for`` (the running arch) puts the plan's key in the
    program of a supervised run."""
    plan = probe_plan()
    notify = frozenset({"openat"})
    supervised = FilterSpec(AUDIT_ARCH, SYSCALLS, frozenset(), notify, plan.key, False, True)
    assert plan.filter_for(notify) == build_filter(supervised)
    f = Filter.build(supervised)
    assert f.run("openat") == USER_NOTIF
    assert f.run("write", 0, 0, 0, *plan.key) == ALLOW
    assert f.run("openat", 0, 0, 0, *plan.key) == USER_NOTIF


# -- argument checks -----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("notified", [False, True], ids=["allowed", "notified"])
def test_clone_with_a_namespace_flag_is_denied(arch: str, notified: bool) -> None:
    f = Filter.build(spec(arch, notify=frozenset({"clone"} if notified else ())))
    ok = f.allowed("clone")
    for flags in (0, SIGCHLD, CLONE_PTHREAD, 0xFFFFFFFF_00000000 | SIGCHLD):
        assert f.run("clone", flags) == ok, hex(flags)
    for flag_name, flag in CLONE_NS_FLAGS.items():
        for extra in (0, SIGCHLD, CLONE_PTHREAD, 0xFFFFFFFF_00000000):
            assert f.run("clone", flag | extra) == EPERM, f"{flag_name} | {extra:#x}"
    assert f.run("clone", sum(CLONE_NS_FLAGS.values())) == EPERM


@pytest.mark.parametrize("arch", ARCHES)
def test_clone3_is_enosys_whatever_its_arguments(arch: str) -> None:
    rng = random.Random(3)
    for s in (spec(arch), spec(arch, notify=frozenset({"clone", *KEYED})),
              spec(arch, deny=frozenset(DEFAULT_DENY) | {"clone3"})):
        f = Filter.build(s)
        assert f.run("clone3") == ENOSYS
        assert f.run("clone3", 0, 0, 0, *KEY) == ENOSYS
        for _ in range(20):
            assert f.run("clone3", *(rng.getrandbits(64) for _ in range(6))) == ENOSYS


# (family, type, protocol) -> "stream", "udp", "unix" or None (always refused)
SOCKETS: list[tuple[int, int, int, str | None]] = [
    (AF_UNIX, SOCK_STREAM, 0, "unix"),
    (AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, "unix"),
    (AF_UNIX | 0xFFFFFFFF_00000000, SOCK_STREAM, 0, "unix"),
    (AF_INET, SOCK_STREAM, 0, "stream"),
    (AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP, "stream"),
    (AF_INET6, SOCK_STREAM, IPPROTO_TCP, "stream"),
    (AF_INET6 | 1 << 32, SOCK_STREAM, 0, "stream"),
    (AF_INET, SOCK_STREAM, IPPROTO_SCTP, None),
    (AF_INET6, SOCK_STREAM, IPPROTO_MPTCP, None),
    (AF_INET, SOCK_DGRAM, 0, "udp"),
    (AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP, "udp"),
    (AF_INET, SOCK_DGRAM, IPPROTO_ICMP, None),
    (AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6, None),
    (AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE, None),
    (AF_INET, SOCK_RAW, IPPROTO_RAW, None),
    (AF_INET6, SOCK_RAW, IPPROTO_ICMPV6, None),
    (AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP, None),
    (AF_INET | 1 << 32, SOCK_RAW, IPPROTO_ICMP, None),
    (AF_UNSPEC, SOCK_STREAM, 0, None),
    (AF_NETLINK, SOCK_RAW, 0, None),
    (AF_PACKET, SOCK_RAW, 0x0300, None),
    (AF_BLUETOOTH, SOCK_STREAM, 0, None),
    (AF_ALG, SOCK_SEQPACKET, 0, None),
    (AF_VSOCK, SOCK_STREAM, 0, None),
]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize(("udp", "unix"), [(False, False), (True, False), (False, True),
                                           (True, True)])
@pytest.mark.parametrize("notified", [False, True], ids=["allowed", "notified"])
def test_socket_families_and_types(arch: str, udp: bool, unix: bool, notified: bool) -> None:
    f = Filter.build(spec(arch, udp=udp, unix=unix, notify=frozenset(
        {"socket", "socketpair"} if notified else ())))
    for family, kind, proto, needs in SOCKETS:
        if needs == "unix":
            want = f.allowed("socket") if unix else EACCES
        elif needs == "stream" or (needs == "udp" and udp):
            want = f.allowed("socket")
        else:
            want = EAFNOSUPPORT
        assert f.run("socket", family, kind, proto) == want, (family, kind, proto)
        # socketpair: an anonymous unix pair, whatever the policy says of socket()
        pair = f.allowed("socketpair") if family & 0xFFFFFFFF == AF_UNIX else EAFNOSUPPORT
        assert f.run("socketpair", family, kind, proto) == pair, (family, kind, proto)


@pytest.mark.parametrize("arch", ARCHES)
def test_socket_denied_outright(arch: str) -> None:
    f = Filter.build(spec(arch, deny=frozenset(DEFAULT_DENY) | {"socket"}, udp=True, unix=True))
    for family, kind, proto, _ in SOCKETS:
        assert f.run("socket", family, kind, proto) == EPERM
    assert f.run("socketpair", AF_UNIX, SOCK_STREAM, 0) == ALLOW


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("notified", [False, True], ids=["allowed", "notified"])
def test_ioctl_tty_injection_is_denied(arch: str, notified: bool) -> None:
    f = Filter.build(spec(arch, notify=frozenset({"ioctl"} if notified else ())))
    for cmd in (TIOCSTI, TIOCLINUX):
        # The kernel reads cmd as 32 bits: high bits must not hide it.
        for high in (0, 1 << 32, 0xFFFFFFFF_00000000, 0xDEADBEEF_00000000):
            assert f.run("ioctl", 0, cmd | high) == EPERM, hex(cmd | high)
            assert f.run("ioctl", 7, cmd | high, 0x7FFF_0000_0000) == EPERM
    for cmd in (0, TCGETS, TIOCGWINSZ, FIONREAD, TIOCSTI + 1, TIOCSTI << 16, 1 << 32):
        assert f.run("ioctl", 1, cmd) == f.allowed("ioctl"), hex(cmd)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("notified", [False, True], ids=["allowed", "notified"])
def test_personality_may_only_be_read(arch: str, notified: bool) -> None:
    f = Filter.build(spec(arch, notify=frozenset({"personality"} if notified else ())))
    for persona in (PER_QUERY, PER_LINUX, 0xFFFFFFFF_FFFFFFFF, 1 << 32):
        assert f.run("personality", persona) == f.allowed("personality"), hex(persona)
    for persona in (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, PER_LINUX32, PER_QUERY - 1,
                    ADDR_NO_RANDOMIZE | 1 << 32):
        assert f.run("personality", persona) == EPERM, hex(persona)


def test_default_deny_covers_the_issue_list() -> None:
    required = {"mount", "umount2", "pivot_root", "unshare", "setns", "ptrace",
                "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open",
                "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
                "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
                "init_module", "finit_module", "delete_module", "open_by_handle_at",
                "setsid", "setpgid"}
    assert required <= set(DEFAULT_DENY)
    for arch in ARCHES:
        f = Filter.build(spec(arch))
        for name in required:
            assert f.run(name) == EPERM, (arch, name)
