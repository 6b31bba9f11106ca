"""A classic-BPF machine for the seccomp programs of ``_bpf.py``, shared by
``test_bpf.py`` and ``test_syscall_doc.py``.

No kernel is involved: a program is checked the way the kernel's loader
checks it (``bpf_check_classic`` + ``seccomp_check_filter``), then run on
synthetic ``struct seccomp_data``, or explored: :func:`outcomes` follows
every path an argument can take and returns every action a syscall can get.
The constants are written out from the uapi headers, independently of
``_bpf.py``.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from asyncsandlock._kernel._bpf import FilterSpec, build_filter
from asyncsandlock._kernel._syscalls import AARCH64, X86_64

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

LD_W_ABS, ALU_AND_K, JA = 0x20, 0x54, 0x05
JEQ_K, JGE_K, JSET_K, RET_K = 0x15, 0x35, 0x45, 0x06
SECCOMP_DATA_SIZE = 64  # nr, arch, instruction_pointer, args[6]
BPF_MAXINSNS = 4096

Insn = tuple[int, int, int, int]


def decode(prog: bytes) -> list[Insn]:
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
        else:
            assert code in (ALU_AND_K, RET_K), f"{pc}: opcode {code:#x} is not one _bpf.py emits"
    assert insns[-1][0] == RET_K, "the last instruction must return"
    return insns


def encode(insns: Iterable[Insn]) -> bytes:
    """[(code, jt, jf, k)] -> ``struct sock_filter[]``."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in insns)


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = ()) -> bytes:
    """``struct seccomp_data`` as the kernel fills it (both arches are little-endian)."""
    full = (*args, *(0,) * (6 - len(args)))
    return struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0x401000, *full)


def execute(insns: list[Insn], data: bytes, trace: list[Insn] | None = None) -> int:
    """Run the program on ``data``; returns the RET value.  ``trace``: append
    each instruction executed."""
    pc = acc = 0
    while True:
        code, jt, jf, k = insns[pc]
        if trace is not None:
            trace.append(insns[pc])
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


def _holds(code: int, k: int, mask: int, truth: bool, value: int) -> bool:
    x = value & mask
    if code == JEQ_K:
        got = x == k
    elif code == JGE_K:
        got = x >= k
    else:
        got = bool(x & k)
    return got == truth


def _candidates(insns: list[Insn]) -> list[int]:
    """Values an argument word may take that tell every branch apart."""
    out = {0, 0xFFFFFFFF, *(1 << i for i in range(32))}
    for code, _, _, k in insns:
        if code in (JEQ_K, JGE_K, JSET_K, ALU_AND_K):
            out.update({k, (k - 1) & 0xFFFFFFFF, (k + 1) & 0xFFFFFFFF, ~k & 0xFFFFFFFF})
            out.update(k & (1 << i) for i in range(32))
    return sorted(out)


def outcomes(insns: list[Insn], nr: int, arch: int,
             avoid: Iterable[tuple[int, int]] = ()) -> set[int]:
    """Every action a call of ``nr`` can get, over all argument values.

    Paths are followed with the constraints they put on each argument word;
    a branch is taken when some value satisfies them all.  ``avoid``:
    (offset, word) comparisons never taken as equal (the pre-exec key: the
    sandboxed program does not know it).
    """
    cands = _candidates(insns)
    avoided = set(avoid)
    results: set[int] = set()
    Cons = dict[int, tuple[tuple[int, int, int, bool], ...]]

    def walk(pc: int, acc: tuple[int, int, int], cons: Cons) -> None:
        # acc: (-1, value, 0) for a known word, (offset, 0, mask) for an argument.
        while True:
            code, jt, jf, k = insns[pc]
            pc += 1
            if code == LD_W_ABS:
                acc = (-1, nr, 0) if k == 0 else (-1, arch, 0) if k == 4 else (k, 0, 0xFFFFFFFF)
            elif code == ALU_AND_K:
                acc = (-1, acc[1] & k, 0) if acc[0] < 0 else (acc[0], 0, acc[2] & k)
            elif code == JA:
                pc += k
            elif code == RET_K:
                results.add(k)
                return
            elif acc[0] < 0:
                pc += jt if _holds(code, k, 0xFFFFFFFF, True, acc[1]) else jf
            else:
                offset, mask = acc[0], acc[2]
                for truth, dest in ((True, pc + jt), (False, pc + jf)):
                    if truth and code == JEQ_K and (offset, k) in avoided:
                        continue
                    new = (*cons.get(offset, ()), (code, k, mask, truth))
                    if any(all(_holds(*p, v) for p in new) for v in cands):
                        walk(dest, acc, {**cons, offset: new})
                return

    walk(0, (-1, 0, 0), {})
    return results


def key_words(key: tuple[int, int, int] | None) -> set[tuple[int, int]]:
    """The (offset, word) comparisons of the keyed exemption for ``key``:
    the two words of key[1], in argument 4."""
    if key is None:
        return set()
    return {(16 + 8 * 4, key[1] & 0xFFFFFFFF), (20 + 8 * 4, key[1] >> 32)}


@dataclass(frozen=True)
class Filter:
    """A program built from a spec, ready to be run on syscalls."""

    spec: FilterSpec
    insns: list[Insn]

    @classmethod
    def build(cls, spec: FilterSpec) -> Filter:
        return cls(spec, decode(build_filter(spec)))

    def nr(self, name: str) -> int:
        return self.spec.table[name]

    def run(self, nr: int | str, *args: int, arch: int | None = None) -> int:
        number = self.nr(nr) if isinstance(nr, str) else nr
        data = seccomp_data(number, self.spec.arch if arch is None else arch, args)
        return execute(self.insns, data)

    def outcomes(self, name: str) -> set[int]:
        """Every action ``name`` can get from a program that lacks the key."""
        return outcomes(self.insns, self.nr(name), self.spec.arch, key_words(self.spec.key))

    def allowed(self, name: str) -> int:
        """What an allowed call of ``name`` gets: handlers see it if they trap it."""
        return USER_NOTIF if name in self.spec.notify else ALLOW



def _zero_args_trace(insns: list[Insn], nr: int, arch: int) -> list[Insn]:
    trace: list[Insn] = []
    execute(insns, seccomp_data(nr, arch), trace)
    return trace


def reads_arguments(insns: list[Insn], nr: int, arch: int) -> bool:
    """Whether a call of ``nr`` loads an argument: the kernel's allow cache
    (``seccomp_cache_prepare``) holds only calls whose verdict does not."""
    return any(code == LD_W_ABS and k >= 16 for code, _, _, k in _zero_args_trace(insns, nr, arch))


def path_length(insns: list[Insn], nr: int, arch: int) -> int:
    """Instructions a call of ``nr`` with every argument 0 executes."""
    return len(_zero_args_trace(insns, nr, arch))
