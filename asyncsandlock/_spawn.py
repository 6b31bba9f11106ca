"""Plan -> one call into the C core -> (pid, pidfd, listener fd).

Everything the child touches is prepared here first; the call returns once
the child has exec'd (or failed, in which case it is reaped here and the
failing step comes back as :class:`SpawnError`).  Nothing here can wait on
the child's goodwill: when the C call returns, the child has exec'd or is
exiting, and the call has read its channel: its report (sent before the
child's exit) and its listener (sent before exec) were there, or never will
be.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._core import ffi, lib
from ._exceptions import PolicyError, SpawnError
from ._fd import Cleanup
from ._identity import fill_request
from ._kernel._sys import syscall
from ._plan import Compiled, Plan, TemplateKey
from ._types import Subsystem

#: enum asl_step in csrc/spawn.h: the child's steps by number, in run order.
STEPS = dict(sorted((getattr(lib, name), name[len("ASL_STEP_"):].lower())
                   for name in dir(lib) if name.startswith("ASL_STEP_")))
#: The most fds a child can be given (its fds 0 .. MAX_FDS-1).
MAX_FDS: int = lib.ASL_MAX_FDS
#: A source in :func:`spawn`'s ``fds``: /dev/null, opened by the child itself
#: (one system call there, where the parent would open and close it).
DEVNULL_FD: int = lib.ASL_FD_DEVNULL
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
#: Once the supervisor has received a notification, only a fatal signal ends
#: the wait for its answer (Linux 5.19; the child drops it on EINVAL, step
#: seccomp in csrc/spawn.c).  Without it a signal ends a trapped call at any
#: time until the answer: a fork with EINTR, which fork never returns
#: (docs/limits.md, "Forks and signals"); with it, only before the RECV.
_SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
_OPEN_TREE_CLONE = 1


@dataclass(frozen=True, slots=True)
class Spawned:
    """A child that has exec'd; the caller owns both fds."""

    pid: int
    pidfd: int
    listener: int | None
    own_group: bool


class WorkspaceSpawn(NamedTuple):
    """A copy-on-write workspace for :func:`spawn` (``_workspace.py``)."""

    #: Where the overlay goes, in the child's own mount namespace; "" for a
    #: snapshot (``_snapshot.py``): nothing to mount, only ``ruleset``.
    path: str
    #: The run's own Landlock ruleset (the policy's rules), or -1.
    ruleset: int
    #: The Landlock rights the child grants on the overlay's root (0: none).
    access: int
    #: ``ASL_WORKSPACE_ATTACH``: the detached overlay the parent made.
    overlay: int = -1
    #: ``ASL_WORKSPACE_USERNS`` (``sock`` >= 0): the child builds it; the
    #: workdir's path escaped, the tmpfs's size, the overlay root's mode, and
    #: our socket's other end, which gets the tmpfs and the overlay.
    lower_escaped: str = ""
    size: int | None = None
    root_mode: int = 0
    sock: int = -1


class HostsSpawn(NamedTuple):
    """Pinned names for :func:`spawn` (``_pinned.py``)."""

    #: ``ASL_HOSTS_ATTACH`` (the parent made the file) or ``ASL_HOSTS_USERNS``.
    mode: int
    #: The Sandbox's detached tmpfs holding ``hosts``, whose file a clone of
    #: is attached: the parent's (``ASL_HOSTS_ATTACH``), or one an earlier
    #: child wrote and sent (-1: none yet).  The Sandbox's: not closed with
    #: the run.
    mount: int
    #: The run's own Landlock ruleset, or -1.
    ruleset: int
    #: ``ASL_HOSTS_USERNS``: the file's text.
    text: bytes = b""
    #: The Landlock rights the child grants on the file, in the run's own
    #: ruleset (``ruleset``, or the workspace's); 0: none.
    access: int = 0
    #: ``ASL_HOSTS_USERNS`` without a tmpfs yet: the channel the child sends
    #: the one it makes on, its end and ours.
    sock: int = -1
    ours: int = -1

    def fds(self) -> list[int]:
        """The run's fds given to the child, closed once it is spawned."""
        return [fd for fd in (self.ruleset, self.sock) if fd >= 0]


def _hosts_request(req: Any, hosts: HostsSpawn, floor: int,
                   child_ends: Cleanup) -> list[Any]:
    """Fill ``req``'s pinned-names fields; returns the buffers it points into."""
    req.hosts_access = hosts.access
    if hosts.mode == lib.ASL_HOSTS_ATTACH:  # a clone of the file: a retried spawn gets its own
        clone = syscall("open_tree", hosts.mount, ffi.new("char[]", b"hosts"),
                        _OPEN_TREE_CLONE | os.O_CLOEXEC)
        child_ends.callback(os.close, clone)
        req.hosts_fd = _above(clone, floor, child_ends)
        return []
    req.hosts_mode = lib.ASL_HOSTS_USERNS
    if hosts.mount >= 0:
        req.hosts_fd = _above(hosts.mount, floor, child_ends)
    if hosts.sock >= 0:
        req.hosts_sock = _above(hosts.sock, floor, child_ends)
    text = ffi.from_buffer(hosts.text)
    req.hosts_text, req.hosts_len = text, len(hosts.text)
    if req.identity == lib.ASL_IDENTITY_USERNS:  # one user namespace for both
        req.hosts_uid_map, req.hosts_gid_map = req.uid_map, req.gid_map
        return [text]
    # Each id to itself: ours, or those the child has already taken with
    # setresuid (csrc/spawn.c, hosts_late).
    uid, gid = ((req.uid, req.gid) if req.identity == lib.ASL_IDENTITY_SET
                else (os.geteuid(), os.getegid()))
    maps = [ffi.new("char[]", f"{uid} {uid} 1".encode()),
            ffi.new("char[]", f"{gid} {gid} 1".encode())]
    req.hosts_uid_map, req.hosts_gid_map = maps
    return [text, *maps]


def _workspace_request(req: Any, ws: WorkspaceSpawn, floor: int,
                       child_ends: Cleanup) -> list[Any]:
    """Fill ``req``'s workspace fields; returns the buffers it points into."""
    keep = [ffi.new("char[]", os.fsencode(ws.path))]
    req.workspace_path = keep[0]
    req.workspace_access = ws.access
    if ws.sock < 0:
        req.workspace_mode = lib.ASL_WORKSPACE_ATTACH
        req.workspace_fd = _above(ws.overlay, floor, child_ends)
        return keep
    req.workspace_mode = lib.ASL_WORKSPACE_USERNS
    req.workspace_sock = _above(ws.sock, floor, child_ends)
    req.workspace_root_mode = ws.root_mode
    texts = [os.fsencode(ws.lower_escaped), f"{os.geteuid()} {os.geteuid()} 1".encode(),
             f"{os.getegid()} {os.getegid()} 1".encode()]
    if ws.size is not None:
        texts.append(str(ws.size).encode())
    cells = [ffi.new("char[]", text) for text in texts]
    req.workspace_lower, req.workspace_uid_map, req.workspace_gid_map = cells[:3]
    req.workspace_size = cells[3] if ws.size is not None else ffi.NULL
    return keep + cells


def check_fd_count(nfds: int) -> None:
    """A :class:`PolicyError` naming ``extra_fds`` if a child would get more
    than :data:`MAX_FDS` fds (its three stdio fds included)."""
    if nfds > MAX_FDS:
        raise PolicyError("extra_fds", f"{nfds - 3} fds given; a sandbox takes at most "
                                       f"{MAX_FDS - 3} beside stdin, stdout and stderr")


def resolve_executable(name: str, env: Mapping[str, str], cwd: str | None) -> tuple[str, ...]:
    """The paths execvp would try for ``name``, in order, for the child to
    try in turn *inside* the sandbox: what the caller could execute says
    nothing of what the sandbox can.

    Raises a :class:`SpawnError` that is a :class:`FileNotFoundError`
    naming the command when no candidate exists at all.
    """
    if not name:
        raise SpawnError(errno.ENOENT, "empty command name", step="execve", filename=name)
    found = tuple(_candidates(name, env, cwd))
    if not found:
        raise SpawnError(errno.ENOENT, "command not found", step="execve", filename=name)
    return found


def _candidates(name: str, env: Mapping[str, str], cwd: str | None) -> Iterator[str]:
    """The paths execvp would try for ``name``, in order, made as they are
    tried; those that do not exist at all are left out."""
    if "/" in name:
        # The usual case (absolute): no getcwd() needed.
        path = name if name.startswith("/") else os.path.join(cwd or os.getcwd(), name)
        if os.access(path, os.F_OK):
            yield path
        return
    base = cwd
    for entry in env.get("PATH", os.defpath).split(":"):
        directory = entry
        if not entry.startswith("/"):
            base = base or os.getcwd()
            directory = os.path.join(base, entry or ".")
        candidate = directory + name if directory.endswith("/") else f"{directory}/{name}"
        # The child sees the same names (Landlock governs access, not lookup),
        # so a name missing here would be ENOENT there: leave it out.  Most
        # entries miss, and access() says so without the exception that a
        # failing stat() costs.
        if os.access(candidate, os.F_OK):
            yield candidate


@dataclass(frozen=True, slots=True)
class _Template:
    """A request with the fields a plan decides filled in (the filter, the
    rlimits, the key...), copied into each request of that plan."""

    req: Any
    supervised: bool
    #: The arrays ``req`` points into.
    arrays: tuple[Any, ...]


def _template(plan: Plan, notify: frozenset[str], self_trapped: frozenset[str],
              templates: dict[TemplateKey, object] | None) -> _Template:
    key = (notify, self_trapped, plan.degraded)
    found = templates.get(key) if templates is not None else None
    if isinstance(found, _Template):
        return found
    req = ffi.new("struct asl_spawn_req *")
    limits = ffi.new("struct asl_rlimit[]", list(plan.rlimits) or 1)
    req.rlimits, req.nrlimits = limits, len(plan.rlimits)
    prog = plan.filter_for(notify, self_trapped)
    arrays: tuple[Any, ...] = (limits,)
    if prog is not None:
        prog_c = ffi.from_buffer(prog)
        arrays += (prog_c,)
        req.filter, req.filter_len = prog_c, len(prog) // 8
    req.key = list(plan.key)
    req.keep_caps = plan.keep_caps
    req.own_group = int(Subsystem.PROCESS_GROUP not in plan.degraded)
    req.thp_disable = int(plan.thp_off)  # max_memory (issue 11): see _limits.huge_pages_off
    req.cgroup_procs_fd = -1  # max_memory in a cgroup: set per spawn (_cgroup.py)
    if plan.cpus:  # cpu_cores (issue 11): the child binds itself, step cpus
        words = max(plan.cpus) // 64 + 1
        mask = [0] * words
        for cpu in plan.cpus:
            mask[cpu // 64] |= 1 << (cpu % 64)
        cpus = ffi.new("uint64_t[]", mask)
        arrays += (cpus,)
        req.cpus, req.cpus_words = cpus, words
    arrays += fill_request(req, None if Subsystem.IDENTITY in plan.degraded else plan.identity)
    arrays += _net_mode(req, plan)
    supervised = prog is not None and bool(notify)
    req.seccomp_flags = (_SECCOMP_FILTER_FLAG_NEW_LISTENER | _SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
                         if supervised else 0)
    template = _Template(req, supervised, arrays)
    if templates is not None:
        templates[key] = template
    return template


def _net_mode(req: Any, plan: Plan) -> tuple[Any, ...]:
    """The network step of ``plan``'s children (network namespaces, issue 10);
    returns the arrays the request points into.  ``ASL_NET_JOIN`` is set per
    spawn, with the namespace the parent made (``spawn(netns_fd=...)``)."""
    mode = plan.net_mode
    own = Subsystem.NETWORK_NAMESPACE not in plan.degraded and mode != lib.ASL_NET_HOST
    if not own or mode == lib.ASL_NET_JOIN:
        mode = lib.ASL_NET_HOST
    req.net_mode = mode
    start: tuple[Any, ...] = ()
    if own and plan.port_start is not None:  # the child writes it only in a network of its own
        start = (ffi.new("char[]", str(plan.port_start).encode()),)
        req.port_start = start[0]
    if mode != lib.ASL_NET_USERNS:
        return start
    # Each id to itself: ours, or, where the child has already taken the
    # policy's with setresuid (csrc/spawn.c, identity_first), those.
    uid, gid = ((req.uid, req.gid) if req.identity == lib.ASL_IDENTITY_SET
                else (os.geteuid(), os.getegid()))
    uid_map = ffi.new("char[]", f"{uid} {uid} 1".encode())
    gid_map = ffi.new("char[]", f"{gid} {gid} 1".encode())
    req.net_uid_map, req.net_gid_map = uid_map, gid_map
    return (*start, uid_map, gid_map)


class _CommandLine(NamedTuple):
    """A command line laid out for the C request: one char buffer, one
    pointer array into it (the candidates, argv, NULL, envp, NULL)."""

    buf: Any
    ptrs: Any
    argv: Any
    envp: Any
    cwd: Any


#: Command lines up to this size are kept (``_laid_out``): a program runs
#: the same few again and again, and laying one out costs ~20 us on a
#: spawn's path (cold, right after the previous child's exec).
_KEPT_SIZE = 4096


def _lay_out(paths: tuple[str, ...], args: tuple[bytes, ...],
             env: tuple[tuple[str, str], ...] | None, cwd: str | None) -> _CommandLine:
    envs = [os.fsencode(f"{k}={v}") for k, v in env] if env is not None else []
    items = [*map(os.fsencode, paths), *args, *envs]
    if cwd is not None:
        items.append(os.fsencode(cwd))
    buf = ffi.new("char[]", b"\0".join(items))  # cffi adds the last NUL
    cells = []
    offset = 0
    for item in items:
        cells.append(buf + offset)
        offset += len(item) + 1
    argv_end = len(paths) + len(args)
    env_end = argv_end + len(envs)
    ptrs = ffi.new("char *[]", [*cells[:argv_end], ffi.NULL, *cells[argv_end:env_end], ffi.NULL])
    return _CommandLine(buf, ptrs, ptrs + len(paths), ptrs + argv_end + 1,
                        cells[-1] if cwd is not None else ffi.NULL)


#: Shared by every spawn of the same command line: the child only reads the
#: cells, and execve copies what it needs.
_laid_out = functools.lru_cache(maxsize=64)(_lay_out)


def _strings(req: Any, paths: tuple[str, ...], args: Sequence[bytes],
             env: Mapping[str, str] | None, cwd: str | None) -> _CommandLine:
    """Point ``req``'s paths, argv, envp and cwd into one char buffer and one
    pointer array, whatever the number of strings; returns them (they must
    outlive the call)."""
    pairs = None if env is None else tuple(env.items())
    size = sum(map(len, args)) + (sum(map(len, itertools.chain.from_iterable(pairs)))
                                  if pairs is not None else 0)
    line = (_laid_out if size <= _KEPT_SIZE else _lay_out)(paths, tuple(args), pairs, cwd)
    req.paths, req.npaths, req.argv = line.ptrs, len(paths), line.argv
    # env None: the caller's own environment, as the C library holds it (what
    # os.environ writes through to); no copy to build and encode per spawn.
    req.envp = lib.environ if env is None else line.envp
    req.cwd = line.cwd
    return line


@functools.lru_cache(maxsize=64)
def _fd_map(fds: tuple[int, ...]) -> Any:
    """The C array mapping ``fds[i]`` to the child's fd ``i``: read only by
    the child, so one per distinct list (the same few pipe numbers recur)."""
    return ffi.new("struct asl_fd_map[]", [(src, dst) for dst, src in enumerate(fds)] or 1)


def _above(fd: int, floor: int, spares: Cleanup) -> int:
    """``fd``, or a CLOEXEC copy of it numbered at least ``floor`` (closed
    with ``spares``).

    The child installs its fds ``0 .. floor-1`` with dup3 *before* it uses
    the ruleset fd, the error pipe and the listener socket: one of those
    numbered below ``floor`` would be overwritten (Landlock then fails with
    EBADFD, or the error report lands in one of the child's own fds).
    """
    if 0 <= fd < floor:
        fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
        spares.callback(os.close, fd)
    return fd


def spawn(plan: Plan | Compiled, *, path: str | tuple[str, ...], args: Sequence[bytes],
          env: Mapping[str, str] | None, cwd: str | None, fds: Sequence[int],
          notify: frozenset[str], self_trapped: frozenset[str] = frozenset(),
          netns_fd: int = -1, workspace: WorkspaceSpawn | None = None,
          hosts: HostsSpawn | None = None, cgroup_procs: int = -1) -> Spawned:
    """Start one confined child; ``fds[i]`` becomes the child's fd ``i``;
    ``notify`` and ``self_trapped`` are the filter's (:class:`FilterSpec`);
    ``netns_fd``: a network namespace for the child to enter (``_netns.py``).

    ``workspace``: the run's copy-on-write workspace; see ``_workspace.py``.
    ``hosts``: the run's pinned names (:class:`HostsSpawn`), see
    ``_pinned.py``; left out once the policy let them go.
    ``cgroup_procs``: an fd of the ``cgroup.procs`` of the run's memory
    group, which the child moves itself into first (``_cgroup.py``).

    ``plan``: a plan (its request is built for this spawn alone), or the
    :class:`Compiled` owner of one: its current plan, with the request
    templates it keeps (:attr:`Compiled.templates`).

    ``path`` is the executable, or the candidates of
    :func:`resolve_executable`, tried in turn by the child.

    Acquisition follows two scopes, as trio's ``_subprocess.py`` has them:
    ``child_ends`` holds the copies of the fds only the child keeps, closed
    the moment the C call returns, and ``cleanup_on_fail`` the child itself
    (killed and reaped) and its listener until both are handed to the
    caller as :class:`Spawned`.  The channel the child reports on is the C
    call's own, made and closed within it.
    """
    check_fd_count(len(fds))
    paths = (path,) if isinstance(path, str) else path
    if isinstance(plan, Compiled):
        template = _template(plan.plan, notify, self_trapped, plan.templates)
        landlock_fd = plan.plan.landlock_fd
        degraded = plan.plan.degraded
    else:
        template = _template(plan, notify, self_trapped, None)
        landlock_fd = plan.landlock_fd
        degraded = plan.degraded
    if hosts is not None and Subsystem.PINNED_NAMES in degraded:
        hosts = None  # the host refused, and on_unavailable let it go
    if workspace is not None and landlock_fd >= 0:
        landlock_fd = workspace.ruleset  # the policy's rules; the child adds the overlay's
    if hosts is not None and landlock_fd >= 0 and workspace is None:
        # The child adds the hosts file's rule: never to the policy's ruleset.
        if hosts.ruleset < 0:
            raise ValueError("pinned names need a ruleset of the run's own")
        landlock_fd = hosts.ruleset
    req = ffi.new("struct asl_spawn_req *", template.req[0])
    keep = [template, _strings(req, paths, args, env, cwd)]
    fd_map = _fd_map(tuple(fds))
    keep.append(fd_map)
    req.fds, req.nfds = fd_map, len(fds)
    req.parent_pid = os.getpid()
    # The child's channel is made, and read once the vfork returns, by the
    # C call (asl_spawn): its failure report and (supervised) its listener.
    out = ffi.new("struct asl_spawned *")
    with Cleanup() as child_ends:
        req.landlock_fd = _above(landlock_fd, len(fds), child_ends)
        if cgroup_procs >= 0:  # max_memory in a cgroup: written in the rlimit step
            req.cgroup_procs_fd = _above(cgroup_procs, len(fds), child_ends)
        if netns_fd >= 0:
            req.net_mode = lib.ASL_NET_JOIN
            req.netns_fd = _above(netns_fd, len(fds), child_ends)
        if workspace is not None and workspace.path:  # copy-on-write workspace (issue 12)
            keep += _workspace_request(req, workspace, len(fds), child_ends)
        if hosts is not None:  # pinned names (issue 10)
            keep += _hosts_request(req, hosts, len(fds), child_ends)
        pid = lib.asl_spawn(req, out)
    if pid < 0:
        raise SpawnError(-pid, os.strerror(-pid), step="clone")
    with Cleanup() as cleanup_on_fail:
        cleanup_on_fail.callback(_kill_and_reap, out.pidfd)
        listener = out.listener if out.listener >= 0 else None
        if listener is not None:
            cleanup_on_fail.callback(os.close, listener)
        if out.err:
            raise OSError(-out.err, os.strerror(-out.err))
        if out.report.step:
            raise _reported(out.report, paths)
        # No report, and nothing will come (the call held the only other
        # end): a child that did not get to exec, or sent no listener, died,
        # killed from outside (it reports its own failures).
        if req.reached != lib.ASL_STEP_EXECVE or (template.supervised and listener is None):
            raise _died(req, out.pidfd)
        cleanup_on_fail.pop_all()  # the caller owns the child and its fds now
    return Spawned(pid, out.pidfd, listener, bool(req.own_group))


def _reported(report: Any, paths: tuple[str, ...]) -> SpawnError:
    """The error for the child's failure report."""
    name = STEPS.get(report.step, f"step {report.step}")
    err = report.err
    if name != "execve":
        return SpawnError(err, os.strerror(err), step=name)
    tried = [(paths[i], report.errs[i]) for i in range(min(report.tried, len(report.errs)))]
    message = os.strerror(err)
    if len(paths) > 1:
        message += " (" + ", ".join(f"{p}: {errno.errorcode.get(e, e)}" for p, e in tried)
        if report.tried > len(tried):
            message += f", and {report.tried - len(tried)} more"
        message += ")"
    if err == errno.EACCES:
        message += (" (hint: the command, and for a script its interpreter, must lie "
                    "under fs_readable)")
    # The candidate the errno came from: the first refused, else the last tried.
    culprit = next((p for p, e in tried if e == err), tried[-1][0] if tried else paths[0])
    return SpawnError(err, message, step="execve", filename=culprit)


def _died(req: Any, pidfd: int) -> SpawnError:
    """The error for a child that died at step ``req.reached`` without a
    report.  It is exiting already (vfork only returns once the child has
    exec'd or is in exit), so the wait for its status is a short one."""
    info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
    name = STEPS.get(req.reached, f"step {req.reached}")
    if info is not None and info.si_code == os.CLD_EXITED:
        how = f"exited with status {info.si_status}"
    else:
        number = info.si_status if info is not None else 0
        how = f"was killed by signal {number} ({signal.strsignal(number)})"
    return SpawnError(errno.ECHILD, f"the child {how} during its {name} step, "
                                    "before it could report", step=name)


def _kill_and_reap(pidfd: int) -> None:
    """Kill a child that failed or cannot be handed on; it exits at once."""
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)
