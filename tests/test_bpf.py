"""The seccomp programs of ``_bpf.py``, run by the classic-BPF interpreter
of ``bpf_machine.py``.

Each program is checked the way the kernel's loader checks it, then run on
synthetic ``struct seccomp_data`` for both architectures' tables and several
policies.  The expected actions are written down here from the kernel's and
the policy's point of view, independently of how the assembler gets there.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from bpf_machine import (
    ALLOW,
    ARCHES,
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_ARM,
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    EACCES,
    EAFNOSUPPORT,
    ENOSYS,
    EPERM,
    ERRNO,
    JA,
    JEQ_K,
    JGE_K,
    JSET_K,
    KILL_PROCESS,
    LD_W_ABS,
    RET_K,
    USER_NOTIF,
    X32_SYSCALL_BIT,
    Filter,
    Insn,
    _candidates,
    decode,
    encode,
    execute,
    path_length,
    reads_arguments,
    seccomp_data,
)

from asyncsandlock._kernel._bpf import (
    CHILD_ARGS,
    DEFAULT_DENY,
    GUARDED,
    PRE_EXEC_CALLS,
    FilterSpec,
    _action,
    _Graph,
    _search,
    build_filter,
)
from asyncsandlock._kernel._sys import AUDIT_ARCH, SYSCALLS
from asyncsandlock._kernel._syscall_policy import DECISIONS, Rule
from asyncsandlock._plan import probe_plan

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
KEYED = ("write", "sendmsg", "exit_group", "execve", "prlimit64")
SWEEP = range(600)  # beyond the highest number of either table (~470)


def spec(arch: str, *, deny: frozenset[str] = frozenset(DEFAULT_DENY),
         notify: frozenset[str] = frozenset(), udp: bool = False,
         unix: bool = False, guarded: frozenset[str] = frozenset(), ipc: bool = False,
         interactive: bool = False, fastopen: bool = False,
         self_trapped: frozenset[str] = frozenset()) -> FilterSpec:
    """A spec as ``_plan`` makes one: the key only when something is notified."""
    table, audit = ARCHES[arch]
    return FilterSpec(audit, table, deny, notify, KEY if notify else None, udp, unix,
                      guarded, ipc, interactive, fastopen, self_trapped=self_trapped)


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
    yield "default, udp, unix, ipc, interactive, fast open", spec(
        arch, udp=True, unix=True, ipc=True, interactive=True, fastopen=True), False
    yield "max_processes", spec(arch, notify=frozenset({"fork", "vfork", "clone"})), False
    yield "every guard", spec(arch, notify=GUARDED, guarded=GUARDED), False
    yield "guards without the supervisor", spec(arch, guarded=GUARDED), False
    yield "handlers", spec(arch, notify=frozenset(
        {"openat", "getpid", "connect", "socket", "socketpair", "ioctl", "personality",
         "clone", "chmod", "shmget", *KEYED}), udp=True), False
    yield "extra deny of the argument-checked calls", spec(arch, deny=default | {
        "clone", "clone3", "socket", "socketpair", "ioctl", "personality", "openat",
        "prlimit64", "chmod"}), False
    yield "every other number denied", spec(arch, deny=default | _every_other(table, 0)), False
    yield "thirds denied / notified / allowed", spec(
        arch, deny=default | _by_thirds(table, 0), notify=_by_thirds(table, 1) - default,
        unix=True, guarded=GUARDED), True


POLICIES = [pytest.param(arch, name, s, long, id=f"{arch}-{name}")
            for arch in ARCHES for name, s, long in policies(arch)]

#: Guarded calls whose zero arguments name the caller itself (pid/who 0).
ON_SELF_WHEN_ZERO = {"prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
                     "sched_setattr", "setpriority"}


def sweep_action(s: FilterSpec, name: str | None) -> int:
    """What a call of ``name`` with every argument 0 must get."""
    if name is None or name == "clone3":
        # Unknown numbers: not reviewed, so not run.  clone3: libc falls
        # back to clone, whose flags BPF can read.
        return ENOSYS
    rule = DECISIONS[name].rule
    if name in s.deny or rule in (Rule.EPERM, Rule.ENOSYS):
        return ENOSYS if rule is Rule.ENOSYS else EPERM
    allowed = USER_NOTIF if name in s.notify else ALLOW
    special = {
        "socket": EAFNOSUPPORT, "socketpair": EAFNOSUPPORT,  # family 0, AF_UNSPEC
        "ioprio_set": EPERM,  # which 0 is no IOPRIO_WHO_*
        **{n: ALLOW if n in s.guarded else allowed for n in ON_SELF_WHEN_ZERO},
        # signal 0, act NULL: a query, trapped only for a handler that wants all
        "rt_sigaction": allowed if "rt_sigaction" in s.self_trapped else ALLOW,
    }
    if name in special:
        return special[name]
    if rule is Rule.IPC:
        return allowed if s.allow_sysv_ipc else EPERM
    if rule is Rule.GUARDED:
        return USER_NOTIF if name in s.guarded and name in s.notify else EPERM
    return allowed


@pytest.mark.parametrize(("arch", "name", "s", "long"), POLICIES)
def test_every_number_gets_its_action(arch: str, name: str, s: FilterSpec, long: bool) -> None:
    f = Filter.build(s)
    names = {nr: n for n, nr in s.table.items()}
    wrong = [(nr, names.get(nr), hex(got), hex(sweep_action(s, names.get(nr))))
             for nr in SWEEP if (got := f.run(nr)) != sweep_action(s, names.get(nr))]
    assert wrong == []
    # Numbers past the table (new kernels' syscalls) have not been reviewed.
    for nr in (1000, 0xFFFF, X32_SYSCALL_BIT - 1):
        assert f.run(nr) == ENOSYS
    # The policy cases meant to exercise the long jump of the search do
    # (a conditional jump to a ja placed right after it).
    hops = [pc for pc, (code, jt, jf, _) in enumerate(f.insns[:-1])
            if code in (JEQ_K, JGE_K, JSET_K) and JA in (f.insns[pc + 1 + jt][0],
                                                          f.insns[pc + 1 + jf][0])]
    assert bool(hops) == long


def _patterns(s: FilterSpec, code: list[Insn] | None) -> Iterator[tuple[int, ...]]:
    """Argument values that take every branch of a syscall's code: each
    constant it compares with (and its neighbours, complement and bits) in
    each argument's low and high word, pairs of them in args 0..2, and the
    key with each of its words wrong.  Code-less actions read no argument:
    a few patterns suffice."""
    yield ()
    yield (1, 2, 3, 4, 5, 6)
    if s.key is not None:
        keyed = (0, 0, 0, *s.key)
        yield keyed
        for word in range(6):
            wrong = list(keyed)
            wrong[3 + word // 2] ^= 1 << (32 * (word % 2))
            yield tuple(wrong)
    if code is None:
        return
    cands = _candidates(code)
    for i in range(6):
        for v in cands:
            yield (0,) * i + (v,)
            yield (0,) * i + (v << 32,)
    for v in cands[::5]:
        for w in cands[::5]:
            yield (v, w, v)
            yield (v, w, w)


@pytest.mark.parametrize(("arch", "name", "s", "long"), POLICIES)
def test_the_laid_out_program_decides_as_each_calls_own_code(
        arch: str, name: str, s: FilterSpec, long: bool) -> None:
    """The program is laid out as one graph (shared returns, one key
    check, numbers lifted out of runs), so its decisions are compared, on
    every number and on argument patterns that take every branch, with the
    plain reading of the policy: each syscall's own code (``_action``, its
    keyed exemption included) run alone, ENOSYS for numbers no table names,
    a kill for another arch or an x32 number.  This is what the program of
    4c609ed (a search whose leaves jumped to each syscall's block) did."""
    f = Filter.build(s)
    names = {nr: n for n, nr in s.table.items()}
    wrong = []
    for nr in [*SWEEP, 1000, 0xFFFF, X32_SYSCALL_BIT - 1, X32_SYSCALL_BIT, 0xFFFFFFFF]:
        name_ = names.get(nr)
        action = ENOSYS if name_ is None else _action(s, name_)
        code = decode(encode(action)) if isinstance(action, tuple) else None
        for args in _patterns(s, code) if name_ is not None else [()]:
            if arch == "x86_64" and nr & X32_SYSCALL_BIT:
                want = KILL_PROCESS
            elif code is None:
                want = int(action)  # type: ignore[arg-type]
            else:
                want = execute(code, seccomp_data(nr, s.arch, args))
            got = f.run(nr, *args)
            if got != want:
                wrong.append((nr, name_, args, hex(got), hex(want)))
        assert f.run(nr, arch=s.arch ^ 1) == KILL_PROCESS
    assert wrong == []


def test_the_typical_policy_stays_small() -> None:
    """Attaching costs ~0.2-0.3 us per instruction, paid by every spawn: the
    guards' policy was 381 instructions on x86_64 before the layout, 206
    with a 192-bit key check, 192 now."""
    for arch, most in (("x86_64", 195), ("aarch64", 172)):
        assert len(Filter.build(spec(arch, notify=GUARDED, guarded=GUARDED)).insns) <= most


@pytest.mark.parametrize("spread", [1, 2, 7])
def test_a_long_search_hops_and_finds_every_run(spread: int) -> None:
    """More runs than any policy makes: the tree's jumps no longer fit in
    8 bits and hop with ja; every number still gets its run's action."""
    g = _Graph()
    runs = [(0, ENOSYS), *((1 + spread * i, ERRNO(1 + i % 97)) for i in range(900))]
    # lifted numbers too: alone between two runs of one action
    runs += [(1 + spread * 900, ERRNO(200)), (2 + spread * 900, ERRNO(201)),
             (3 + spread * 900, ERRNO(200))]
    nodes = [(first, g.node(RET_K, action)) for first, action in runs]
    f = decode(encode(tuple(g.layout(g.node(LD_W_ABS, 0, _search(g, nodes))))))
    hops = [pc for pc, (code, jt, jf, _) in enumerate(f[:-1])
            if code == JGE_K and JA in (f[pc + 1 + jt][0], f[pc + 1 + jf][0])]
    assert hops
    starts = [first for first, _ in runs]
    for nr in range(0, starts[-1] + 5):
        want = runs[bisect.bisect_right(starts, nr) - 1][1]
        assert execute(f, seccomp_data(nr, AUDIT_ARCH_X86_64)) == want, nr


@pytest.mark.parametrize("seed", range(6))
def test_the_weighted_search_finds_every_run(seed: int) -> None:
    """The tree's shape follows the allow cache's walk (``walked``) and
    the pairs of returns: whatever shape it takes, every number gets its
    run's action, lifted numbers and blocks included."""
    rng = random.Random(seed)
    g = _Graph()
    block = g.node(LD_W_ABS, 16, g.jump(JEQ_K, 1, g.node(RET_K, EPERM), g.node(RET_K, ALLOW)))
    pool = [g.node(RET_K, a) for a in (ALLOW, ENOSYS, EPERM, USER_NOTIF)] + [block]
    runs, nr = [(0, pool[1])], 0
    for _ in range(rng.randrange(2, 160)):
        nr += rng.choice((1, 1, 2, 3, 40))
        runs.append((nr, rng.choice(pool)))
    walked = rng.choice((0, nr // 2, nr + 1))
    f = decode(encode(tuple(g.layout(g.node(LD_W_ABS, 0, _search(g, runs, walked))))))
    starts = [first for first, _ in runs]
    for number in range(0, nr + 5):
        want = g.nodes[runs[bisect.bisect_right(starts, number) - 1][1]]
        data = seccomp_data(number, AUDIT_ARCH_X86_64)
        if want[0] == RET_K:
            assert execute(f, data) == want[1], number
        else:  # the block: its own answer for arg 0 = 0 and 1
            assert execute(f, data) == ALLOW, number
            assert execute(f, seccomp_data(number, AUDIT_ARCH_X86_64, (1,))) == EPERM, number


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
        assert got == (KILL_PROCESS if arch == "x86_64" else ENOSYS), hex(nr)
        # ...before the keyed exemption is looked at.
        assert f.run(X32_SYSCALL_BIT | nr, 0, 0, 0, *KEY) == got


# -- the keyed exemption -------------------------------------------------------


def _flipped(bit: int) -> tuple[int, ...]:
    """The key in args 3..5 with one of its 192 bits flipped."""
    key = list(KEY)
    key[bit // 64] ^= 1 << (bit % 64)
    return (0, 0, 0, *key)


#: The key bits the filter compares: all 64 of key[1], in argument 4
#: (``_bpf._key_words`` says why 64 are enough).
CHECKED_BITS = range(64, 128)


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
        if name != "prlimit64":  # its pid would not be 0
            assert f.run(name, *KEY) == otherwise  # in args 0..2: not the key
        # key[1] elsewhere than in argument 4: not the key
        assert f.run(name, 0, 0, 0, KEY[1], 0, KEY[1]) == otherwise
        for bit in CHECKED_BITS:
            assert f.run(name, *_flipped(bit)) == otherwise, f"{name}: bit {bit} flipped"
        # the words not compared may hold anything
        assert f.run(name, 0, 0, 0, 0, KEY[1], 0) == ALLOW


def test_the_key_check_is_two_words_and_the_child_passes_them() -> None:
    """The filter compares the two words of argument 4 alone, with key[1];
    the child (``KEYED`` in csrc/spawn.c) passes key[0..2] in arguments
    3..5, so key[1] lands in argument 4."""
    f = Filter.build(spec("x86_64", notify=frozenset(KEYED)))
    words = {w for key in KEY for w in (key & 0xFFFFFFFF, key >> 32)}
    compared = [(f.insns[pc - 1], k) for pc, (code, _, _, k) in enumerate(f.insns)
                if code == JEQ_K and k in words]
    # argument 4's low word is at 48, its high word at 52
    assert sorted(compared) == [((LD_W_ABS, 0, 0, 48), KEY[1] & 0xFFFFFFFF),
                                ((LD_W_ABS, 0, 0, 52), KEY[1] >> 32)]
    src = (Path(__file__).parents[1] / "csrc" / "spawn.c").read_text()
    assert re.search(r"\(long\)\(c\), \(long\)\(req\)->key\[0\],\s*\\\s*"
                     r"\(long\)\(req\)->key\[1\], \(long\)\(req\)->key\[2\]\)", src)


def _keyed_calls_in_spawn_c() -> list[tuple[str, list[str]]]:
    """(syscall, [arg0, arg1, arg2]) of every ``KEYED(req, SYS_x, a, b, c)``
    in csrc/spawn.c, split at the commas outside parentheses."""
    src = (Path(__file__).parents[1] / "csrc" / "spawn.c").read_text()
    calls = []
    for m in re.finditer(r"\bKEYED\(req, SYS_(\w+), ", src):
        args, depth, start, pc = [], 0, m.end(), m.end()
        while depth >= 0:
            ch = src[pc]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            if (ch == "," and depth == 0) or depth < 0:
                args.append(src[start:pc].strip())
                start = pc + 1
            pc += 1
        calls.append((m.group(1), args))
    return calls


def test_child_args_are_what_spawn_c_passes() -> None:
    """``CHILD_ARGS`` (the arguments that decide whether a child call needs
    the key) are literally those of every keyed call in csrc/spawn.c."""
    calls = _keyed_calls_in_spawn_c()
    assert {name for name, _ in calls} == set(PRE_EXEC_CALLS)
    for name, args in calls:
        assert len(args) == 3, (name, args)
        for index, value in CHILD_ARGS.get(name, {}).items():
            assert args[index] == str(value), (name, args)


def test_prlimit64_on_itself_needs_no_key_where_its_code_allows_it() -> None:
    """Under the guards alone the child's prlimit64 (pid 0) is allowed by
    its own code: no key check for it, and no second dispatch of the
    number after a failed one; a handler that traps it on the process
    itself brings the key back."""
    plain = Filter.build(spec("x86_64", notify=GUARDED, guarded=GUARDED))
    assert plain.run("prlimit64", 0, 7, 0x1000) == ALLOW
    assert plain.run("prlimit64", 1, 7, 0x1000) == USER_NOTIF
    assert not any(code == LD_W_ABS and k == 0 for code, _, _, k in plain.insns[3:])
    # nor for the listener's sendmsg (no MSG_FASTOPEN): no key check at all
    assert plain.run("sendmsg", 5, 0x1000, 0) == ALLOW
    assert not any(code == LD_W_ABS and k in (48, 52) for code, _, _, k in plain.insns)
    trapped = Filter.build(spec("x86_64", notify=GUARDED, guarded=GUARDED,
                                self_trapped=frozenset({"prlimit64"})))
    assert trapped.run("prlimit64", 0, 7, 0x1000) == USER_NOTIF
    assert trapped.run("prlimit64", 0, 7, 0x1000, *KEY) == ALLOW


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
    supervised = FilterSpec(AUDIT_ARCH, SYSCALLS, frozenset(), notify, plan.key, False, True,
                            baseline=False)
    assert plan.filter_for(notify) == build_filter(supervised)
    f = Filter.build(supervised)
    assert f.run("openat") == USER_NOTIF
    assert f.run("write", 0, 0, 0, *plan.key) == ALLOW
    assert f.run("openat", 0, 0, 0, *plan.key) == USER_NOTIF


# -- argument checks -----------------------------------------------------------


# What glibc passes for fork() and posix_spawn's vfork, and the flags clone
# may never carry.
CLONE_FORK = 0x01000000 | 0x00200000 | SIGCHLD  # CHILD_SETTID | CHILD_CLEARTID
CLONE_VFORK_SPAWN = 0x00000100 | 0x00004000 | SIGCHLD  # VM | VFORK
CLONE_PIDFD, CLONE_IO = 0x00001000, 0x80000000
CLONE_REFUSED = {"CLONE_PTRACE": 0x00002000, "CLONE_PARENT": 0x00008000,
                 "CLONE_UNTRACED": 0x00800000, "exit signal 0x80": 0x80, **CLONE_NS_FLAGS}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("notified", [False, True], ids=["allowed", "notified"])
def test_clone_flags_outside_the_list_are_denied(arch: str, notified: bool) -> None:
    """Regression test for clone(CLONE_PARENT): its children landed on the
    caller, outside the sandbox's bookkeeping (issue 8, item 7)."""
    trapped = frozenset({"clone"} if notified else ())
    f = Filter.build(spec(arch, notify=trapped, self_trapped=trapped))
    ok = f.allowed("clone")
    usual = (0, SIGCHLD, CLONE_PTHREAD, CLONE_FORK, CLONE_VFORK_SPAWN,
             CLONE_VFORK_SPAWN | CLONE_PIDFD, CLONE_PTHREAD | CLONE_IO, 64)
    for flags in usual:
        assert f.run("clone", flags) == ok, hex(flags)
        # clone_flags is an unsigned long, but the kernel uses its low word only
        assert f.run("clone", flags | 0xFFFFFFFF_00000000) == ok, hex(flags)
    for flag_name, flag in CLONE_REFUSED.items():
        for extra in usual:
            assert f.run("clone", flag | extra) == EPERM, f"{flag_name} | {extra:#x}"
    assert f.run("clone", sum(CLONE_NS_FLAGS.values())) == EPERM
    assert f.outcomes("clone") == {ok, EPERM}


@pytest.mark.parametrize("arch", ARCHES)
def test_threads_go_untrapped_unless_a_handler_wants_them(arch: str) -> None:
    """clone trapped for ``max_processes`` alone (``self_trapped`` without
    clone): a thread passes the filter, a process is trapped, and the
    refused flags stay refused; the control traps threads too."""
    untrapped = Filter.build(spec(arch, notify=frozenset({"clone"})))
    control = Filter.build(spec(arch, notify=frozenset({"clone"}),
                                self_trapped=frozenset({"clone"})))
    notif = control.allowed("clone")
    for flags in (CLONE_PTHREAD, CLONE_PTHREAD | CLONE_IO, CLONE_PTHREAD | 0xFFFFFFFF_00000000):
        assert untrapped.run("clone", flags) == ALLOW, hex(flags)
        assert control.run("clone", flags) == notif, hex(flags)
    for flags in (0, SIGCHLD, CLONE_FORK, CLONE_VFORK_SPAWN, CLONE_VFORK_SPAWN | CLONE_PIDFD,
                  SIGCHLD | 0x00010000_00000000):  # CLONE_THREAD in the high word: ignored
        assert untrapped.run("clone", flags) == notif, hex(flags)
    for flag_name, flag in CLONE_REFUSED.items():
        assert untrapped.run("clone", flag | CLONE_PTHREAD) == EPERM, flag_name
    assert untrapped.outcomes("clone") == {ALLOW, notif, EPERM}


@pytest.mark.parametrize("arch", ARCHES)
def test_only_new_sigchld_actions_are_trapped_for_max_processes(arch: str) -> None:
    """rt_sigaction trapped for ``max_processes`` alone (``self_trapped``
    without it): a new SIGCHLD action reaches the supervisor, whatever the
    high word of the signal or which word of the pointer is set; other
    signals and queries (``act`` NULL) pass.  Controls: a handler that wants
    every call sees every call; untrapped, all pass."""
    sigchld, act = 17, 0x7FFD_1234_5678
    narrow = Filter.build(spec(arch, notify=frozenset({"rt_sigaction"})))
    every = Filter.build(spec(arch, notify=frozenset({"rt_sigaction"}),
                              self_trapped=frozenset({"rt_sigaction"})))
    untrapped = Filter.build(spec(arch))
    notif = every.allowed("rt_sigaction")
    for signum, pointer in ((sigchld, act), (sigchld, 0x7FFD_0000_0000), (sigchld, 0x1000),
                            (sigchld | 0xFFFFFFFF_00000000, act)):
        assert narrow.run("rt_sigaction", signum, pointer) == notif, (hex(signum), hex(pointer))
    for signum, pointer in ((sigchld, 0), (2, act), (14, act), (sigchld + 1, act), (0, act)):
        assert narrow.run("rt_sigaction", signum, pointer) == ALLOW, (hex(signum), hex(pointer))
        assert every.run("rt_sigaction", signum, pointer) == notif
        assert untrapped.run("rt_sigaction", signum, pointer) == ALLOW
    assert untrapped.run("rt_sigaction", sigchld, act) == ALLOW
    assert narrow.outcomes("rt_sigaction") == {ALLOW, notif}


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


def test_default_deny_covers_the_other_process_calls() -> None:
    """Calls that act on another process's memory or fds: no argument makes
    them safe."""
    for arch in ARCHES:
        f = Filter.build(spec(arch, notify=GUARDED, guarded=GUARDED))
        for name in ("process_madvise", "process_mrelease", "kcmp", "pidfd_getfd",
                     "process_vm_readv", "process_vm_writev", "ptrace", "fanotify_init",
                     "fanotify_mark", "file_setattr", "lsm_set_self_attr", "modify_ldt"):
            if name in f.spec.table:
                assert f.outcomes(name) == {EPERM}, (arch, name)
        # Its mode is in a struct the filter cannot read: callers fall back to openat.
        assert f.outcomes("openat2") == {ENOSYS}


# -- TCP fast open ---------------------------------------------------------------

MSG_FASTOPEN, MSG_DONTWAIT, MSG_NOSIGNAL = 0x20000000, 0x40, 0x4000
SOL_SOCKET, SOL_TCP = 1, 6
TCP_FASTOPEN, TCP_FASTOPEN_CONNECT, TCP_NODELAY = 23, 30, 1
#: name -> the index of its flags argument
SEND_FLAGS = {"sendto": 3, "sendmsg": 2, "sendmmsg": 3}


def _with(index: int, value: int, fill: int = 0) -> tuple[int, ...]:
    args = [fill] * 6
    args[index] = value
    return tuple(args)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("fastopen", [False, True], ids=["ports", "every-port"])
@pytest.mark.parametrize("notified", [False, True], ids=["allowed", "notified"])
def test_fast_open_is_denied_unless_every_port_is_open(arch: str, fastopen: bool,
                                                       notified: bool) -> None:
    """Regression test for TCP fast open: sendto/sendmsg/sendmmsg with
    MSG_FASTOPEN, and TCP_FASTOPEN_CONNECT, connect without Landlock's
    connect check (issue 8, item 1)."""
    names = frozenset({*SEND_FLAGS, "setsockopt"})
    f = Filter.build(spec(arch, fastopen=fastopen, notify=names if notified else frozenset()))
    for name, index in SEND_FLAGS.items():
        ok = f.allowed(name)
        for flags in (0, MSG_DONTWAIT, MSG_NOSIGNAL, ~MSG_FASTOPEN & 0xFFFFFFFF, 1 << 61):
            assert f.run(name, *_with(index, flags, 7)) == ok, (name, hex(flags))
        for flags in (MSG_FASTOPEN, MSG_FASTOPEN | MSG_NOSIGNAL, 0xFFFFFFFF,
                      MSG_FASTOPEN | 0xFFFFFFFF_00000000):
            assert f.run(name, *_with(index, flags, 7)) == (ok if fastopen else EPERM), name
    ok = f.allowed("setsockopt")
    for level, opt in ((SOL_TCP, TCP_FASTOPEN), (SOL_TCP, TCP_NODELAY),
                       (SOL_SOCKET, TCP_FASTOPEN_CONNECT), (SOL_TCP, TCP_FASTOPEN_CONNECT << 8)):
        assert f.run("setsockopt", 3, level, opt) == ok, (level, opt)
    for level in (SOL_TCP, SOL_TCP | 1 << 32):
        for opt in (TCP_FASTOPEN_CONNECT, TCP_FASTOPEN_CONNECT | 1 << 40):
            got = f.run("setsockopt", 3, level, opt)
            assert got == (ok if fastopen else EPERM), (hex(level), hex(opt))


@pytest.mark.parametrize("arch", ARCHES)
def test_the_keyed_sendmsg_passes_the_fast_open_check(arch: str) -> None:
    f = Filter.build(spec(arch, notify=frozenset({"openat"})))
    assert f.run("sendmsg", 5, 0x1000, 0, *KEY) == ALLOW
    assert f.run("sendmsg", 5, 0x1000, 0) == ALLOW
    assert f.run("sendmsg", 5, 0x1000, MSG_FASTOPEN) == EPERM


# -- setuid and setgid bits --------------------------------------------------------

S_ISUID, S_ISGID, S_ISVTX = 0o4000, 0o2000, 0o1000
O_WRONLY, O_CREAT, O_EXCL, O_TRUNC = 0o1, 0o100, 0o200, 0o1000
O_TMPFILE_BIT, O_DIRECTORY_X86 = 0o20000000, 0o200000
#: name -> index of the mode, and of the flags that make open read it (or None)
MODE_ARGS = {"open": (2, 1), "openat": (3, 2), "creat": (1, None), "mknod": (1, None),
             "mknodat": (2, None), "chmod": (1, None), "fchmod": (1, None),
             "fchmodat": (2, None), "fchmodat2": (2, None)}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("guards", [False, True], ids=["no-guard", "guards"])
def test_setuid_and_setgid_modes_are_denied(arch: str, guards: bool) -> None:
    """Regression test for chmod 4777 on a binary: a setuid program for every
    local user (issue 8, item 3); creating one is refused too."""
    f = Filter.build(spec(arch, notify=GUARDED if guards else frozenset(),
                          guarded=GUARDED if guards else frozenset()))
    for name, (mode_at, flags_at) in MODE_ARGS.items():
        if name not in f.spec.table:
            continue
        ok = (USER_NOTIF if guards else EPERM) if name in GUARDED else ALLOW
        creating = [O_CREAT | O_WRONLY | O_TRUNC, O_CREAT | O_EXCL,
                    O_TMPFILE_BIT | O_DIRECTORY_X86 | O_WRONLY] if flags_at else [0]
        for flags in creating:
            for mode in (0o644, 0o755, 0o777 | S_ISVTX, 0o1777, 0o777 | 0xFFFF_0000_0000):
                args = [9, 9, 9, 9, 0, 0]
                args[mode_at] = mode
                if flags_at is not None:
                    args[flags_at] = flags
                assert f.run(name, *args) == ok, (name, oct(mode), oct(flags))
            for mode in (S_ISUID | 0o755, S_ISGID | 0o755, S_ISUID | S_ISGID | 0o777, 0o6000,
                         S_ISUID | 0xFFFF_0000_0000):
                args = [9, 9, 9, 9, 0, 0]
                args[mode_at] = mode
                if flags_at is not None:
                    args[flags_at] = flags
                assert f.run(name, *args) == EPERM, (name, oct(mode), oct(flags))
        if flags_at is not None:
            # Without O_CREAT or O_TMPFILE the mode is not read: nothing to refuse.
            for flags in (0, O_WRONLY | O_TRUNC, O_DIRECTORY_X86):
                args = [9, 9, 9, 9, 0, 0]
                args[mode_at], args[flags_at] = S_ISUID | 0o755, flags
                assert f.run(name, *args) == ok, (name, oct(flags))


# -- guarded calls ----------------------------------------------------------------

#: name -> (args on the caller itself, args on another process)
OTHER_PROCESS = {
    "prlimit64": ((0, 7, 0x1000), (4242, 7, 0x1000)),
    "sched_setaffinity": ((0, 128, 0x1000), (4242, 128, 0x1000)),
    "sched_setscheduler": ((0, 0, 0x1000), (4242, 0, 0x1000)),
    "sched_setparam": ((0, 0x1000), (4242, 0x1000)),
    "sched_setattr": ((0, 0x1000, 0), (4242, 0x1000, 0)),
    "setpriority": ((0, 0, 10), (0, 4242, 10)),
    "ioprio_set": ((1, 0, 0x4000), (1, 4242, 0x4000)),
}


@pytest.mark.parametrize("arch", ARCHES)
def test_guarded_calls_need_a_guard_and_the_supervisor(arch: str) -> None:
    """A guarded call goes to the supervisor only when a built-in guard traps
    it; a user handler alone gets EPERM, and so does a run whose supervisor
    was refused (empty notify)."""
    everything = spec(arch, notify=GUARDED, guarded=GUARDED)
    handler_only = spec(arch, notify=GUARDED)
    degraded = spec(arch, guarded=GUARDED)
    for name in sorted(GUARDED):
        if name not in everything.table:
            continue
        args = OTHER_PROCESS[name][1] if name in OTHER_PROCESS else (3, 0o644, 0, 0)
        assert Filter.build(everything).run(name, *args) == USER_NOTIF, name
        assert Filter.build(handler_only).run(name, *args) == EPERM, name
        assert Filter.build(degraded).run(name, *args) == EPERM, name


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("guards", [False, True], ids=["no-guard", "guards"])
def test_other_processes_are_guarded_and_self_is_allowed(arch: str, guards: bool) -> None:
    """Regression test for prlimit64/setpriority/sched_set*/ioprio_set on
    another process of the same uid (issue 8, item 4)."""
    f = Filter.build(spec(arch, notify=GUARDED if guards else frozenset(),
                          guarded=GUARDED if guards else frozenset()))
    for name, (own, other) in OTHER_PROCESS.items():
        assert f.run(name, *own) == ALLOW, name
        assert f.run(name, *other) == (USER_NOTIF if guards else EPERM), name
    # pid_t is an int: high bits do not make pid 0 another process, nor hide one.
    assert f.run("prlimit64", 1 << 32, 7) == ALLOW
    assert f.run("prlimit64", 4242 | 1 << 32, 7) == (USER_NOTIF if guards else EPERM)
    # setpriority: PRIO_PGRP 0 is the sandbox's own group; PRIO_USER never.
    assert f.run("setpriority", 1, 0, 5) == ALLOW
    for who in (0, 1000):
        assert f.run("setpriority", 2, who, 5) == EPERM
        assert f.run("ioprio_set", 3, who, 0x4000) == EPERM  # IOPRIO_WHO_USER
    assert f.run("ioprio_set", 2, 0, 0x4000) == ALLOW
    assert f.run("ioprio_set", 2, 77, 0x4000) == (USER_NOTIF if guards else EPERM)


@pytest.mark.parametrize("arch", ARCHES)
def test_self_only_calls(arch: str) -> None:
    f = Filter.build(spec(arch))
    for name in ("migrate_pages", "move_pages", "get_robust_list"):
        assert f.run(name, 0, 1, 2) == ALLOW, name
        assert f.run(name, 1 << 32, 1, 2) == ALLOW, name
        assert f.run(name, 4242, 1, 2) == EPERM, name


# -- SysV IPC, POSIX message queues ---------------------------------------------

IPC = ("shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
       "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
       "mq_timedreceive", "mq_notify", "mq_getsetattr")


@pytest.mark.parametrize("arch", ARCHES)
def test_ipc_needs_the_policy_to_allow_it(arch: str) -> None:
    """Regression test for outside shared memory and message queues read,
    taken or left behind (issue 8, item 5)."""
    closed, opened = Filter.build(spec(arch)), Filter.build(spec(arch, ipc=True))
    trapped = Filter.build(spec(arch, ipc=True, notify=frozenset({"shmget"})))
    for name in IPC:
        assert closed.outcomes(name) == {EPERM}, name
        assert opened.outcomes(name) == {ALLOW}, name
    assert trapped.run("shmget", 0, 4096, 0o1000) == USER_NOTIF


# -- the terminal -------------------------------------------------------------

TIOCSPGRP, TIOCSCTTY, TIOCSWINSZ, TIOCCONS, TIOCNOTTY = 0x5410, 0x540E, 0x5414, 0x541D, 0x5422
FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR, FS_IOC_ENABLE_VERITY = 0x40086602, 0x401C5820, 0x40806685
FS_IOC_GETFLAGS, TIOCGPGRP, TIOCSETD = 0x80086601, 0x540F, 0x5423


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("interactive", [False, True], ids=["batch", "interactive"])
def test_terminal_control_needs_interactive(arch: str, interactive: bool) -> None:
    """Regression test for tcsetpgrp()/TIOCSWINSZ on the caller's terminal
    (issue 8, item 6)."""
    f = Filter.build(spec(arch, interactive=interactive))
    for cmd in (TIOCSPGRP, TIOCSCTTY, TIOCSWINSZ, TIOCCONS, TIOCNOTTY):
        for high in (0, 1 << 32, 0xFFFFFFFF_00000000):
            assert f.run("ioctl", 0, cmd | high, 0x1000) == (ALLOW if interactive else EPERM)
    for cmd in (TIOCSTI, TIOCLINUX, TIOCSETD, FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR,
                FS_IOC_ENABLE_VERITY):
        assert f.run("ioctl", 0, cmd | 1 << 32, 0x1000) == EPERM, hex(cmd)
    for cmd in (TCGETS, TIOCGWINSZ, TIOCGPGRP, FIONREAD, FS_IOC_GETFLAGS):
        assert f.run("ioctl", 0, cmd, 0x1000) == ALLOW, hex(cmd)


# -- the decision table ---------------------------------------------------------


def test_every_syscall_has_a_decision_and_a_check_where_needed() -> None:
    from asyncsandlock._kernel._bpf import CHECKS

    for arch in ARCHES:
        assert set(ARCHES[arch][0]) <= set(DECISIONS), arch
    checked = {n for n, d in DECISIONS.items() if d.rule is Rule.CHECKED}
    assert checked <= set(CHECKS)
    assert set(CHECKS) <= checked | GUARDED
    assert PRE_EXEC_CALLS == KEYED


def test_guarded_is_the_interface_list() -> None:
    """INTERFACE.md (filter <-> guards): the names the built-in guards trap."""
    assert {
        "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
        "utime", "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr",
        "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
        "inotify_add_watch", "listen", "prlimit64", "setpriority", "sched_setaffinity",
        "sched_setscheduler", "sched_setparam", "sched_setattr", "ioprio_set"} == GUARDED


HOT = ("read", "write", "close", "fstat", "newfstatat", "statx", "lseek", "mmap", "munmap",
       "mprotect", "brk", "futex", "pread64", "readv", "writev", "getdents64", "rt_sigaction",
       "rt_sigprocmask", "epoll_wait", "epoll_pwait", "ppoll", "recvfrom", "getpid",
       "clock_gettime", "exit_group", "execve", "dup3", "pipe2", "fcntl")


@pytest.mark.parametrize("arch", ARCHES)
def test_hot_calls_never_read_their_arguments(arch: str) -> None:
    """So the kernel's allow cache holds them: no filter run at all."""
    f = Filter.build(spec(arch, notify=GUARDED, guarded=GUARDED))
    for name in HOT:
        if name in f.spec.table:
            assert reads_arguments(f.insns, f.nr(name), f.spec.arch) is False, name
            assert f.run(name) == ALLOW
    # and openat, which is checked, reads two words at most
    assert path_length(f.insns, f.nr("openat"), f.spec.arch) <= 16
