"""``Sandbox``: the policy as frozen, validated data."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ._cgroup import check_memory_mechanism
from ._exceptions import PolicyError
from ._filespec import check_files
from ._handler import Handler
from ._limits import check_limits
from ._netspec import NetRule, bind_ports, check_network, parse_rule
from ._network import check_stack
from ._refusal import UnavailableHandler, strict
from ._system_paths import system_readable
from ._validate import (
    StdioTarget,
    check_cwd,
    check_env,
    check_handlers,
    check_name,
    check_paths,
    check_positive,
    check_syscall_names,
    parse_size,
    show,
)
from ._workdir import check_mechanism, check_workspace

if TYPE_CHECKING:
    from ._pipeline import Stage
    from ._process import SandboxedProcess
    from ._result import Result

#: What programs need from the system to start and work, and no secrets:
#: library and program trees, and the parts of ``/etc`` that the loader, the C
#: library, TLS and common runtimes read (never shadow, sudoers, ssh keys or
#: ``ssl/private``; see ``_system_paths.py``).  A starting point for
#: ``fs_readable``; only entries that exist on this host.
SYSTEM_READABLE: tuple[str, ...] = system_readable()

@dataclass(frozen=True, slots=True, kw_only=True, weakref_slot=True, eq=False)
class Sandbox:
    """A confinement policy; one instance may run any number of commands.

    Every field is validated on construction and an invalid value raises
    :class:`PolicyError` before any process exists.  The Landlock ruleset
    and the BPF program derived from the policy are built once, on first
    use, and reused (held by the Sandbox's owner in ``_plan.py``, not here).
    """

    fs_readable: Sequence[str | os.PathLike[str]] = ()
    fs_writable: Sequence[str | os.PathLike[str]] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: True (the default): the child gets only ``PATH``, ``HOME``, ``LANG``
    #: and ``TERM`` from the caller (those that are set) plus :attr:`env`.
    #: False hands over the caller's whole environment, with every API key
    #: and token in it.
    clean_env: bool = True
    cwd: str | os.PathLike[str] | None = None
    net_allow: Sequence[str] = ()
    net_allow_bind: Sequence[int | str] = ()
    #: Let the child create unix sockets with socket(2).  Off by default:
    #: Landlock up to ABI 7 does not control connecting to a *pathname* unix
    #: socket, so this lets the child reach any socket on the host whose path
    #: it can name.  socketpair(2) is always allowed.
    allow_unix_sockets: bool = False
    #: Let the child use SysV IPC (shared memory, semaphores, message queues)
    #: and POSIX message queues.  Off by default: they have no namespace here
    #: and no Landlock rule, so the child could read, take or destroy objects
    #: of any process on the host with the same uid.
    allow_sysv_ipc: bool = False
    #: Let the child control the terminal it inherits: become its foreground
    #: process group (TIOCSPGRP), set its window size (TIOCSWINSZ, which
    #: signals the foreground group) and the like.  For an interactive shell
    #: run from ``asyncsandlock run`` on a terminal; off by default.
    interactive: bool = False
    max_open_files: int | None = None
    max_processes: int | None = None
    max_memory: int | str | None = None
    extra_deny_syscalls: Sequence[str] = ()
    handlers: Sequence[Handler] = ()
    on_unavailable: UnavailableHandler = strict
    # -- files and identity (docs/files.md) --
    #: Paths neither readable nor writable, even inside granted trees;
    #: enforced by Landlock (see _holes.py).  They need not exist.
    fs_denied: Sequence[str | os.PathLike[str]] = ()
    #: The child's user and group ids, with no supplementary groups.  A
    #: root caller sets them in the child (setresuid); any other caller maps
    #: them in a user namespace.  ``gid`` defaults to ``uid``.
    uid: int | None = None
    gid: int | None = None
    #: No core dumps: a hard RLIMIT_CORE of 0, which the child cannot raise.
    no_coredump: bool = False
    # -- Resource limits (issue 11, branch limits), all for the whole sandbox;
    # validated by _limits.check_limits; see docs/limits.md.  ``max_memory``
    # above is one of them: resident memory of all its processes together.
    #: Percent of one core (25: a quarter; 200: two cores' worth).
    max_cpu: int | float | None = None
    #: Seconds of CPU in all; beyond it: ``ExitReason.CPU_LIMIT``.
    cpu_time: int | float | None = None
    #: The CPUs the sandbox may run on, e.g. ``(0, 1)``.
    cpu_cores: Sequence[int] | None = None
    #: Threads of all its processes together (a process is one thread).
    max_threads: int | None = None
    #: Bytes captured per stream by ``run()`` and pipelines (``"1M"``).
    max_output: int | str | None = None
    #: ``"truncate"``: drop what is beyond ``max_output`` (the child runs on);
    #: ``"kill"``: stop the sandbox with ``ExitReason.OUTPUT_LIMIT``.
    on_output_limit: str = "truncate"
    # -- network namespaces (issue 10, netns; see docs/network-namespaces.md) --
    #: ``"host"``: the caller's network, filtered by the rules; ``"loopback"``:
    #: a private network stack with only ``lo`` (its own port space, no route
    #: out); ``"uplink"``: a private stack joined to the caller's by a veth pair.
    network: str = "host"
    #: Sandbox TCP ports the caller can reach (``network`` other than
    #: ``"host"``): see ``SandboxedProcess.network``.
    publish: Sequence[int] = ()
    # -- copy-on-write workspace (issue 12, docs/workspaces.md) --
    #: A directory the command reads and writes as usual (it is writable for
    #: it) while its changes go to a private layer; the Result lists them.
    workdir: str | os.PathLike[str] | None = None
    #: ``"commit"``: the changes go into workdir if the command succeeded and
    #: are dropped otherwise; ``"abort"``: always dropped; ``"keep"``: the
    #: caller decides with ``Result.workspace``.
    on_exit: str = "commit"
    #: Bytes the layer may hold (``"1G"``); beyond it the command gets ENOSPC.
    max_disk: int | str | None = None
    #: A label for logs and reprs, and the hostname the child is to see:
    #: 1 to 64 ASCII letters, digits, ``-``, ``.`` or ``_``, starting with a
    #: letter or digit.
    # -- network rules (issue 10, netrules) --
    #: Destinations that stay closed even where ``net_allow`` opens them:
    #: literal addresses and CIDRs (``"10.0.0.0/8"``, ``"[::1]:22"``,
    #: ``"udp://192.0.2.1:53"``); a deny rule wins.
    net_deny: Sequence[str] = ()
    #: TCP ports the child may never bind, whatever ``net_allow_bind`` says.
    net_deny_bind: Sequence[int | str] = ()
    #: Pathname unix sockets the child may connect or send to (sockets, or
    #: directories holding them), checked by the network guard: Landlock up
    #: to ABI 7 does not govern them.  ``allow_unix_sockets`` still opens all.
    unix_allow: Sequence[str | os.PathLike[str]] = ()
    # -- workspace mechanism (issue 12, ws3; docs/workspaces.md) --
    #: How the workspace's layer is made: ``"auto"`` (an overlay where the
    #: host allows one, else a snapshot), ``"overlay"`` (refused rather than
    #: a snapshot) or ``"snapshot"`` (a private copy of workdir and a diff).
    workdir_mechanism: str = "auto"
    # -- max_memory in a cgroup (issue 11, cgmem; docs/limits.md) --
    #: How ``max_memory`` is enforced: ``"sampled"`` (the watcher, on the
    #: caller's loop) or ``"cgroup"`` (by the kernel, in a child group of the
    #: caller's own memory cgroup where it can make one; else sampled, and
    #: ``protections`` says so).
    memory_mechanism: str = "sampled"
    name: str | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "fs_readable", check_paths("fs_readable", self.fs_readable))
        put(self, "fs_writable", check_paths("fs_writable", self.fs_writable))
        put(self, "env", check_env("env", self.env))
        for flag in ("clean_env", "allow_unix_sockets", "allow_sysv_ipc", "interactive"):
            if not isinstance(getattr(self, flag), bool):
                raise PolicyError(flag, f"{show(getattr(self, flag))} must be True or False")
        put(self, "cwd", check_cwd("cwd", self.cwd))
        allow, allow_bind, deny, deny_bind = check_network(
            self.net_allow, self.net_allow_bind, self.net_deny, self.net_deny_bind)
        put(self, "net_allow", allow)
        put(self, "net_allow_bind", allow_bind)
        put(self, "net_deny", deny)
        put(self, "net_deny_bind", deny_bind)
        put(self, "unix_allow", check_paths("unix_allow", self.unix_allow))
        put(self, "max_open_files", check_positive("max_open_files", self.max_open_files))
        put(self, "max_processes", check_positive("max_processes", self.max_processes))
        if self.max_memory is not None:
            put(self, "max_memory", parse_size("max_memory", self.max_memory))
        put(self, "extra_deny_syscalls",
            check_syscall_names("extra_deny_syscalls", self.extra_deny_syscalls))
        put(self, "handlers",
            check_handlers("handlers", self.handlers, deny=self.extra_deny_syscalls))
        if not callable(self.on_unavailable):
            raise PolicyError("on_unavailable", f"{show(self.on_unavailable)} is not callable")
        check_limits(self, put)
        put(self, "memory_mechanism", check_memory_mechanism(self.memory_mechanism))
        put(self, "name", check_name("name", self.name))
        files = check_files(self.fs_denied, self.uid, self.gid, self.no_coredump)
        for key in files.__slots__:
            put(self, key, getattr(files, key))
        network, publish = check_stack(self.network, self.publish)
        put(self, "network", network)
        put(self, "publish", publish)
        workspace = check_workspace(self.workdir, self.on_exit, self.max_disk,
                                    getattr(self, "fs_denied", ()))
        put(self, "workdir", workspace[0])
        put(self, "on_exit", workspace[1])
        put(self, "max_disk", workspace[2])
        check_mechanism(self.workdir, self.workdir_mechanism)

    # -- profiles (issue 13) ----------------------------------------------
    @classmethod
    def from_profile(cls, name_or_path: str | os.PathLike[str], **overrides: Any) -> Sandbox:
        """The policy of a built-in profile (``"untrusted-python"``, ``"shell"``,
        ``"build"``) or a TOML file, with ``overrides`` replacing its fields
        (see ``docs/profiles.md``).

        :raises PolicyError: an unknown profile, key or invalid value.
        """
        from ._profiles import load_profile

        sandbox: Sandbox = load_profile(name_or_path).sandbox(**overrides)
        return sandbox

    def net_rules(self) -> tuple[NetRule, ...]:
        """The parsed ``net_allow`` rules."""
        return tuple(parse_rule(spec, "net_allow") for spec in self.net_allow)

    def net_deny_rules(self) -> tuple[NetRule, ...]:
        """The parsed ``net_deny`` rules."""
        return tuple(parse_rule(spec, "net_deny") for spec in self.net_deny)

    def bind_ports(self) -> frozenset[int] | None:
        """The TCP ports the child may bind (0: an ephemeral one); None: every port."""
        return bind_ports(self.net_allow_bind, self.net_deny_bind)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return (f"<Sandbox{label} readable={list(self.fs_readable)} "
                f"writable={list(self.fs_writable)} net={list(self.net_allow)}>")

    async def run(self, args: Sequence[str], *, input: bytes | None = None,
                  stdin: StdioTarget = subprocess.DEVNULL, stdout: StdioTarget = subprocess.PIPE,
                  stderr: StdioTarget = subprocess.PIPE, timeout: float | None = None,
                  check: bool = False, env: Mapping[str, str] | None = None,
                  cwd: str | os.PathLike[str] | None = None, handlers: Sequence[Handler] = (),
                  extra_fds: Sequence[int] = (), dry_run: bool = False,
                  task_status: TaskStatus[SandboxedProcess] = anyio.TASK_STATUS_IGNORED
                  ) -> Result:
        """Run ``args`` in this sandbox to the end and return its :class:`Result`.

        :param input: bytes written to the command's stdin (which is then a pipe).
        :param stdin: ``DEVNULL`` by default: the caller's own stdin is never
            handed over unless asked for (``None`` inherits it).
        :param stdout: ``PIPE`` (captured), ``DEVNULL``, an fd, a file or ``None``.
        :param stderr: as ``stdout``, or ``STDOUT``.
        :param timeout: seconds; on expiry the whole sandbox is killed and
            reaped and the Result says ``reason=ExitReason.TIMEOUT``.
        :param check: raise :class:`SandboxedProcessError` unless it succeeded.
        :param env: added to the policy's environment for this run.
        :param cwd: the working directory for this run.
        :param handlers: syscall handlers for this run, after the policy's.
        :param extra_fds: fds the command gets as 3, 4, ...
        :param dry_run: with a ``workdir``: list the changes in
            ``Result.changes`` and drop them, whatever ``on_exit`` says.
        :raises PolicyError: a bad argument, before any process exists.
        :raises SpawnError: a confinement step or ``execve`` failed, with the
            step and the real errno.
        :raises ConfinementUnavailable: the host refused a subsystem and
            ``on_unavailable`` did not allow it.

        Cancellation kills and reaps the sandbox, then propagates.  With
        ``await tg.start(sandbox.run, args)`` the task is started once the
        command is confined and exec'd, with its :class:`SandboxedProcess`.
        """
        from ._run import run

        return await run(self, args, input=input, stdin=stdin, stdout=stdout, stderr=stderr,
                         timeout=timeout, check=check, env=env, cwd=cwd, handlers=handlers,
                         extra_fds=extra_fds, dry_run=dry_run, task_status=task_status)

    async def open(self, args: Sequence[str], *, stdin: StdioTarget = subprocess.PIPE,
                   stdout: StdioTarget = subprocess.PIPE, stderr: StdioTarget = subprocess.PIPE,
                   env: Mapping[str, str] | None = None,
                   cwd: str | os.PathLike[str] | None = None, handlers: Sequence[Handler] = (),
                   extra_fds: Sequence[int] = ()) -> SandboxedProcess:
        """Start ``args`` in this sandbox and return the running
        :class:`SandboxedProcess` (an async context manager: leaving it
        closes stdin, waits for the sandbox and closes the other streams).

        The arguments are those of :meth:`run`; stdio defaults to pipes.
        With a ``workdir``, the process lists its changes and applies
        ``on_exit`` when it is waited for (``changes``, ``workspace``; see
        docs/workspaces.md).
        """
        from ._run import open_process

        return await open_process(self, args, stdin=stdin, stdout=stdout, stderr=stderr,
                                  env=env, cwd=cwd, handlers=handlers, extra_fds=extra_fds)

    def cmd(self, args: Sequence[str], **kwargs: Any) -> Stage:
        """A pipeline stage that runs ``args`` in this sandbox."""
        from ._pipeline import Stage

        return Stage._create(self, args, kwargs)
