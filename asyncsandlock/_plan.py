"""Policy + this kernel -> one immutable plan that every spawn of it uses,
and the one object that owns what a :class:`Sandbox`'s runs decide.

The plan and its owner
----------------------
A :class:`Plan` is frozen data: what a spawn of the policy needs (the ruleset
fd's number, the filter key, the rlimits, what the filter allows...).  What
changes over a Sandbox's life has exactly one owner, its :class:`Compiled`:

- the current plan, *replaced* (never mutated) when the policy agrees to
  run without a subsystem (:meth:`Compiled.degrade`), so a spawn that holds a
  plan holds a consistent one;
- the refusals met so far, and the decisions of ``on_unavailable`` still in
  progress;
- the caches of the runs (spawn request templates, protection reports);
- the Landlock ruleset fd, closed when the owner goes (with its Sandbox, or
  by :meth:`Compiled.close`).

Owners are kept in :data:`_owners`, a ``WeakKeyDictionary`` keyed by the
Sandbox, so the frozen Sandbox carries no compiled state and its owner dies
with it.

Concurrent first runs, without a lock
-------------------------------------
Everything here runs on one event loop thread, so a check and the write that
follows it are atomic as long as no ``await`` separates them.  The first run
of a Sandbox finds nothing in :data:`_owners` and puts an ``anyio.Event``
there before its first ``await``; compiling may then await the policy's
``on_unavailable`` (Landlock refused, or missing parts of it).  Every other
run arriving meanwhile finds the Event and waits on it.  When the first run
is done it stores the owner in place of the Event and sets it; if the policy
refused instead, the Event is removed and set, and a waiter compiles anew
and asks again (a refusal is not remembered: nothing ran).  Either way the
policy is asked at most once at a time, and once it agreed, never again.
:meth:`Compiled.degrade` does the same per subsystem for the refusals that
show at spawn time, with its own Events.
"""

from __future__ import annotations

import copy
import errno
import inspect
import os
import resource
import secrets
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

import anyio

from ._enforcement import consequence, unenforced
from ._exceptions import ConfinementUnavailable
from ._handler import route
from ._identity import core_rlimit, keeps_caps, plan_identity, root_of_network
from ._kernel._bpf import DEFAULT_DENY, FilterSpec, build_filter
from ._kernel._caps import keep_mask, permitted_mask
from ._kernel._landlock import RulesetSpec, abi_version, build_ruleset, missing
from ._kernel._sys import AUDIT_ARCH, SYSCALLS
from ._limits import huge_pages_off, limits_protection
from ._network import net_mode, port_start
from ._types import Protection, Subsystem
from .handlers import guarded_syscalls
from .handlers.net import resolve_names

if TYPE_CHECKING:
    from ._policy import Sandbox

T = TypeVar("T")

_LANDLOCK_PARTS = (Subsystem.LANDLOCK_NET, Subsystem.LANDLOCK_SCOPE, Subsystem.LANDLOCK_TRUNCATE,
                   Subsystem.LANDLOCK_REFER, Subsystem.LANDLOCK_IOCTL_DEV)


@dataclass(frozen=True, slots=True, weakref_slot=True, eq=False)
class Plan:
    """What a spawn of one policy needs; frozen, shared by its runs."""

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
    #: files: the child's identity (uid, gid, how: enum asl_identity), or None.
    identity: tuple[int, int, int] | None = None
    #: How max_memory, cpu_time and max_cpu are enforced (see _limits.py).
    limits: Protection = Protection.NOT_REQUESTED
    #: Kernel ping sockets: ``net_allow`` has an ``icmp://`` rule.
    allow_icmp: bool = False
    #: enum asl_net_mode: where the child's network comes from (``_network.net_mode``).
    net_mode: int = 0
    #: Its own network's ip_unprivileged_port_start, or None (``_network.port_start``).
    port_start: int | None = None
    #: max_memory: the child's transparent huge pages off (``_limits.huge_pages_off``).
    thp_off: bool = False
    #: cpu_cores: the CPUs the child binds itself to (empty: as inherited).
    cpus: tuple[int, ...] = ()

    @property
    def landlock_fd(self) -> int:
        """The ruleset fd the child restricts itself with, or -1 without Landlock."""
        if self.ruleset_fd is None or Subsystem.LANDLOCK in self.degraded:
            return -1
        return self.ruleset_fd

    def filter_for(self, notify: frozenset[str],
                   self_trapped: frozenset[str] = frozenset()) -> bytes | None:
        """The BPF program that traps ``notify``, or None without seccomp;
        ``self_trapped``: see :attr:`FilterSpec.self_trapped`.  Built anew
        each call: the spawn templates of :class:`Compiled` keep it."""
        if Subsystem.SECCOMP in self.degraded:
            return None
        return build_filter(self.filter_spec(notify, self_trapped=self_trapped))

    def filter_spec(self, notify: frozenset[str], arch: int = AUDIT_ARCH,
                    table: Mapping[str, int] = SYSCALLS,
                    self_trapped: frozenset[str] = frozenset()) -> FilterSpec:
        """What the filter of a run trapping ``notify`` depends on (for
        another architecture's ``arch`` and ``table``: to audit it)."""
        return FilterSpec(arch, table, self.deny, notify, self.key, self.allow_udp,
                          self.allow_unix, self.guarded, self.allow_sysv_ipc, self.interactive,
                          self.fastopen_ok, self.baseline, self_trapped, self.allow_icmp)


class Decision:
    """A decision under way: set when it is made; ``refusal`` is the
    exception it raised, shared by every run that waited for it (a run
    arriving later asks again: nothing ran)."""

    __slots__ = ("done", "refusal")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.refusal: Exception | None = None

    async def outcome(self) -> None:
        """Wait for the decision; raise its refusal, if it refused."""
        await self.done.wait()
        if self.refusal is not None:
            raise self.refusal

    async def make(self, decide: Awaitable[T]) -> T:
        """Await ``decide``, recording a refusal (not a cancellation: the
        runs waiting then decide anew), and set the decision in any case."""
        try:
            return await decide
        except Exception as exc:
            self.refusal = exc
            raise
        finally:
            self.done.set()


def _detached(error: OSError) -> OSError:
    """``error`` without the frames it was raised through: kept for the
    Sandbox's life, a traceback would hold the Sandbox itself (a local of
    those frames) and with it the owner and its ruleset fd, for ever."""
    if error.__traceback__ is None and error.__context__ is None and error.__cause__ is None:
        return error
    kept = copy.copy(error).with_traceback(None)
    kept.__context__ = kept.__cause__ = None
    return kept


#: Keys of :attr:`Compiled.templates`: (notify, self_trapped, degraded).
TemplateKey = tuple[frozenset[str], frozenset[str], frozenset[Subsystem]]


class Compiled:
    """The one owner of a Sandbox's compiled state (see the module's essay).

    Read :attr:`plan` for the current plan; everything that changes goes
    through :meth:`degrade` and :meth:`refused`.
    """

    __slots__ = ("__weakref__", "_closer", "_deciding", "_plan", "_protections", "_refusals",
                 "routing", "templates")

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        #: on_unavailable decisions under way, per subsystem (see degrade()).
        self._deciding: dict[Subsystem, Decision] = {}
        self._refusals: dict[Subsystem, OSError] = {}
        self._protections: dict[tuple[bool, frozenset[Subsystem]],
                                Mapping[Subsystem, Protection]] = {}
        #: The parts of a spawn request that only the plan decides, filled
        #: once per key by ``_spawn.spawn`` (its cache alone) and copied.
        self.templates: dict[TemplateKey, object] = {}
        #: The routing of runs without handlers of their own, per (deny,
        #: guarded) of the plan: filled and read by ``_run`` alone.
        self.routing: dict[tuple[frozenset[str], frozenset[str]], object] = {}
        fd = plan.ruleset_fd
        self._closer = None if fd is None else weakref.finalize(self, os.close, fd)

    @property
    def plan(self) -> Plan:
        """The current plan: the compiled one less what the policy let go."""
        return self._plan

    def refusal(self, subsystem: Subsystem) -> OSError | None:
        """The host's refusal of ``subsystem`` met so far, if any."""
        return self._refusals.get(subsystem)

    def refused(self, subsystem: Subsystem, error: OSError) -> None:
        """Remember a refusal that needs no decision (it fails closed)."""
        self._refusals[subsystem] = _detached(error)

    async def degrade(self, subsystem: Subsystem, error: OSError,
                      ask: Callable[[], Awaitable[None]]) -> None:
        """Run without ``subsystem`` (Landlock: and its parts) once ``ask()``
        returns; it raises to refuse.  One ``ask()`` at a time per subsystem:
        a run arriving while one is under way waits for its answer."""
        while subsystem not in self._plan.degraded:
            pending = self._deciding.get(subsystem)
            if pending is not None:  # another run of this Sandbox is asking right now
                await pending.outcome()
                continue
            decision = self._deciding[subsystem] = Decision()
            try:
                await decision.make(ask())
            finally:
                del self._deciding[subsystem]
            implied = _LANDLOCK_PARTS if subsystem is Subsystem.LANDLOCK else ()
            self._refusals[subsystem] = _detached(error)
            self._plan = replace(self._plan,
                                 degraded=self._plan.degraded | {subsystem, *implied})

    def protections(self, supervised: bool,
                    fail_closed: bool = False) -> Mapping[Subsystem, Protection]:
        """Per subsystem, what a run with the current plan gets; ``supervised``:
        the run asked for the supervisor (it has handlers); ``fail_closed``: it
        runs without, its built-in guards' calls denied (see _unavailable).
        The same read-only mapping is handed to every run that gets it."""
        degraded = self._plan.degraded
        if fail_closed:
            degraded = degraded | {Subsystem.SUPERVISOR}
        cached = self._protections.get((supervised, degraded))
        if cached is not None:
            return cached
        out: dict[Subsystem, Protection] = {}
        for sub in Subsystem:
            if sub is Subsystem.RESOURCE_LIMITS:
                # The watcher finds the sandbox by its process group.
                out[sub] = (Protection.DEGRADED if Subsystem.PROCESS_GROUP in degraded
                            and self._plan.limits is not Protection.NOT_REQUESTED
                            else self._plan.limits)
            elif (sub is Subsystem.NETWORK_NAMESPACE and not self._plan.net_mode) or (
                    sub in (Subsystem.WORKSPACE_OVERLAY, Subsystem.WORKSPACE_SNAPSHOT)) or (
                    # A run that pins names says so (_pinned.pinned_protections).
                    sub is Subsystem.PINNED_NAMES and sub not in degraded) or (
                    sub is Subsystem.SUPERVISOR and not supervised) or (
                    sub is Subsystem.IDENTITY and self._plan.identity is None):
                out[sub] = Protection.NOT_REQUESTED
            elif sub in degraded:
                out[sub] = Protection.DEGRADED
            else:
                out[sub] = Protection.ACTIVE
        cached = self._protections[supervised, degraded] = MappingProxyType(out)
        return cached

    def close(self) -> None:
        """Close the ruleset fd now (else it goes with this owner) and forget
        this owner: the Sandbox's next run compiles anew."""
        for policy, owner in list(_owners.items()):
            if owner is self:
                del _owners[policy]
        if self._closer is not None:
            self._closer()


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
    connect unhandled (``connect_ports=None``).  Rules naming hosts add
    their ports here too: Landlock is the first line, the network guard
    checks the addresses (see handlers/net.py)."""
    readable = tuple(map(str, policy.fs_readable))
    writable = tuple(map(str, policy.fs_writable))
    denied = tuple(map(str, policy.fs_denied))
    ports: set[int] = set()
    bind = policy.bind_ports()
    for rule in policy.net_rules():
        if rule.covers("tcp"):
            if rule.ports is None:
                return RulesetSpec(readable, writable, None, bind, denied=denied)
            ports |= rule.ports
    return RulesetSpec(readable, writable, frozenset(ports), bind, denied=denied)


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
    return tuple(limits)


def _new_key() -> tuple[int, int, int]:
    """The 192 bits the child's own pre-exec calls carry; the filter
    compares the 64 of the second word (``_bpf._key_words``).

    Bits 63 and 55 of the first word are set: it is prlimit64's old-limit
    pointer, which they make a kernel address on every arch we run on (see
    ``set_rlimits`` in csrc/spawn.c)."""
    return (secrets.randbits(64) | 1 << 63 | 1 << 55, secrets.randbits(64), secrets.randbits(64))


#: Per Sandbox: its owner, or the decision of the first run compiling it.
_owners: weakref.WeakKeyDictionary[Sandbox, Compiled | Decision] = weakref.WeakKeyDictionary()


def peek(policy: Sandbox) -> Compiled | None:
    """``policy``'s owner if it has been compiled, without compiling it."""
    owner = _owners.get(policy)
    return owner if isinstance(owner, Compiled) else None


async def owner_of(policy: Sandbox) -> Compiled:
    """The owner of ``policy``'s compiled state, compiled on first use."""
    owner = _owners.get(policy)
    if isinstance(owner, Compiled):
        return owner
    deny = frozenset(DEFAULT_DENY) | frozenset(policy.extra_deny_syscalls)
    # Here as well as at each spawn: a pipeline compiles every stage's plan
    # before it starts any, so a bad handler stops it before any process.
    route(policy.handlers, SYSCALLS, deny)
    while isinstance(owner := _owners.get(policy), Decision):
        # Another run is compiling it, perhaps awaiting on_unavailable: one decision.
        await owner.outcome()
    if owner is not None:
        return owner
    _owners[policy] = decision = Decision()
    try:
        ruleset_fd, degraded = await decision.make(_landlock(policy))
        rules = policy.net_rules()
        await resolve_names(policy)
        udp = any(rule.covers("udp") for rule in rules)
        every_tcp_port = not policy.net_deny and any(
            rule.covers("tcp") and rule.any_host and rule.ports is None for rule in rules)
        bind = policy.bind_ports()
        identity = plan_identity(policy.uid, policy.gid)
        how_net = net_mode(policy.network, tuple(policy.publish))
        keep = keep_mask(frozenset({1}) if bind is None else bind - {0},
                         own_namespace=root_of_network(identity, how_net)) \
            if keeps_caps(identity, how_net) else 0
        plan = Plan(ruleset_fd, _new_key(), _rlimits(policy) + core_rlimit(policy.no_coredump),
                    frozenset(degraded), udp, policy.allow_unix_sockets or bool(policy.unix_allow),
                    deny, keep,
                    guarded=guarded_syscalls(policy), allow_sysv_ipc=policy.allow_sysv_ipc,
                    interactive=policy.interactive, fastopen_ok=every_tcp_port,
                    identity=identity, limits=limits_protection(policy),
                    allow_icmp=any(rule.protocol == "icmp" for rule in rules),
                    net_mode=how_net, port_start=port_start(how_net, bind, identity, keep),
                    thp_off=huge_pages_off(policy),
                    cpus=tuple(policy.cpu_cores) if policy.cpu_cores else ())
        owner = _owners[policy] = Compiled(plan)
    finally:
        if _owners.get(policy) is decision:  # refused: the next run asks again
            del _owners[policy]
        decision.done.set()
    return owner


async def compile_plan(policy: Sandbox) -> Plan:
    """The current plan of ``policy`` on this kernel, compiled on first use."""
    return (await owner_of(policy)).plan


def probe_plan(seccomp: bool = True) -> Plan:
    """A plan that confines nothing but by a seccomp filter that denies
    nothing (none without ``seccomp``): for the throwaway children of
    ``_features.probe``.  They keep our capabilities, so that they meet the
    host's refusals, not ours."""
    key = _new_key()
    degraded = frozenset() if seccomp else frozenset({Subsystem.SECCOMP})
    return Plan(None, key, (), degraded, False, True, frozenset(), permitted_mask(),
                baseline=False)
