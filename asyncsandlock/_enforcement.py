"""What each subsystem enforces of one policy: what goes when it is missing.

One function, :func:`unenforced`, maps (policy, subsystem) to the fields whose
guarantee that subsystem carries *for this policy*; the degradation warning,
the :class:`ConfinementUnavailable` message and ``Result.unenforced`` /
``SandboxedProcess.unenforced`` are all made from it, so they cannot disagree.

A field is named when its value is a restriction the subsystem enforces:
``fs_readable`` under Landlock even when empty (empty means "nothing"),
``allow_unix_sockets`` under seccomp only while it is False, ``max_processes``
only when it is set.  What a subsystem enforces whatever the fields (the
default deny list, signal scoping) is told in words by :func:`consequence`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from ._netspec import needs_guard
from ._types import Protection, Subsystem
from .handlers import guarded_syscalls

if TYPE_CHECKING:
    from ._policy import Sandbox

#: What each subsystem enforces regardless of the policy's fields.
_ALWAYS: Final = {
    Subsystem.LANDLOCK: "every file, TCP-port and scope rule",
    Subsystem.LANDLOCK_SCOPE: "signals and abstract unix sockets can reach processes outside "
                              "the sandbox",
    Subsystem.LANDLOCK_REFER: "nothing is less confined: without it, Landlock refuses every "
                              "rename and link across directories (EXDEV)",
    Subsystem.LANDLOCK_TRUNCATE: "truncate(2) reaches any file the user may write, in "
                                 "fs_writable or not",
    Subsystem.LANDLOCK_IOCTL_DEV: "any ioctl on the device files it may open",
    Subsystem.SECCOMP: "the default syscall deny list of mount, ptrace, bpf, setsid and the "
                       "like, namespace flags of clone, raw and non-TCP/UDP sockets, TIOCSTI",
    # SUPERVISOR: its fields, and in words (consequence()) the calls of the
    # built-in guards, which the filter then denies everywhere.
    Subsystem.NETWORK_NAMESPACE: "the sandbox shares the caller's network stack: its ports, "
                                 "addresses and routes",
    Subsystem.WORKSPACE_OVERLAY: "a snapshot of workdir takes its place where "
                                 "workdir_mechanism is 'auto' (Subsystem.WORKSPACE_SNAPSHOT: "
                                 "the command works in a copy at another path); else nothing "
                                 "runs: a workspace is never waived, as the command would "
                                 "write workdir itself",
    Subsystem.WORKSPACE_SNAPSHOT: "nothing runs: a workspace is never waived, as the command "
                                  "would write workdir itself",
    Subsystem.PROCESS_GROUP: "a timeout or cancellation kills the command but not the "
                             "processes it leaves behind",
    Subsystem.RESOURCE_LIMITS: "nothing watches the sandbox's memory and CPU use",
    Subsystem.PINNED_NAMES: "host names are not pinned: the child resolves them itself (the "
                            "host's /etc/hosts, DNS where a rule allows it), and reaches a "
                            "name only at the addresses it was checked against, as the guard "
                            "still refuses every other address",
}


def needs_supervisor(policy: Sandbox, run_handlers: bool = False) -> bool:
    """Whether a run has fields only the supervisor enforces (beyond the
    built-in guards, which fail closed without it)."""
    return bool(_supervised(policy, run_handlers))


def _supervised(policy: Sandbox, run_handlers: bool) -> list[str]:
    """The fields whose enforcement is the supervisor's (its handlers)."""
    fields = []
    if policy.handlers or run_handlers:
        fields.append("handlers")
    if policy.max_processes is not None:
        fields.append("max_processes")
    if policy.max_threads is not None:
        fields.append("max_threads")
    if needs_guard(policy.net_rules(), policy.net_deny_rules())[0]:
        # Addresses, UDP ports and ICMP: the network guard's (connect and
        # addressed sends fail closed without it).
        fields += ["net_allow", *(["net_deny"] if policy.net_deny else [])]
    if policy.unix_allow and not policy.allow_unix_sockets:
        fields.append("unix_allow")
    return fields


def _watched(policy: Sandbox) -> list[str]:
    """The limits the watcher enforces, found by the sandbox's process group."""
    return [name for name in ("max_memory", "cpu_time", "max_cpu")
            if getattr(policy, name) is not None]


def _tcp_connect_restricted(policy: Sandbox) -> bool:
    """False when a rule opens every TCP port (then Landlock restricts no connect)."""
    return not any(rule.covers("tcp") and rule.ports is None and rule.any_host
                   for rule in policy.net_rules())


def unenforced(policy: Sandbox, subsystem: Subsystem, *,
               run_handlers: bool = False) -> tuple[str, ...]:
    """The fields of ``policy`` that go unenforced without ``subsystem``.

    ``run_handlers``: the run has handlers of its own (``run(handlers=...)``).
    The names are :class:`Sandbox` fields, and for
    :attr:`Subsystem.PROCESS_GROUP` the ``run()`` argument ``timeout``.
    """
    net = (["net_allow"] if _tcp_connect_restricted(policy) else []) + ["net_allow_bind"]
    fields: list[str]
    if subsystem is Subsystem.LANDLOCK:
        fields = ["fs_readable", "fs_writable", *(["fs_denied"] if policy.fs_denied else []),
                  *net]
    elif subsystem is Subsystem.LANDLOCK_NET:
        fields = net
    elif subsystem is Subsystem.LANDLOCK_TRUNCATE:
        fields = ["fs_writable", *(["fs_denied"] if policy.fs_denied else [])]
    elif subsystem is Subsystem.LANDLOCK_IOCTL_DEV:
        fields = ["fs_readable", "fs_writable"]
    elif subsystem is Subsystem.SECCOMP:
        # No filter, no listener: the supervisor's fields go too.
        fields = ["extra_deny_syscalls"] if policy.extra_deny_syscalls else []
        fields += _supervised(policy, run_handlers)
        fields += [flag for flag in ("allow_unix_sockets", "allow_sysv_ipc", "interactive")
                   if not getattr(policy, flag)]
        if policy.unix_allow and not policy.allow_unix_sockets:
            fields.append("unix_allow")
        fields.append("net_allow")  # UDP and ICMP sockets are the filter's
    elif subsystem is Subsystem.SUPERVISOR:
        fields = _supervised(policy, run_handlers)
    elif subsystem is Subsystem.PROCESS_GROUP:
        fields = ["timeout", *_watched(policy)]
    elif subsystem is Subsystem.IDENTITY:
        fields = ["uid", "gid"]
    elif subsystem is Subsystem.RESOURCE_LIMITS:
        fields = _watched(policy)
    elif subsystem is Subsystem.NETWORK_NAMESPACE:
        fields = ["network"] if policy.network != "host" else []
    elif subsystem is Subsystem.PINNED_NAMES:
        fields = ["net_allow"] if any(rule.host is not None for rule in policy.net_rules()) \
            else []
    else:  # LANDLOCK_SCOPE, LANDLOCK_REFER: no field
        fields = []
    return tuple(fields)


def consequence(policy: Sandbox, subsystem: Subsystem, *, run_handlers: bool = False) -> str:
    """:func:`unenforced` in words, with what goes whatever the fields; "" if nothing."""
    fields = ", ".join(unenforced(policy, subsystem, run_handlers=run_handlers))
    always = _ALWAYS.get(subsystem, "")
    if subsystem is Subsystem.SUPERVISOR and (guarded := guarded_syscalls(policy)):
        denied = f"fail closed: {', '.join(sorted(guarded))} are denied everywhere"
        always = f"{always}; {denied}" if always else denied
    if fields and always:
        return f"{fields} ({always})"
    return fields or always


_NOTHING: Final[Mapping[Subsystem, tuple[str, ...]]] = MappingProxyType({})


def unenforced_by_run(policy: Sandbox, protections: Mapping[Subsystem, Protection], *,
                      run_handlers: bool = False) -> Mapping[Subsystem, tuple[str, ...]]:
    """Per :attr:`Protection.DEGRADED` subsystem of a run, :func:`unenforced`."""
    if Protection.DEGRADED not in protections.values():  # the usual run: one scan in C
        return _NOTHING
    degraded = [sub for sub, state in protections.items() if state is Protection.DEGRADED]
    return MappingProxyType({sub: unenforced(policy, sub, run_handlers=run_handlers)
                             for sub in degraded})
