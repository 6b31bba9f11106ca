"""What the filter does with each syscall, decided one name at a time.

Every name of the x86_64 and aarch64 tables (``_syscalls.py``) has a
:class:`Rule`, a group (after systemd's ``SystemCallFilter=`` sets) and a
one-line reason; ``docs/syscalls.md`` lists them with the action the
compiled filter takes under the README's policy, and a test keeps the two in
step.  A number that no table names (a syscall newer than this table) is
ENOSYS: a program that knows it is new falls back, and nothing unreviewed
runs.

The argument checks themselves are assembled in ``_bpf.py``; the reasons
here say what they check.  Where the verdict was not obvious the sources
consulted were Chromium's seccomp-bpf baseline policy, Docker's default
profile and systemd's filter groups; the decisions are ours.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NamedTuple


class Rule(enum.Enum):
    """The filter's verdict on a syscall, before the policy's options."""

    #: Allowed whatever its arguments (and so cached by the kernel).
    ALLOW = "allow"
    #: Allowed unless an argument check in ``_bpf.py`` refuses it.
    CHECKED = "checked"
    #: Harmless on the sandbox's own objects only, which BPF cannot see:
    #: sent to a built-in guard when the policy has one (``FilterSpec.guarded``),
    #: else EPERM.  Some have argument checks first (self is always allowed).
    GUARDED = "guarded"
    #: SysV IPC and POSIX message queues: EPERM unless ``allow_sysv_ipc``.
    IPC = "ipc"
    #: Refused with EPERM.
    EPERM = "EPERM"
    #: Refused with ENOSYS: callers take it for "this kernel is too old" and
    #: fall back to a call the filter can check, or the kernel lacks it anyway.
    ENOSYS = "ENOSYS"


class Decision(NamedTuple):
    group: str
    rule: Rule
    why: str


_A, _C, _G, _I, _P, _N = Rule.ALLOW, Rule.CHECKED, Rule.GUARDED, Rule.IPC, Rule.EPERM, Rule.ENOSYS

#: group -> {name: (rule, why)}.  Every name appears once.
_GROUPS: Final[dict[str, dict[str, tuple[Rule, str]]]] = {
    "@basic-io": {
        **{n: (_A, "I/O on an fd the sandbox already holds") for n in (
            "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
            "preadv2", "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3")},
        **{n: (_A, "moves data between fds the sandbox holds") for n in (
            "sendfile", "splice", "tee", "vmsplice", "copy_file_range")},
        "readahead": (_A, "page-cache hint on an open fd"),
        "fadvise64": (_A, "page-cache hint on an open fd"),
        "ioctl": (_C, "EPERM for TIOCSTI/TIOCLINUX/TIOCSETD, for taking over the terminal "
                      "unless interactive, and for inode flags and fs-verity"),
    },
    "@file-system": {
        "open": (_C, "Landlock checks the path; EPERM for a setuid/setgid mode with O_CREAT"),
        "openat": (_C, "Landlock checks the path; EPERM for a setuid/setgid mode with O_CREAT"),
        "creat": (_C, "Landlock checks the path; EPERM for a setuid/setgid mode"),
        "openat2": (_N, "its mode is in a struct BPF cannot read: callers fall back to openat"),
        "mknod": (_C, "Landlock refuses device nodes; EPERM for a setuid/setgid mode"),
        "mknodat": (_C, "Landlock refuses device nodes; EPERM for a setuid/setgid mode"),
        **{n: (_A, "path lookups and reads of metadata; Landlock governs what they open") for n in (
            "access", "faccessat", "faccessat2", "stat", "lstat", "fstat", "newfstatat", "statx",
            "statfs", "fstatfs", "readlink", "readlinkat", "getcwd", "chdir", "fchdir",
            "getdents", "getdents64")},
        **{n: (_A, "reads extended attributes or file flags (not governed by Landlock, as stat)")
           for n in ("getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr",
                     "flistxattr", "getxattrat", "listxattrat", "file_getattr")},
        **{n: (_A, "changes the tree: Landlock's write rights decide where") for n in (
            "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat",
            "symlink", "symlinkat", "unlink", "unlinkat", "truncate", "ftruncate", "fallocate")},
        "fcntl": (_A, "fd flags and locks; F_SETOWN signals are scoped by Landlock"),
        "flock": (_A, "advisory lock on an fd the sandbox opened"),
        "umask": (_A, "the process's own umask"),
        "memfd_create": (_A, "an anonymous file of the sandbox's own"),
        "inotify_init": (_A, "an empty inotify instance"),
        "inotify_init1": (_A, "an empty inotify instance"),
        "inotify_rm_watch": (_A, "removes one of the sandbox's own watches"),
        "inotify_add_watch": (_G, "a watch reports other processes' accesses: readable paths only "
                                  "(WatchGuard)"),
        "fanotify_init": (_P, "watches the whole mount or filesystem, other processes included"),
        "fanotify_mark": (_P, "no use without fanotify_init"),
        "name_to_handle_at": (_P, "file handles bypass path checks"),
        "open_by_handle_at": (_P, "opens by handle, bypassing Landlock's path checks"),
    },
    "@file-metadata": {
        **{n: (_G, "EPERM for setuid/setgid bits; elsewhere the mode of files outside "
                   "fs_writable is not the sandbox's (MetadataGuard)")
           for n in ("chmod", "fchmod", "fchmodat", "fchmodat2")},
        **{n: (_G, "DAC alone decides, and a root child owns every root file: fs_writable only "
                   "(MetadataGuard)")
           for n in ("chown", "fchown", "lchown", "fchownat", "utime", "utimes", "futimesat",
                     "utimensat", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
                     "lremovexattr", "fremovexattr", "setxattrat", "removexattrat")},
        "file_setattr": (_P, "sets inode flags like FS_IOC_FSSETXATTR on any owned file; no guard "
                             "knows it yet"),
    },
    "@sync": {
        **{n: (_A, "flushes data the sandbox may write anyway") for n in (
            "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "msync")},
    },
    "@io-event": {
        **{n: (_A, "waits on fds the sandbox holds") for n in (
            "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
            "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2")},
    },
    "@aio": {
        **{n: (_A, "POSIX AIO contexts of the process's own") for n in (
            "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents")},
        **{n: (_P, "io_uring runs syscalls the filter never sees, and is a large attack surface")
           for n in ("io_uring_setup", "io_uring_enter", "io_uring_register")},
    },
    "@network-io": {
        "socket": (_C, "TCP (Landlock governs it), UDP and ICMP ping sockets if allowed, AF_UNIX "
                       "if allowed; no raw, packet, netlink..."),
        "socketpair": (_C, "AF_UNIX only: an anonymous, already connected pair"),
        "connect": (_C, "Landlock governs TCP connect; with address, UDP or ICMP rules the "
                        "network guard connects on the child's behalf (NetGuard)"),
        "bind": (_A, "Landlock governs TCP bind (net_allow_bind)"),
        "listen": (_G, "listen() on an unbound socket autobinds a port Landlock never saw "
                       "(ListenGuard)"),
        **{n: (_A, "on a socket the sandbox holds") for n in (
            "accept", "accept4", "getsockname", "getpeername", "recvfrom", "recvmsg", "recvmmsg",
            "shutdown", "getsockopt")},
        **{n: (_C, "EPERM with MSG_FASTOPEN (connects without Landlock's connect check) unless "
                   "net_allow has '*'; with UDP or ICMP address rules a send with an address "
                   "goes to the network guard (SendGuard)")
           for n in ("sendto", "sendmsg", "sendmmsg")},
        "setsockopt": (_C, "EPERM for TCP_FASTOPEN_CONNECT unless net_allow has '*'"),
    },
    "@ipc": {
        "pipe": (_A, "an anonymous pipe"),
        "pipe2": (_A, "an anonymous pipe"),
        **{n: (_I, "SysV IPC has no namespace here and no Landlock rule: objects of any process "
                   "with the same uid")
           for n in ("shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop",
                     "semctl", "msgget", "msgsnd", "msgrcv", "msgctl")},
        **{n: (_I, "POSIX message queues live outside the sandbox and outlive it")
           for n in ("mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
                     "mq_getsetattr")},
    },
    "@memory": {
        **{n: (_A, "the process's own address space") for n in (
            "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore",
            "remap_file_pages", "mlock", "mlock2", "munlock", "mlockall", "munlockall", "mbind",
            "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node", "membarrier",
            "pkey_mprotect", "pkey_alloc", "pkey_free", "mseal", "map_shadow_stack",
            "memfd_secret", "cachestat")},
        "migrate_pages": (_C, "pid 0 (self) only: another process's pages are not ours"),
        "move_pages": (_C, "pid 0 (self) only: another process's pages are not ours"),
        "process_madvise": (_P, "advises on another process's memory"),
        "process_mrelease": (_P, "reaps another process's memory"),
        "userfaultfd": (_P, "a classic aid to kernel exploits; no use to a sandboxed program"),
    },
    "@process": {
        "clone": (_C, "threads and processes only: EPERM for CLONE_PARENT, CLONE_PTRACE, "
                      "CLONE_UNTRACED and namespaces"),
        "clone3": (_N, "BPF cannot read its flags: libc falls back to clone"),
        **{n: (_A, "a new process, confined like its parent") for n in ("fork", "vfork")},
        **{n: (_A, "runs a program: Landlock's execute right decides which") for n in (
            "execve", "execveat")},
        **{n: (_A, "ends the caller") for n in ("exit", "exit_group")},
        **{n: (_A, "waits for the sandbox's own children") for n in ("wait4", "waitid")},
        **{n: (_A, "Landlock scopes signals to the sandbox") for n in (
            "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
            "pidfd_send_signal")},
        "pidfd_open": (_A, "a pidfd only signals (scoped) and waits"),
        "pidfd_getfd": (_P, "takes an fd from another process"),
        **{n: (_A, "identity of the process itself") for n in (
            "getpid", "gettid", "getppid", "getpgid", "getpgrp", "getsid")},
        **{n: (_P, "would leave the sandbox's process group, out of reach of its kill")
           for n in ("setpgid", "setsid")},
        "prctl": (_C, "the process's own attributes; EPERM for turning transparent huge pages "
                      "back on (PR_SET_THP_DISABLE with arg2 0 or any flag: max_memory)"),
        "arch_prctl": (_A, "the thread's own TLS and CPU state"),
        "set_tid_address": (_A, "thread bookkeeping"),
        "personality": (_C, "reading it or PER_LINUX only: no turning off ASLR"),
        "unshare": (_P, "new namespaces are a kernel attack surface and escape the confinement"),
        "setns": (_P, "joins another process's namespaces"),
        "ptrace": (_P, "reads and writes other processes"),
        "process_vm_readv": (_P, "reads another process's memory"),
        "process_vm_writev": (_P, "writes another process's memory"),
        "kcmp": (_P, "compares other processes' kernel objects"),
        "uretprobe": (_A, "the kernel's uprobe trampoline; seccomp lets it through anyway"),
        "uprobe": (_A, "the kernel's uprobe trampoline; seccomp lets it through anyway"),
    },
    "@thread": {
        **{n: (_A, "thread synchronisation on the process's own memory") for n in (
            "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
            "set_robust_list", "rseq", "sched_yield", "get_thread_area", "set_thread_area")},
        "get_robust_list": (_C, "pid 0 (self) only: another thread's list reveals its memory"),
    },
    "@signal": {
        **{n: (_A, "the process's own signal state") for n in (
            "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
            "rt_sigsuspend", "sigaltstack", "signalfd", "signalfd4", "pause", "restart_syscall")},
        "rt_sigaction": (_A, "the process's own signal actions; under max_processes a new "
                             "SIGCHLD action goes to the supervisor, which makes its handler "
                             "restart (docs/limits.md)"),
    },
    "@timer": {
        **{n: (_A, "timers of the process's own") for n in (
            "alarm", "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime",
            "timer_getoverrun", "timer_delete", "timerfd_create", "timerfd_settime",
            "timerfd_gettime")},
        **{n: (_A, "reads a clock or sleeps") for n in (
            "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
            "time")},
    },
    "@clock": {
        **{n: (_P, "sets or tunes the machine's clock") for n in (
            "settimeofday", "clock_settime", "clock_adjtime", "adjtimex")},
    },
    "@credentials": {
        **{n: (_A, "reads the process's own credentials") for n in (
            "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
            "capget")},
        **{n: (_A, "without capabilities it can only drop privileges") for n in (
            "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
            "setfsgid", "setgroups", "capset")},
    },
    "@resources": {
        **{n: (_A, "reads or sets the process's own limits and usage") for n in (
            "getrlimit", "setrlimit", "getrusage", "times")},
        **{n: (_A, "reads scheduling state (as /proc would)") for n in (
            "getpriority", "sched_getparam", "sched_getscheduler", "sched_getaffinity",
            "sched_getattr", "sched_get_priority_max", "sched_get_priority_min",
            "sched_rr_get_interval", "ioprio_get")},
        "prlimit64": (_G, "pid 0 (self) allowed; another process only if it is the sandbox's "
                          "(OwnProcessGuard)"),
        **{n: (_G, "pid 0 (self) allowed; another process only if it is the sandbox's "
                   "(OwnProcessGuard)")
           for n in ("sched_setaffinity", "sched_setscheduler", "sched_setparam",
                     "sched_setattr")},
        **{n: (_G, "who 0 (self, own group) allowed; a user's processes never; others only the "
                   "sandbox's (OwnProcessGuard)")
           for n in ("setpriority", "ioprio_set")},
    },
    "@system": {
        **{n: (_A, "harmless facts about the machine") for n in (
            "uname", "sysinfo", "getcpu")},
        "getrandom": (_A, "randomness"),
        **{n: (_P, "changes the machine's names") for n in ("sethostname", "setdomainname")},
        "syslog": (_P, "reads the kernel log"),
        "acct": (_P, "process accounting for the whole machine"),
        "vhangup": (_P, "hangs up the terminal for every process on it"),
        **{n: (_P, "disk quotas of the machine") for n in ("quotactl", "quotactl_fd")},
    },
    "@sandbox": {
        "seccomp": (_A, "adds filters; they can only narrow what this one allows"),
        **{n: (_A, "a nested Landlock domain can only narrow this one") for n in (
            "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self")},
        "lsm_get_self_attr": (_A, "reads the process's own LSM attributes"),
        "lsm_list_modules": (_A, "lists the active LSMs"),
        "lsm_set_self_attr": (_P, "changes the process's own security context; no use here"),
    },
    "@debug": {
        "perf_event_open": (_P, "kernel attack surface and a window on other processes"),
        "bpf": (_P, "kernel attack surface"),
    },
    "@keyring": {
        **{n: (_P, "kernel keyrings are shared with the user's other processes") for n in (
            "keyctl", "add_key", "request_key")},
    },
    "@mount": {
        **{n: (_P, "changes or reads the mount tree") for n in (
            "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
            "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr")},
        **{n: (_N, "lists the machine's mounts; callers fall back to /proc/self/mountinfo")
           for n in ("listmount", "statmount")},
    },
    "@module": {
        **{n: (_P, "loads kernel code") for n in (
            "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load")},
    },
    "@reboot": {
        "reboot": (_P, "the machine itself"),
        "swapon": (_P, "the machine's swap"),
        "swapoff": (_P, "the machine's swap"),
    },
    "@raw-io": {
        **{n: (_P, "I/O ports and segment tables: hardware and kernel attack surface") for n in (
            "iopl", "ioperm", "modify_ldt")},
    },
    "@obsolete": {
        **{n: (_P, "obsolete interface, no use to a modern program") for n in (
            "uselib", "ustat", "sysfs")},
        **{n: (_N, "not implemented by the kernel either") for n in (
            "_sysctl", "afs_syscall", "create_module", "epoll_ctl_old", "epoll_wait_old",
            "get_kernel_syms", "getpmsg", "putpmsg", "query_module", "security", "tuxcall",
            "vserver", "nfsservctl", "lookup_dcookie")},
    },
}


def _flatten() -> dict[str, Decision]:
    out: dict[str, Decision] = {}
    for group, members in _GROUPS.items():
        for name, (rule, why) in members.items():
            if name in out:  # pragma: no cover - a mistake in the table above
                raise AssertionError(f"{name} is in {out[name].group} and {group}")
            out[name] = Decision(group, rule, why)
    return out


#: name -> its decision.
DECISIONS: Final[Mapping[str, Decision]] = MappingProxyType(_flatten())
#: Group names in the order of the documentation.
GROUPS: Final[tuple[str, ...]] = tuple(_GROUPS)


def names(rule: Rule) -> frozenset[str]:
    """The syscalls whose decision is ``rule``."""
    return frozenset(n for n, d in DECISIONS.items() if d.rule is rule)
