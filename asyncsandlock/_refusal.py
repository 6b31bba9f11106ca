"""What a policy says when the host refuses a confinement subsystem.

The data half of ``on_unavailable``: the callables a :class:`Sandbox` takes
(:func:`strict`, :func:`allow_degraded`) and the hint that names what
provides each subsystem.  Putting a refusal to them, and spawning again
without the step, is ``_unavailable.py``'s job.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

from ._exceptions import ConfinementUnavailable
from ._types import Subsystem

#: ``on_unavailable`` callables: return to run without the subsystem, raise to refuse.
UnavailableHandler = Callable[[Subsystem, OSError], "Awaitable[None] | None"]

_HINTS = {
    Subsystem.LANDLOCK: "Landlock needs Linux >= 5.13 with 'landlock' in the lsm= boot list "
                        "(gVisor and some container hosts lack it)",
    Subsystem.LANDLOCK_NET: "Landlock TCP rules need Landlock ABI 4 (Linux >= 6.7)",
    Subsystem.LANDLOCK_SCOPE: "Landlock signal/abstract-socket scoping needs ABI 6 "
                              "(Linux >= 6.12)",
    Subsystem.LANDLOCK_TRUNCATE: "Landlock truncate control needs ABI 3 (Linux >= 6.2)",
    Subsystem.LANDLOCK_REFER: "Landlock rename/link control needs ABI 2 (Linux >= 5.19)",
    Subsystem.LANDLOCK_IOCTL_DEV: "Landlock device ioctl control needs ABI 5 (Linux >= 6.10)",
    Subsystem.SECCOMP: "seccomp filters need CONFIG_SECCOMP_FILTER and a host that allows them",
    Subsystem.SUPERVISOR: "seccomp user notification needs Linux >= 5.0 and no other listener on "
                          "this process (EBUSY: already inside a supervised sandbox; EINVAL: "
                          "gVisor); without it, syscall handlers and max_processes cannot run",
    Subsystem.PROCESS_GROUP: "setpgid is refused, as it is inside another sandbox; without a "
                             "process group of its own, only the command itself is killed on "
                             "timeout, and its descendants die with the outer sandbox",
    Subsystem.IDENTITY: "an unprivileged caller takes uid/gid through a user namespace: "
                        "the host must allow unprivileged user namespaces "
                        "(user.max_user_namespaces, kernel.unprivileged_userns_clone, "
                        "AppArmor's userns restriction); or run the caller as root",
    Subsystem.RESOURCE_LIMITS: "max_memory, cpu_time and max_cpu need the sandbox's own "
                               "process group (refused inside another sandbox)",
    Subsystem.WORKSPACE_OVERLAY: "a workspace needs overlayfs and the new mount API (Linux "
                                 ">= 5.2) with CAP_SYS_ADMIN in the caller, or else "
                                 "unprivileged user namespaces and overlayfs mountable in one "
                                 "(Linux >= 5.11); see docs/workspaces.md",
    Subsystem.WORKSPACE_SNAPSHOT: "a snapshot workspace needs Landlock (it alone keeps the "
                                  "command off workdir) and no fs_writable grant covering "
                                  "workdir; see docs/workspaces.md",
    Subsystem.NETWORK_NAMESPACE: "network namespaces need CAP_SYS_ADMIN or unprivileged user "
                                 "namespaces (Kubernetes RuntimeDefault refuses them)",
    Subsystem.PINNED_NAMES: "pinning net_allow's host names mounts a hosts file in a mount "
                            "namespace of the child's own: CAP_SYS_ADMIN in the caller, or "
                            "else unprivileged user namespaces (user.max_user_namespaces, "
                            "kernel.unprivileged_userns_clone, AppArmor's userns "
                            "restriction); see docs/network.md",
}

def hint_for(subsystem: Subsystem) -> str:
    """What kernel version or host setting provides ``subsystem``."""
    return _HINTS[subsystem]


def strict(subsystem: Subsystem, error: OSError) -> None:
    """The default policy: refuse to run without any requested subsystem."""
    raise ConfinementUnavailable(subsystem, error.errno or errno.ENOSYS, hint_for(subsystem))


def allow_degraded(*subsystems: Subsystem) -> UnavailableHandler:
    """A policy that runs without exactly ``subsystems`` and refuses the rest."""
    allowed = frozenset(subsystems)
    for item in allowed:
        if not isinstance(item, Subsystem):
            raise TypeError(f"allow_degraded() takes Subsystem members, not {item!r}")

    def decide(subsystem: Subsystem, error: OSError) -> None:
        if subsystem not in allowed:
            strict(subsystem, error)

    decide.__qualname__ = decide.__name__ = (
        f"allow_degraded({', '.join(s.name for s in sorted(allowed, key=lambda s: s.name))})")
    return decide
