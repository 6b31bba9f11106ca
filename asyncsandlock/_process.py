"""``SandboxedProcess``: a running sandbox, waited for through its pidfd.

There is no SIGCHLD handler and no child watcher: the pidfd polls readable
when the child exits, and ``waitid(P_PIDFD)`` reaps exactly that child.

The sandbox is a process group (the child made its own, and setsid/setpgid
are denied inside, so no descendant can leave it).  When the first process
exits, whatever it left behind is killed *before* it is reaped: while the
zombie is unreaped its pid, and so the group id, cannot be reused, so the
kill can only reach the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import signal as _signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from ._cgroup import MemoryGroup, reason_at_reap
from ._core import ffi, lib
from ._fd import close_fd
from ._kernel._sys import SYSCALLS
from ._reaper import forget
from ._result import Result
from ._standby import Standby
from ._streams import FdReceiveStream, FdSendStream
from ._types import ExitReason, Protection, Subsystem

if TYPE_CHECKING:
    from ._changes import Change
    from ._netns import Network
    from ._network import NetworkInfo
    from ._workspace import Workspace

_PRCTL = ffi.cast("long", SYSCALLS["prctl"])
_GET_CHILD_SUBREAPER = ffi.cast("long", 37)  # PR_GET_CHILD_SUBREAPER


class SandboxedProcess:
    """A command running in a sandbox (see :meth:`Sandbox.open`).

    Follows :class:`anyio.abc.Process`; every signal goes to the whole sandbox.
    """

    args: tuple[str, ...]
    pid: int
    stdin: FdSendStream | None
    stdout: FdReceiveStream | None
    stderr: FdReceiveStream | None
    protections: Mapping[Subsystem, Protection]
    #: Per subsystem this run goes without (:attr:`Protection.DEGRADED` in
    #: :attr:`protections`), the fields of the policy left unenforced: e.g.
    #: ``{Subsystem.SUPERVISOR: ("handlers", "max_processes")}``.  Empty when
    #: everything held.  See ``docs/degradation.md``.
    unenforced: Mapping[Subsystem, tuple[str, ...]]
    _pidfd: int
    #: The seccomp listener fd; -1 when there is none (or no more).
    _listener: int
    _supervisor: Standby | None
    _started: float
    _ended: float | None
    _status: os.waitid_result | None
    _reason: ExitReason | None
    _wait_lock: anyio.Lock | None
    _finished: bool
    _own_group: bool
    #: The network namespace the parent made for it (issue 10, netns).
    _network: Network | None = None
    #: Its max_memory cgroup (issue 11, cgmem; ``_cgroup.py``), removed once reaped.
    _cgroup: MemoryGroup | None = None
    #: Every task of the sandbox has exited: its listener hung up (the
    #: filter has no user left; ``_collect.py``), so nothing is left to kill.
    _emptied: bool = False
    # -- copy-on-write workspace (issue 12, docs/workspaces.md) --
    #: What the command changed in the policy's ``workdir`` (set once it has
    #: been waited for); None without a workdir, or before.
    changes: tuple[Change, ...] | None = None
    #: With ``on_exit="keep"``, the changes to commit or abort once waited
    #: for (also in a :class:`WorkspaceConflict`); else None.
    workspace: Workspace | None = None
    #: Lists the changes and applies ``on_exit``: called once, by wait().
    _settle: Callable[[SandboxedProcess], Awaitable[None]] | None = None

    def __init__(self) -> None:
        raise TypeError("SandboxedProcess objects are created by Sandbox.open()")

    @classmethod
    def _create(cls, *, args: Sequence[str], pid: int, pidfd: int, listener: int | None,
                own_group: bool,
                stdin: int | None, stdout: int | None, stderr: int | None,
                protections: Mapping[Subsystem, Protection],
                unenforced: Mapping[Subsystem, tuple[str, ...]],
                started: float) -> SandboxedProcess:
        self = object.__new__(cls)
        self.args = tuple(args)
        self.pid = pid
        self._pidfd = pidfd
        self._listener = -1 if listener is None else listener
        self._supervisor = None
        self.stdin = FdSendStream(stdin) if stdin is not None else None
        self.stdout = FdReceiveStream(stdout) if stdout is not None else None
        self.stderr = FdReceiveStream(stderr) if stderr is not None else None
        self.protections = protections
        self.unenforced = unenforced
        self._started = started
        self._ended = None
        self._status = None
        self._reason = None
        # Made by the first wait(), not here: between the spawns of a
        # pipeline's stages every microsecond delays the next stage.
        self._wait_lock = None
        self._finished = False
        self._own_group = own_group
        return self

    def __repr__(self) -> str:
        if self._status is None:
            state = "running"
        else:
            state = f"{self.reason.value} returncode={self.returncode}"
        return f"<SandboxedProcess pid={self.pid} {self.args[0]!r} {state}>"

    # -- state ------------------------------------------------------------

    @property
    def network(self) -> NetworkInfo | None:
        """Its own network's addresses and published ports while it runs (None
        when the sandbox makes its own ``"loopback"`` namespace without
        ``publish``, or uses the caller's network)."""
        return self._network.info if self._network is not None else None

    @property
    def returncode(self) -> int | None:
        """None while running; the exit status, or minus the killing signal."""
        status = self._status
        if status is None:
            return None
        if status.si_code == os.CLD_EXITED:
            return status.si_status
        return -status.si_status

    @property
    def reason(self) -> ExitReason:
        """Why the process ended (meaningful once :attr:`returncode` is set)."""
        if self._reason is not None:
            return self._reason
        if self._status is not None and self._status.si_code != os.CLD_EXITED:
            return ExitReason.SIGNALED
        return ExitReason.EXITED

    # -- signals ----------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to every process of the sandbox."""
        if self._status is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._own_group:
                os.killpg(self.pid, sig)
            else:  # nested: no group of our own, only the command is reachable
                _signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        """SIGTERM the sandbox."""
        self._mark(ExitReason.KILLED)
        self.send_signal(_signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the sandbox."""
        self._mark(ExitReason.KILLED)
        self.send_signal(_signal.SIGKILL)

    def _mark(self, reason: ExitReason) -> None:
        # A command that already ended on its own (a zombie not yet reaped)
        # keeps its own reason: the signal can only reach what it left behind.
        if self._status is None and self._reason is None and not self._exited():
            self._reason = reason

    def _exited(self) -> bool:
        """True once the first process has ended, reaped or not (a zombie)."""
        if self._status is not None:
            return True
        # WNOWAIT: look without reaping; wait() reaps, after killing leftovers.
        return os.waitid(os.P_PIDFD, self._pidfd,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def _kill_for(self, reason: ExitReason) -> None:
        self._mark(reason)
        self.send_signal(_signal.SIGKILL)

    # -- waiting ----------------------------------------------------------

    async def wait(self) -> int:
        """Wait for the sandbox to end, kill what it left behind, reap it."""
        if self._finished:  # reaped and cleaned up: only the checkpoint is left
            await anyio.lowlevel.checkpoint()
            return self._status_code()
        await self._reap_when(ready=False)
        return self._status_code()

    async def _reap_ready(self) -> None:
        """:meth:`wait` for a caller that has seen the pidfd readable (and so
        had its checkpoint): no second wait on the loop for it."""
        if self._finished:
            return
        if self._wait_lock is None and self._status is None:
            # The usual end of a run: no other task ever waited (none made
            # the lock).  The reap's first part never yields, so it needs no
            # lock (making one and entering it cost ~15 us, on the path of
            # every run); one is made only for a rest that awaits, and a
            # waiter that comes meanwhile queues on it.
            if (rest := self._reap_now()) is not None:
                async with self._lock():
                    await self._stand_down(*rest)
            return
        await self._reap_when(ready=True)

    def _lock(self) -> anyio.Lock:
        """The reap's lock, made on first use.  fast_acquire: an uncontended
        acquire does not yield; wait() still checkpoints, in wait_readable()
        or in its already-finished branch."""
        if self._wait_lock is None:
            self._wait_lock = anyio.Lock(fast_acquire=True)
        return self._wait_lock

    async def _reap_when(self, ready: bool) -> None:
        """Reap under the lock, once the pidfd is readable (``ready``: it is)."""
        async with self._lock():
            if self._status is None:
                if not ready:
                    await anyio.wait_readable(self._pidfd)
                if (rest := self._reap_now()) is not None:
                    await self._stand_down(*rest)

    def _reap_now(self) -> tuple[bool, bool] | None:
        """Reap the exited process and kill what it left behind, without
        yielding.  None once the process is finished; else standing down
        awaits (:meth:`_stand_down`), and here is what for: orphans to reap
        (we are PID 1 or a subreaper), and whether anything but a
        workspace's settling is left (a supervisor's task, a network, a
        cgroup: a shielded stand-down)."""
        # Leftovers die while the zombie still pins the group id.
        if self._own_group and not self._emptied:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, _signal.SIGKILL)
        forget(self.pid)  # while the zombie still pins the id
        self._status = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
        self._ended = time.monotonic()
        # Not watched: the only waiter on the pidfd is the task reaping, and
        # its wait is over.
        pidfd, self._pidfd = self._pidfd, -1
        close_fd(pidfd, watched=False)
        orphans = self._own_group and (os.getpid() == 1 or _is_subreaper())
        # A supervisor that never had a notification stands down
        # without a task to cancel and join (see _standby.py).
        supervised = self._supervisor is not None and not self._supervisor.stop_idle()
        if (group := self._cgroup) is not None:  # the OOM killer's victim or not
            self._reason = reason_at_reap(group, self._reason)
        shielded = orphans or supervised or self._network is not None or group is not None
        if not shielded:  # nothing to await for the listener
            self._close_listener()
            if self._settle is None:
                self._finished = True
                return None
        return orphans, shielded

    async def _stand_down(self, orphans: bool, shielded: bool) -> None:
        """What is left of a reap that :meth:`_reap_now` said awaits."""
        if shielded:
            with anyio.CancelScope(shield=True):
                if orphans:
                    await self._reap_orphans()
                await self._stop_supervisor()
                if self._network is not None:
                    await self._network.aclose()
                if (group := self._cgroup) is not None:
                    self._cgroup = None
                    await group.aclose()
        self._finished = True
        if self._settle is not None:  # a workspace: its diff and on_exit
            settle, self._settle = self._settle, None
            await settle(self)

    def _status_code(self) -> int:
        code = self.returncode
        assert code is not None
        return code

    async def _reap_orphans(self) -> None:
        """As PID 1 or a subreaper, we inherit the sandbox's orphans: reap them."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                while os.waitid(os.P_PGID, self.pid, os.WEXITED | os.WNOHANG) is not None:
                    pass
            except ChildProcessError:
                pass
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return
            await anyio.sleep(0.001)

    async def _stop_supervisor(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.stop()
            self._supervisor = None
        self._close_listener()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, -1
        # Not watched: the supervisor's task, the only one that waits on it,
        # never started or has been joined (and the standby's registration
        # is gone, see _standby.py).
        close_fd(listener, watched=False)

    async def _kill_and_reap(self, reason: ExitReason) -> None:
        with anyio.CancelScope(shield=True):
            self._kill_for(reason)
            await self.wait()

    async def result(self) -> Result:
        """Wait and return the :class:`Result` (``stdout``/``stderr`` are None:
        the streams belong to the caller)."""
        await self.wait()
        return self._result(None, None)

    def _result(self, stdout: bytes | None, stderr: bytes | None,
                truncated: tuple[int, int] = (0, 0)) -> Result:
        code = self.returncode
        assert code is not None and self._ended is not None
        return Result(args=self.args, returncode=code, stdout=stdout, stderr=stderr,
                      reason=self.reason, signal=-code if code < 0 else None,
                      duration=self._ended - self._started, protections=self.protections,
                      unenforced=self.unenforced, stdout_truncated=truncated[0],
                      stderr_truncated=truncated[1], changes=self.changes,
                      workspace=self.workspace)

    # -- closing ----------------------------------------------------------

    async def aclose(self) -> None:
        """Close every stream, then wait for the sandbox to end.

        The read ends are closed before the wait, as :class:`anyio.abc.Process`
        does: a command still writing gets SIGPIPE instead of blocking on a
        full pipe that nobody will read (which would make the wait endless).
        If cancelled while waiting, the sandbox is killed and reaped first.
        """
        self._close_streams()
        if self._finished:  # nothing left to wait for: one checkpoint
            await anyio.lowlevel.checkpoint()
            return
        try:
            await self.wait()
        except BaseException:
            await self._kill_and_reap(ExitReason.KILLED)
            raise

    def _close_streams(self) -> None:
        # Closing a pipe cannot block, and each caller has its own checkpoint:
        # no checkpoint per stream.
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream._close()

    async def __aenter__(self) -> SandboxedProcess:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


#: Where prctl writes the flag: one cell for every call, in whatever thread,
#: as the flag is the process's own (the same answer for all of them).
_SUBREAPER_FLAG = ffi.new("int *")


def _is_subreaper() -> bool:
    # Asked on every reap (a caller may become a subreaper at any time), so
    # straight through the C library with pre-cast arguments: _sys.syscall's
    # generic casting costs more than the system call.
    flag = _SUBREAPER_FLAG
    if lib.syscall(_PRCTL, _GET_CHILD_SUBREAPER, flag) == -1:
        err = ffi.errno
        raise OSError(err, f"prctl: {os.strerror(err)}")
    return bool(flag[0])
