"""Policy + this kernel -> one immutable plan that every spawn of it uses.

The plan is computed once per :class:`Sandbox` (the Landlock ruleset fd,
the random key, the refusals the policy agreed to) and the BPF program once
per set of supervised syscalls.  Where the kernel refuses a subsystem the
policy's ``on_unavailable`` decides, once, and the decision is remembered.
"""

from __future__ import annotations

import errno
import inspect
import os
import resource
import secrets
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import anyio

from ._enforcement import consequence, unenforced
from ._exceptions import ConfinementUnavailable
from ._handler import route
from ._kernel._bpf import DEFAULT_DENY, FilterSpec, build_filter
from ._kernel._caps import keep_mask, permitted_mask
from ._kernel._landlock import RulesetSpec, abi_version, build_ruleset, missing
from ._kernel._sys import AUDIT_ARCH, SYSCALLS
from ._types import Protection, Subsystem
from .handlers import guarded_syscalls

if TYPE_CHECKING:
    from ._policy import Sandbox

_LANDLOCK_PARTS = (Subsystem.LANDLOCK_NET, Subsystem.LANDLOCK_SCOPE, Subsystem.LANDLOCK_TRUNCATE,
                   Subsystem.LANDLOCK_REFER, Subsystem.LANDLOCK_IOCTL_DEV)


@dataclass(slots=True)
class Plan:
    """What a spawn of one policy needs, built once and shared by its runs."""

    ruleset_fd: int | None
    key: tuple[int, int, int]
    rlimits: tuple[tuple[int, int, int], ...]
    degraded: frozenset[Subsystem]
    allow_udp: bool
    allow_unix: bool
    deny: frozenset[str]
    keep_caps: int
    #: The GUARDED syscalls a built-in guard of the policy traps (see _kernel/_bpf.py).
    guarded: frozenset[str] = frozenset()
    allow_sysv_ipc: bool = False
    interactive: bool = False
    #: ``net_allow`` opens every TCP port, so TCP fast open opens nothing more.
    fastopen_ok: bool = False
    #: False: the filter has no decision table (probe children only).
    baseline: bool = True
    _filters: dict[tuple[frozenset[str], frozenset[str]], bytes] = field(default_factory=dict)
    #: Decisions of ``on_unavailable`` in progress, and the refusals it
    #: accepted (see ``_unavailable.degrade``).
    deciding: dict[Subsystem, anyio.Event] = field(default_factory=dict)
    refusals: dict[Subsystem, OSError] = field(default_factory=dict)
    #: protections() per (supervised, degraded): the same read-only mapping
    #: is handed to every run instead of a new one each spawn.
    _protections: dict[tuple[bool, frozenset[Subsystem]], Mapping[Subsystem, Protection]] = \
        field(default_factory=dict)
    #: The parts of a spawn request that only this plan decides, filled once
    #: per (supervised syscalls, degraded) by ``_spawn.spawn`` and copied.
    spawn_templates: dict[tuple[frozenset[str], frozenset[str], frozenset[Subsystem]], object] = \
        field(default_factory=dict)

    @property
    def landlock_fd(self) -> int:
        """The ruleset fd the child restricts itself with, or -1 without Landlock."""
        if self.ruleset_fd is None or Subsystem.LANDLOCK in self.degraded:
            return -1
        return self.ruleset_fd

    def filter_for(self, notify: frozenset[str],
                   self_trapped: frozenset[str] = frozenset()) -> bytes | None:
        """The BPF program that traps ``notify`` (cached), or None without seccomp;
        ``self_trapped``: see :attr:`FilterSpec.self_trapped`."""
        if Subsystem.SECCOMP in self.degraded:
            return None
        prog = self._filters.get((notify, self_trapped))
        if prog is None:
            prog = self._filters[notify, self_trapped] = build_filter(
                self.filter_spec(notify, self_trapped=self_trapped))
        return prog

    def filter_spec(self, notify: frozenset[str], arch: int = AUDIT_ARCH,
                    table: Mapping[str, int] = SYSCALLS,
                    self_trapped: frozenset[str] = frozenset()) -> FilterSpec:
        """What the filter of a run trapping ``notify`` depends on (for
        another architecture's ``arch`` and ``table``: to audit it)."""
        return FilterSpec(arch, table, self.deny, notify, self.key, self.allow_udp,
                          self.allow_unix, self.guarded, self.allow_sysv_ipc, self.interactive,
                          self.fastopen_ok, self.baseline, self_trapped)

    def protections(self, supervised: bool,
                    fail_closed: bool = False) -> Mapping[Subsystem, Protection]:
        """Per subsystem, what a run with this plan gets; ``supervised``: the
        run asked for the supervisor (it has handlers); ``fail_closed``: it
        runs without, its built-in guards' calls denied (see _unavailable)."""
        degraded = self.degraded | {Subsystem.SUPERVISOR} if fail_closed else self.degraded
        cached = self._protections.get((supervised, degraded))
        if cached is not None:
            return cached
        out: dict[Subsystem, Protection] = {}
        for sub in Subsystem:
            if sub is Subsystem.NETWORK_NAMESPACE or (
                    sub is Subsystem.SUPERVISOR and not supervised):
                out[sub] = Protection.NOT_REQUESTED
            elif sub in degraded:
                out[sub] = Protection.DEGRADED
            else:
                out[sub] = Protection.ACTIVE
        cached = self._protections[supervised, degraded] = MappingProxyType(out)
        return cached


async def _decide(policy: Sandbox, subsystem: Subsystem, error: OSError, *,
                  run_handlers: bool = False) -> None:
    """Ask the policy; returning means "run without it", raising refuses
    (a :class:`ConfinementUnavailable` is told what would have gone)."""
    try:
        outcome = policy.on_unavailable(subsystem, error)
        if inspect.isawaitable(outcome):
            await outcome
    except ConfinementUnavailable as exc:
        if exc.subsystem is subsystem and not exc.unenforced:
            exc._name_unenforced(unenforced(policy, subsystem, run_handlers=run_handlers),
                                 consequence(policy, subsystem, run_handlers=run_handlers))
        raise


def _ruleset_spec(policy: Sandbox) -> RulesetSpec:
    """What ``policy`` asks of Landlock; a rule opening every TCP port leaves
    connect unhandled (``connect_ports=None``)."""
    readable = tuple(map(str, policy.fs_readable))
    writable = tuple(map(str, policy.fs_writable))
    ports: set[int] = set()
    for rule in policy.net_rules():
        if rule.protocol in ("tcp", "any"):
            if rule.ports is None:
                return RulesetSpec(readable, writable, None, policy.bind_ports())
            ports |= rule.ports
    return RulesetSpec(readable, writable, frozenset(ports), policy.bind_ports())


async def _landlock(policy: Sandbox) -> tuple[int | None, set[Subsystem]]:
    spec = _ruleset_spec(policy)
    try:
        abi = abi_version()
    except OSError as exc:
        await _decide(policy, Subsystem.LANDLOCK, exc)
        return None, {Subsystem.LANDLOCK, *_LANDLOCK_PARTS}
    skipped: set[Subsystem] = set()
    for sub in missing(spec, abi):
        refusal = OSError(errno.EOPNOTSUPP, f"Landlock ABI {abi} lacks {sub.value}")
        await _decide(policy, sub, refusal)
        skipped.add(sub)
    return build_ruleset(spec, abi, frozenset(skipped)), skipped


def _rlimits(policy: Sandbox) -> tuple[tuple[int, int, int], ...]:
    limits = []
    if policy.max_open_files is not None:
        limits.append((resource.RLIMIT_NOFILE, policy.max_open_files, policy.max_open_files))
    if policy.max_memory is not None:
        size = int(policy.max_memory)
        limits.append((resource.RLIMIT_AS, size, size))
    return tuple(limits)


def _new_key() -> tuple[int, int, int]:
    """The 192 bits that let the child's own pre-exec calls pass its filter.

    Bits 63 and 55 of the first word are set: it is prlimit64's old-limit
    pointer, which they make a kernel address on every arch we run on (see
    ``set_rlimits`` in csrc/spawn.c)."""
    return (secrets.randbits(64) | 1 << 63 | 1 << 55, secrets.randbits(64), secrets.randbits(64))


_compiling: weakref.WeakKeyDictionary[Sandbox, anyio.Event] = weakref.WeakKeyDictionary()


async def compile_plan(policy: Sandbox) -> Plan:
    """The plan of ``policy`` on this kernel, computed on first use."""
    plan: Plan | None = policy._compiled
    if plan is not None:
        return plan
    deny = frozenset(DEFAULT_DENY) | frozenset(policy.extra_deny_syscalls)
    # Here as well as at each spawn: a pipeline compiles every stage's plan
    # before it starts any, so a bad handler stops it before any process.
    route(policy.handlers, SYSCALLS, deny)
    while (pending := _compiling.get(policy)) is not None:
        # Another run is compiling it, perhaps awaiting on_unavailable: one decision.
        await pending.wait()
        if policy._compiled is not None:
            return policy._compiled  # type: ignore[no-any-return]
    _compiling[policy] = done = anyio.Event()
    try:
        ruleset_fd, degraded = await _landlock(policy)
    finally:
        del _compiling[policy]
        done.set()
    key = _new_key()
    rules = policy.net_rules()
    udp = any(rule.protocol in ("udp", "any") and rule.ports is None for rule in rules)
    every_tcp_port = any(rule.protocol in ("tcp", "any") and rule.ports is None for rule in rules)
    guarded = guarded_syscalls(policy)
    plan = Plan(ruleset_fd, key, _rlimits(policy), frozenset(degraded), udp,
                policy.allow_unix_sockets, deny,
                keep_mask(policy.bind_ports()), guarded=guarded,
                allow_sysv_ipc=policy.allow_sysv_ipc, interactive=policy.interactive,
                fastopen_ok=every_tcp_port)
    if ruleset_fd is not None:
        weakref.finalize(policy, os.close, ruleset_fd)
    object.__setattr__(policy, "_compiled", plan)
    return plan


def probe_plan(seccomp: bool = True) -> Plan:
    """A plan that confines nothing but by a seccomp filter that denies
    nothing (none without ``seccomp``): for the throwaway children of
    ``_features.probe``.  They keep our capabilities, so that they meet the
    host's refusals, not ours."""
    key = _new_key()
    degraded = frozenset() if seccomp else frozenset({Subsystem.SECCOMP})
    return Plan(None, key, (), degraded, False, True, frozenset(), permitted_mask(),
                baseline=False)
