"""What this host lets us use: :func:`probe` and its :class:`Capabilities`.

Every answer comes from doing the thing, not from a version number: a
container profile, gVisor or an outer sandbox refuses features the kernel
has.  Whatever would change this process (a seccomp filter, a namespace) is
tried in a throwaway child started by the same C core as a real sandbox, so
it meets the same refusals:

- the seccomp trials exec ``/`` (a directory: EACCES) once the filter is
  installed.  An ``execve`` report means every step before it held; a
  ``seccomp`` report carries the errno.  No program runs, ~0.5 ms each.
- ``SECCOMP_FILTER_FLAG_NEW_LISTENER`` is EBUSY when any filter already on
  this process has a listener (only one per filter chain): that is how a
  nested sandbox, or a CI runner's supervisor, shows.  gVisor answers EINVAL.
- the namespace and SYNC_WAKE_UP checks need a program that runs: a Python
  child makes the ``unshare`` calls, and while it lives under a listener we
  set the listener's flags from here.

Results are cached for the life of the process; none of this changes while
it runs.
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import sys
from dataclasses import dataclass

import anyio

from ._core import ffi
from ._exceptions import SpawnError
from ._fd import Cleanup
from ._kernel._landlock import RulesetSpec, abi_version, missing
from ._kernel._notify import set_sync_wake_up
from ._kernel._sys import syscall
from ._plan import probe_plan
from ._spawn import DEVNULL_FD, _kill_and_reap, spawn
from ._types import Subsystem

# A syscall no probe program makes: trapping it is what makes a listener.
_TRAPPED = frozenset({"reboot"})
_PROBE_TIMEOUT = 10.0
# Run in the throwaway child; prints "user_errno net_errno" (0 = allowed).
# Network first: as root it needs no user namespace; unprivileged, it may
# still work inside a new user namespace.
_NAMESPACE_SCRIPT = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def attempt(flags):
    return 0 if libc.unshare(flags) == 0 else ctypes.get_errno()
net = attempt(0x40000000)
user = attempt(0x10000000)
if net and not user:
    net = attempt(0x40000000)
print(user, net)
"""


@dataclass(frozen=True, slots=True)
class Support:
    """One feature: available, or the errno the host answered."""

    errno: int | None = None
    detail: str = ""

    @property
    def available(self) -> bool:
        return self.errno is None

    def __bool__(self) -> bool:
        return self.errno is None

    def __str__(self) -> str:
        if self.errno is None:
            return f"yes ({self.detail})" if self.detail else "yes"
        name = _errno.errorcode.get(self.errno, str(self.errno))
        why = self.detail or os.strerror(self.errno)
        return f"no ({name}: {why})"


#: What the probe could not find out (a throwaway child failed earlier).
_UNKNOWN = Support(_errno.ENOTRECOVERABLE, "not probed")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What :func:`probe` found on this host, for this process."""

    #: The Landlock ABI version, or None (see :attr:`landlock`).
    landlock_abi: int | None
    #: Landlock itself; when unavailable, the errno of landlock_create_ruleset.
    landlock: Support
    seccomp_filter: Support
    #: seccomp user notification (the supervisor and syscall handlers).
    user_notification: Support
    #: SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6).
    sync_wake_up: Support
    pidfd: Support
    clone3: Support
    user_namespace: Support
    network_namespace: Support
    #: /proc/self/status ``Seccomp``: 0 none, 1 strict, 2 filter; None if unreadable.
    seccomp_mode: int | None
    #: /proc/self/status ``Seccomp_filters``: filters on this process.
    seccomp_filters: int | None

    @property
    def under_seccomp(self) -> bool:
        """This process already runs under a seccomp filter (a container, a sandbox)."""
        return bool(self.seccomp_mode) or bool(self.seccomp_filters)

    @property
    def under_listener(self) -> bool:
        """This process already runs under a seccomp listener (a supervised sandbox)."""
        return self.user_notification.errno == _errno.EBUSY

    def refusals(self, supervised: bool = False) -> dict[Subsystem, Support]:
        """What a default (strict) :class:`Sandbox` would be refused here, and
        why; with ``supervised``, one with handlers or ``max_processes``."""
        out: dict[Subsystem, Support] = {}
        if not self.landlock or self.landlock_abi is None:
            out[Subsystem.LANDLOCK] = self.landlock
        else:
            refused = Support(_errno.EOPNOTSUPP, f"Landlock ABI {self.landlock_abi}")
            for sub in missing(RulesetSpec((), (), None, frozenset()), self.landlock_abi):
                out[sub] = refused
        if not self.seccomp_filter:
            out[Subsystem.SECCOMP] = self.seccomp_filter
        if supervised and not self.user_notification:
            out[Subsystem.SUPERVISOR] = self.user_notification
        return out


def _stopped(exc: SpawnError) -> Support:
    """A probe child that failed before the step it was to try."""
    name = _errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return Support(_errno.ENOTRECOVERABLE, f"not probed: the probe child's {exc.step} "
                                           f"failed ({name})")


@functools.cache
def seccomp_trials() -> tuple[Support, Support]:
    """(a seccomp filter, a filter with a new listener) in a throwaway child."""
    plan = probe_plan()
    out = []
    for notify in (frozenset(), _TRAPPED):
        try:
            child = spawn(plan, path="/", args=[b"asyncsandlock-probe"], env={}, cwd=None,
                          fds=[], notify=notify)
        except SpawnError as exc:
            if exc.step == "execve":
                out.append(Support())
            elif exc.step == "seccomp":
                out.append(Support(exc.errno))
            else:
                out.append(_stopped(exc))
        else:  # pragma: no cover - executing a directory cannot succeed
            raise RuntimeError(f"exec of '/' succeeded (pid {child.pid})")
    if not out[0]:
        out[1] = Support(out[0].errno, "needs a seccomp filter")
    return out[0], out[1]


def _landlock() -> tuple[int | None, Support]:
    try:
        abi = abi_version()
    except OSError as exc:
        return None, Support(exc.errno)
    return abi, Support(detail=f"ABI {abi}")


def _pidfd() -> Support:
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as exc:
        return Support(exc.errno)
    os.close(fd)
    return Support()


def _clone3() -> Support:
    # clone3 with a zero size is EINVAL wherever the call exists; nothing is created.
    try:
        syscall("clone3", ffi.NULL, 0)
    except OSError as exc:
        return Support() if exc.errno == _errno.EINVAL else Support(exc.errno)
    raise RuntimeError("clone3(NULL, 0) succeeded")  # pragma: no cover


def _seccomp_status() -> tuple[int | None, int | None]:
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Seccomp", "Seccomp_filters"):
                    values[key] = int(value)
    except OSError:
        return None, None
    return values.get("Seccomp"), values.get("Seccomp_filters")


async def _namespaces_and_sync(listener_ok: bool) -> tuple[Support, Support, Support]:
    """(user namespace, network namespace, SYNC_WAKE_UP), from one Python child."""
    plan = probe_plan(seccomp=listener_ok)
    sync = _UNKNOWN if listener_ok else Support(_errno.EOPNOTSUPP, "needs user notification")
    # Three scopes: our fds for the probe, the child's end of its pipe
    # (closed once it is spawned), and the child itself (killed if it hung,
    # reaped, whatever happens).
    with Cleanup() as always:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        always.callback(os.close, out_r)
        with Cleanup() as child_ends:
            child_ends.callback(os.close, out_w)
            try:
                child = spawn(plan, path=sys.executable,
                              args=[b"python", b"-I", b"-S", b"-c", _NAMESPACE_SCRIPT.encode()],
                              env={}, cwd=None, fds=[DEVNULL_FD, out_w, DEVNULL_FD],
                              notify=_TRAPPED if listener_ok else frozenset())
            except SpawnError as exc:
                failed = _stopped(exc)
                return failed, failed, sync
        with Cleanup() as ending:
            # Killed if it hung (a zombie normally), reaped, its pidfd closed:
            # unwatched, as the one wait on it has returned by then.
            ending.callback(_kill_and_reap, child.pidfd)
            if child.listener is not None:
                try:
                    sync = Support(set_sync_wake_up(child.listener) or None)
                finally:
                    # Now: nobody answers its trapped calls, which then fail at once.
                    os.close(child.listener)
            with anyio.move_on_after(_PROBE_TIMEOUT):
                await anyio.wait_readable(child.pidfd)
        # The child is reaped: its end of the pipe is closed, the read cannot block.
        report = os.read(out_r, 64).split()
    if len(report) != 2:
        failed = Support(_errno.ENOTRECOVERABLE, "probe child failed")
        return failed, failed, sync
    user, net = (int(word) for word in report)
    return Support(user or None), Support(net or None), sync


_cached: Capabilities | None = None


async def probe() -> Capabilities:
    """Find out what this host supports (once per process; later calls are free).

    .. versionadded:: 0.1
    """
    global _cached  # noqa: PLW0603 - a per-process cache
    if _cached is not None:
        return _cached
    abi, landlock = _landlock()
    seccomp_filter, user_notification = seccomp_trials()
    user_ns, net_ns, sync = await _namespaces_and_sync(bool(user_notification))
    mode, filters = _seccomp_status()
    _cached = Capabilities(
        landlock_abi=abi, landlock=landlock, seccomp_filter=seccomp_filter,
        user_notification=user_notification, sync_wake_up=sync, pidfd=_pidfd(),
        clone3=_clone3(), user_namespace=user_ns, network_namespace=net_ns,
        seccomp_mode=mode, seccomp_filters=filters)
    return _cached
