"""Small enums shared by the policy, the runner and the reports."""

from __future__ import annotations

import enum


class Subsystem(enum.Enum):
    """A confinement mechanism the host may refuse."""

    LANDLOCK = "landlock"
    #: Landlock TCP bind/connect rules (ABI 4, Linux 6.7).
    LANDLOCK_NET = "landlock-net"
    #: Landlock signal and abstract-unix-socket scoping (ABI 6, Linux 6.12).
    LANDLOCK_SCOPE = "landlock-scope"
    #: Landlock control of truncate(2) (ABI 3, Linux 6.2).
    LANDLOCK_TRUNCATE = "landlock-truncate"
    #: Landlock control of renames/links across directories (ABI 2, Linux 5.19).
    LANDLOCK_REFER = "landlock-refer"
    #: Landlock control of device ioctls (ABI 5, Linux 6.10).
    LANDLOCK_IOCTL_DEV = "landlock-ioctl-dev"
    SECCOMP = "seccomp"
    #: seccomp user notification: the supervisor and the syscall handlers.
    SUPERVISOR = "supervisor"
    NETWORK_NAMESPACE = "network-namespace"
    #: The sandbox's own process group, which lets a kill reach every
    #: descendant.  Refused inside another sandbox (setpgid is denied there).
    PROCESS_GROUP = "process-group"
    #: The child's ``uid``/``gid``: set by a privileged caller, mapped in a
    #: user namespace by any other.  Refused where user namespaces are.
    IDENTITY = "identity"
    #: ``max_memory``, ``cpu_time`` and ``max_cpu``: the watcher on the
    #: caller's event loop (:attr:`Protection.SAMPLED`), or ``max_memory``
    #: alone in a memory cgroup of the run's own, held by the kernel
    #: (``memory_mechanism="cgroup"``: ACTIVE; see docs/limits.md).
    RESOURCE_LIMITS = "resource-limits"
    #: The copy-on-write workspace (``workdir``) as an overlay in a mount
    #: namespace of the child's own.  Never waived: without it the child
    #: would write ``workdir`` itself.
    WORKSPACE_OVERLAY = "workspace-overlay"
    #: Host names of ``net_allow`` pinned to the addresses checked: a
    #: synthetic ``/etc/hosts`` in a mount namespace of the child's own
    #: (a user namespace too, for a caller without CAP_SYS_ADMIN).
    PINNED_NAMES = "pinned-names"
    #: The copy-on-write workspace as a private copy of ``workdir`` (a
    #: snapshot) and a diff: where the overlay is refused, or chosen with
    #: ``workdir_mechanism="snapshot"`` (docs/workspaces.md).
    WORKSPACE_SNAPSHOT = "workspace-snapshot"


class Protection(enum.Enum):
    """What became of one subsystem for one run."""

    ACTIVE = "active"
    DEGRADED = "degraded"
    NOT_REQUESTED = "not-requested"
    #: Enforced by looking from the caller's event loop at short intervals
    #: rather than by the kernel: a limit may be overshot by what the
    #: sandbox takes in one interval (:attr:`Subsystem.RESOURCE_LIMITS`).
    SAMPLED = "sampled"


class ExitReason(enum.Enum):
    """Why a sandboxed command ended."""

    EXITED = "exited"
    SIGNALED = "signaled"
    TIMEOUT = "timeout"
    KILLED = "killed"
    MEMORY_LIMIT = "memory-limit"
    #: Stopped for using more than ``cpu_time`` seconds of CPU in all.
    CPU_LIMIT = "cpu-limit"
    #: Stopped for writing more than ``max_output`` bytes to a captured
    #: stream, with ``on_output_limit="kill"``.
    OUTPUT_LIMIT = "output-limit"
    #: Stopped for changes holding more than ``max_disk`` in a snapshot
    #: workspace (sampled: an overlay's command gets ENOSPC instead).
    DISK_LIMIT = "disk-limit"
