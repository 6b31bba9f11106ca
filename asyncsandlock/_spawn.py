"""Plan -> one call into the C core -> (pid, pidfd, listener fd).

Everything the child touches is prepared here first; the call returns once
the child has exec'd (or failed, in which case it is reaped here and the
failing step comes back as :class:`SpawnError`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._core import ffi, lib
from ._exceptions import SpawnError
from ._plan import Plan
from ._types import Subsystem

# enum asl_step in csrc/spawn.h
STEPS = {1: "signals", 2: "setpgid", 3: "pdeathsig", 4: "fds", 5: "chdir", 6: "rlimit",
         7: "no_new_privs", 8: "landlock", 9: "seccomp", 10: "listener", 11: "execve",
         12: "capabilities"}
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3


@dataclass(frozen=True, slots=True)
class Spawned:
    """A child that has exec'd; the caller owns both fds."""

    pid: int
    pidfd: int
    listener: int | None
    own_group: bool


def resolve_executable(name: str, env: Mapping[str, str], cwd: str | None) -> str:
    """Find ``name`` the way execvp would, but in the parent, before any clone.

    Raises a :class:`SpawnError` that is a :class:`FileNotFoundError` (or a
    :class:`PermissionError`) naming the command.
    """
    if not name:
        raise SpawnError(errno.ENOENT, "empty command name", step="execve", filename=name)
    denied = False
    for candidate in _candidates(name, env, cwd):
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = True
    if denied:
        raise SpawnError(errno.EACCES, "command is not executable", step="execve", filename=name)
    raise SpawnError(errno.ENOENT, "command not found", step="execve", filename=name)


def _candidates(name: str, env: Mapping[str, str], cwd: str | None) -> Iterator[str]:
    """The paths execvp would try for ``name``, in order, made as they are
    tried; PATH entries that do not hold ``name`` at all are skipped."""
    if name.startswith("/"):
        yield name  # the usual case: no getcwd() needed
        return
    if "/" in name:
        yield os.path.join(cwd or os.getcwd(), name)
        return
    base = cwd
    for entry in env.get("PATH", os.defpath).split(":"):
        directory = entry
        if not entry.startswith("/"):
            base = base or os.getcwd()
            directory = os.path.join(base, entry or ".")
        candidate = directory + name if directory.endswith("/") else f"{directory}/{name}"
        # Most entries miss, and access() says so without the exception
        # that isfile()'s failing stat() costs.
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


def _template(plan: Plan, notify: frozenset[str]) -> _Template:
    key = (notify, plan.degraded)
    found = plan.spawn_templates.get(key)
    if isinstance(found, _Template):
        return found
    req = ffi.new("struct asl_spawn_req *")
    limits = ffi.new("struct asl_rlimit[]", list(plan.rlimits) or 1)
    req.rlimits, req.nrlimits = limits, len(plan.rlimits)
    prog = plan.filter_for(notify)
    arrays: tuple[Any, ...] = (limits,)
    if prog is not None:
        prog_c = ffi.from_buffer(prog)
        arrays += (prog_c,)
        req.filter, req.filter_len = prog_c, len(prog) // 8
    req.key = list(plan.key)
    req.keep_caps = plan.keep_caps
    req.own_group = int(Subsystem.PROCESS_GROUP not in plan.degraded)
    supervised = prog is not None and bool(notify)
    req.seccomp_flags = _SECCOMP_FILTER_FLAG_NEW_LISTENER if supervised else 0
    template = plan.spawn_templates[key] = _Template(req, supervised, arrays)
    return template


def _strings(req: Any, path: str, args: Sequence[bytes], env: Mapping[str, str] | None,
             cwd: str | None) -> tuple[Any, Any]:
    """Point ``req``'s path, argv, envp and cwd into one char buffer and one
    pointer array, whatever the number of strings; returns both (they must
    outlive the call)."""
    envs = [os.fsencode(f"{k}={v}") for k, v in env.items()] if env is not None else []
    items = [os.fsencode(path), *args, *envs]
    if cwd is not None:
        items.append(os.fsencode(cwd))
    buf = ffi.new("char[]", b"\0".join(items))  # cffi adds the last NUL
    cells = []
    offset = 0
    for item in items:
        cells.append(buf + offset)
        offset += len(item) + 1
    argv_end = 1 + len(args)
    env_end = argv_end + len(envs)
    ptrs = ffi.new("char *[]", [*cells[1:argv_end], ffi.NULL, *cells[argv_end:env_end], ffi.NULL])
    req.path = cells[0]
    req.argv = ptrs
    # env None: the caller's own environment, as the C library holds it (what
    # os.environ writes through to); no copy to build and encode per spawn.
    req.envp = lib.environ if env is None else ptrs + argv_end
    if cwd is not None:
        req.cwd = cells[-1]
    return buf, ptrs


def _above(fd: int, floor: int, spares: list[int]) -> int:
    """``fd``, or a CLOEXEC copy of it numbered at least ``floor``.

    The child installs its fds ``0 .. floor-1`` with dup3 *before* it uses
    the ruleset fd, the error pipe and the listener socket: one of those
    numbered below ``floor`` would be overwritten (Landlock then fails with
    EBADFD, or the error report lands in one of the child's own fds).
    """
    if 0 <= fd < floor:
        fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
        spares.append(fd)
    return fd


def spawn(plan: Plan, *, path: str, args: Sequence[bytes], env: Mapping[str, str] | None,
          cwd: str | None, fds: Sequence[int], notify: frozenset[str]) -> Spawned:
    """Start one confined child; ``fds[i]`` becomes the child's fd ``i``."""
    template = _template(plan, notify)
    req = ffi.new("struct asl_spawn_req *", template.req[0])
    keep = [template, _strings(req, path, args, env, cwd)]
    fd_map = ffi.new("struct asl_fd_map[]", [(src, dst) for dst, src in enumerate(fds)] or 1)
    keep.append(fd_map)
    req.fds, req.nfds = fd_map, len(fds)
    req.parent_pid = os.getpid()
    supervised = template.supervised
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if supervised \
        else (None, None)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pidfd_out = ffi.new("int *", -1)
    spares: list[int] = []
    try:
        req.landlock_fd = _above(plan.landlock_fd, len(fds), spares)
        req.listener_sock = _above(theirs.fileno(), len(fds), spares) if theirs else -1
        req.errpipe = _above(err_w, len(fds), spares)
        pid = lib.asl_spawn(req, pidfd_out)
        while spares:
            os.close(spares.pop())
        os.close(err_w)
        err_w = -1
        if pid < 0:
            raise SpawnError(-pid, os.strerror(-pid), step="clone")
        pidfd = pidfd_out[0]
        try:
            report = os.read(err_r, 8)
            if report:
                step, err = struct.unpack("=ii", report)
                name = STEPS.get(step, f"step {step}")
                message = os.strerror(err)
                if name == "execve" and err == errno.EACCES:
                    message += (" (hint: the command, and for a script its interpreter, must "
                                "lie under fs_readable)")
                raise SpawnError(err, message, step=name,
                                 filename=path if name == "execve" else None)
            listener = None
            if ours is not None:
                _msg, received, _flags, _addr = socket.recv_fds(ours, 1, 1)
                listener = received[0]
        except BaseException:
            _kill_and_reap(pidfd)
            raise
        return Spawned(pid, pidfd, listener, bool(req.own_group))
    finally:
        for fd in spares:
            os.close(fd)
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)
        if ours is not None:
            ours.close()
        if theirs is not None:
            theirs.close()


def _kill_and_reap(pidfd: int) -> None:
    """Kill a child that failed or cannot be handed on; it exits at once."""
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)
