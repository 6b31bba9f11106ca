"""``Sandbox.open`` and ``Sandbox.run``: stdio, spawn, supervise, collect."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, cast

import anyio
from anyio.abc import ByteReceiveStream, TaskStatus

from ._cgroup import memory_group, run_protections
from ._collect import can_collect, collect
from ._enforcement import unenforced_by_run
from ._exceptions import PolicyError, SpawnError
from ._fd import Cleanup, close_fds
from ._handler import Handler, route
from ._kernel._sys import SYSCALLS
from ._limits import watched
from ._netns import open_network
from ._netpool import for_child, replenish
from ._pacing import SpawnTurn
from ._pinned import kept, pinned_names, pinned_protections
from ._plan import Compiled, owner_of, peek
from ._process import SandboxedProcess
from ._reaper import abandon, prepare, watch
from ._result import Result
from ._spawn import DEVNULL_FD, check_fd_count, resolve_executable, spawn
from ._standby import Standby
from ._streams import YIELD_EVERY, Capture
from ._supervisor import Supervisor
from ._types import ExitReason, Subsystem
from ._unavailable import confined_spawn, warn_degraded
from ._validate import (
    SLOTS,
    StdioTarget,
    check_args,
    check_cwd,
    check_env,
    check_fd,
    check_fds,
    check_file,
    check_handlers,
    check_input,
    check_timeout,
    show,
)
from ._watch import watch_limits
from ._workspace import (
    Layer,
    check_dry_run,
    in_layer,
    open_in_workspace,
    settle,
    workspace_protections,
)
from .handlers import builtin_handlers
from .handlers.net import resolve_names, unresolved
from .handlers.process_limit import sees_every_sigaction, sees_threads

if TYPE_CHECKING:
    from ._netns import Network
    from ._plan import Compiled
    from ._policy import Sandbox

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

#: What a ``clean_env`` sandbox takes from the caller's environment (those
#: that are set): enough to find programs and print text, no secrets.
MINIMAL_ENV = ("PATH", "HOME", "LANG", "TERM")


def minimal_env() -> dict[str, str]:
    """The caller's :data:`MINIMAL_ENV` variables; PATH defaults to
    :data:`os.defpath` as execvp's does."""
    # One lookup per name, by index: os.environ encodes the key and decodes
    # the value in Python, and get() adds a frame of its own (half the cost).
    environ = os.environ
    env: dict[str, str] = {}
    for key in MINIMAL_ENV:
        try:
            env[key] = environ[key]
        except KeyError:
            continue
    env.setdefault("PATH", os.defpath)
    return env

def _stdio(targets: tuple[StdioTarget, StdioTarget, StdioTarget], child_ends: list[int],
           ours_on_fail: list[int]) -> tuple[list[int], list[int | None]]:
    """The child's fds 0-2, and our ends of its pipes.  What only the child
    keeps is put in ``child_ends`` (closed once it is spawned), our ends in
    ``ours_on_fail`` (closed unless a process takes them over)."""
    child: list[int] = []
    ours: list[int | None] = [None, None, None]
    for index, target in enumerate(targets):
        if target is None:
            child.append(index)
        elif target == PIPE:
            read, write = os.pipe2(os.O_CLOEXEC)
            mine, theirs = (write, read) if index == 0 else (read, write)
            ours_on_fail.append(mine)
            child_ends.append(theirs)
            ours[index] = mine
            child.append(theirs)
        elif target == DEVNULL:
            child.append(DEVNULL_FD)
        elif target == STDOUT:
            if index != 2:
                raise PolicyError("stdin" if index == 0 else "stdout", "STDOUT is only for stderr")
            child.append(child[1])
        elif isinstance(target, int) and not isinstance(target, bool) and target >= 0:
            child.append(check_fd(SLOTS[index], target))
        elif hasattr(target, "fileno"):
            child.append(check_file(SLOTS[index], target))
        else:
            raise PolicyError(SLOTS[index],
                              f"{show(target)} is not PIPE, DEVNULL, STDOUT, an fd or a file")
    return child, ours


def _netns_fd(network: Network | None, compiled: Compiled, pooled: int = -1) -> int:
    """The namespace the parent made for the child to enter, or -1: none, or
    the policy let the child's ``setns`` go (the network step, refused).
    ``pooled``: one made ahead (``_netpool.py``) for a child that would
    otherwise unshare its own."""
    if Subsystem.NETWORK_NAMESPACE in compiled.plan.degraded:
        return -1
    return pooled if network is None else network.netns_fd


async def open_process(sandbox: Sandbox, args: Sequence[str], *, stdin: StdioTarget = PIPE,
                       stdout: StdioTarget = PIPE, stderr: StdioTarget = PIPE,
                       env: Mapping[str, str] | None = None,
                       cwd: str | os.PathLike[str] | None = None,
                       handlers: Sequence[Handler] = (), extra_fds: Sequence[int] = (),
                       layer: Layer | None = None, watch_now: bool = True) -> SandboxedProcess:
    """Start ``args`` in ``sandbox``; see :meth:`Sandbox.open`.  ``layer``:
    the run's workspace layer, if the policy has a workdir (see run()).
    ``watch_now=False``: the listener is left for :func:`supervise` to
    watch, before anything awaits (no notification waits meanwhile: the
    listener stays readable until one is received)."""
    argv = check_args(args)
    run_env = check_env("env", env if env is not None else {})
    run_cwd = check_cwd("cwd", cwd)
    fds = check_fds("extra_fds", extra_fds)
    check_fd_count(3 + len(fds))
    run_handlers = check_handlers("handlers", handlers)
    if sandbox.workdir is not None and layer is None:
        # Sandbox.open() with a workspace (issue 12): the process settles it
        # when it is waited for (_workspace.open_in_workspace).
        return await open_in_workspace(sandbox, lambda layer: open_checked(
            sandbox, argv, stdin=stdin, stdout=stdout, stderr=stderr, env=run_env, cwd=run_cwd,
            handlers=run_handlers, extra_fds=fds, layer=layer))
    return await open_checked(sandbox, argv, stdin=stdin, stdout=stdout, stderr=stderr,
                              env=run_env, cwd=run_cwd, handlers=run_handlers, extra_fds=fds,
                              layer=layer, watch_now=watch_now)


async def open_checked(sandbox: Sandbox, argv: tuple[str, ...], *, stdin: StdioTarget,
                       stdout: StdioTarget, stderr: StdioTarget, env: Mapping[str, str],
                       cwd: str | None, handlers: tuple[Handler, ...],
                       extra_fds: Sequence[int], layer: Layer | None = None,
                       watch_now: bool = True) -> SandboxedProcess:
    """:func:`open_process` once its arguments are validated (by it, or for a
    pipeline stage partly by :meth:`Sandbox.cmd`); stdio is checked here.

    One at a time per event loop, the loop getting its turn in between (see
    ``_pacing.py``): the preparation is paced with the spawn, as 500 runs
    started at once would otherwise prepare in one loop iteration.
    """
    # Host names of net_allow: resolved by a run of their own, so before the turn.
    if unresolved(sandbox):
        await resolve_names(sandbox)
    async with SpawnTurn():
        return await _open_in_turn(sandbox, argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                   env=env, cwd=cwd, handlers=handlers, extra_fds=extra_fds,
                                   layer=layer, watch_now=watch_now)


async def _open_in_turn(sandbox: Sandbox, argv: tuple[str, ...], *, stdin: StdioTarget,
                        stdout: StdioTarget, stderr: StdioTarget, env: Mapping[str, str],
                        cwd: str | None, handlers: tuple[Handler, ...],
                        extra_fds: Sequence[int], layer: Layer | None,
                        watch_now: bool) -> SandboxedProcess:
    if sandbox.workdir is not None and layer is None:
        raise PolicyError("workdir", "a workspace needs its layer: run(), open() and "
                                     "pipelines make one (docs/workspaces.md)")
    run_cwd = cwd or sandbox.cwd or sandbox.workdir
    if layer is not None:  # a snapshot's command works in the copy
        run_cwd = layer.where(None if run_cwd is None else os.fspath(run_cwd))
    # Built-in policies first: the first answer other than continue_() decides.
    compiled = peek(sandbox)  # compiled already, nearly always: no coroutine
    if compiled is None:
        compiled = await owner_of(sandbox)
    full_env: dict[str, str] | None = None  # None: the caller's, as it is
    if sandbox.clean_env or sandbox.env or env:
        full_env = minimal_env() if sandbox.clean_env else dict(os.environ)
        full_env.update(sandbox.env)
        full_env.update(env)
    path = resolve_executable(argv[0], os.environ if full_env is None else full_env,
                              str(run_cwd) if run_cwd else None)
    routes, names, notify, self_trapped = _routing(sandbox, compiled, handlers)
    prepare()
    network = await open_network(sandbox, compiled)  # None unless the parent makes it
    # max_memory in a cgroup (issue 11, cgmem): made here, entered by the child before exec.
    memgroup, cgroup_expected = memory_group(sandbox.max_memory, sandbox.memory_mechanism)
    # Two scopes, as trio's _open_process has them: the child's ends of its
    # pipes are closed once it is spawned (or not), ours only if no process
    # takes them over.
    with Cleanup() as cleanup_on_fail:
        if network is not None:
            cleanup_on_fail.callback(network.discard)
        if memgroup is not None:
            cleanup_on_fail.callback(memgroup.discard)
        with Cleanup() as child_ends:
            # One callback per scope for fds made one by one: callbacks cost
            # ~1 us each, and this is every spawn's path.
            theirs: list[int] = []
            child_ends.callback(close_fds, theirs)
            mine: list[int] = []
            cleanup_on_fail.callback(close_fds, mine)
            child_fds, ours = _stdio((stdin, stdout, stderr), theirs, mine)
            if (pooled := for_child(compiled.plan) if network is None else -1) >= 0:
                theirs.append(pooled)  # a namespace made ahead: this child's alone
                child_ends.callback(replenish)  # its replacement, once the spawn is over
            # Pinned names (issue 10; docs/network.md).
            hosts = await pinned_names(sandbox, compiled, workspace=layer is not None)
            if hosts is not None:
                theirs.extend(hosts.fds())
                child_ends.callback(kept, hosts, compiled)
            started = time.monotonic()
            try:
                child = await confined_spawn(sandbox, compiled, notify, lambda trapped: spawn(
                    compiled, path=path, args=[os.fsencode(a) for a in argv], env=full_env,
                    cwd=str(run_cwd) if run_cwd else None, fds=[*child_fds, *extra_fds],
                    notify=trapped, self_trapped=self_trapped & trapped,
                    netns_fd=_netns_fd(network, compiled, pooled),
                    workspace=None if layer is None
                    else layer.spawn_args(sandbox, compiled), hosts=hosts,
                    cgroup_procs=-1 if memgroup is None else memgroup.procs),
                    run_handlers=bool(handlers))
            except SpawnError as exc:
                if layer is not None:
                    layer.refused(exc)  # a layer the child was to build, refused
                raise
            watch(child)  # before anything can fail and leave it unwatched
            if layer is not None:
                layer.mounted()
        cleanup_on_fail.callback(abandon, child)
        protections = compiled.protections(bool(notify), fail_closed=bool(notify)
                                           and child.listener is None
                                           and Subsystem.SECCOMP not in compiled.plan.degraded)
        if layer is not None:
            protections = workspace_protections(protections, layer)
        if hosts is not None:
            protections = pinned_protections(protections, compiled.plan)
        protections = run_protections(protections, memgroup, cgroup_expected)
        unenforced = unenforced_by_run(sandbox, protections, run_handlers=bool(handlers))
        proc = SandboxedProcess._create(
            args=argv, pid=child.pid, pidfd=child.pidfd, listener=child.listener,
            own_group=child.own_group,
            stdin=ours[0], stdout=ours[1], stderr=ours[2],
            protections=protections, unenforced=unenforced, started=started)
        proc._cgroup = memgroup  # removed once reaped
        cleanup_on_fail.pop_all()  # the child and our ends are the process's now
    if layer is not None:  # a snapshot's max_disk, sampled
        layer.watch(lambda: proc._status is None, proc._kill_for, child.pid)
    if memgroup is not None:
        memgroup.watch(lambda: proc._status is None, proc._kill_for)
    if (limits := watched(sandbox, memgroup is not None)) is not None and child.own_group:
        watch_limits(child.pid, limits, alive=lambda: proc._status is None, stop=proc._kill_for)
    if _netns_fd(network, compiled) < 0 and network is not None:
        network.discard()  # the child's setns was refused, and the policy let it go
    elif network is not None:
        proc._network = network  # torn down once the sandbox is reaped
        network.start(child.pid)
    if unenforced:
        warn_degraded(sandbox, unenforced, run_handlers=bool(handlers))
    if (listener := child.listener) is not None:
        # Made on the first notification only: most runs never trap a call.
        proc._supervisor = Standby(listener, _serving(listener, routes, names, proc, layer),
                                   f"asyncsandlock supervisor {child.pid}")
        if watch_now:
            proc._supervisor.watch()
    return proc


def _serving(listener: int, routes: Mapping[int, tuple[Handler, ...]],
             names: Mapping[int, str], proc: SandboxedProcess,
             layer: Layer | None) -> Callable[[], Awaitable[None]]:
    """What serves ``proc``'s listener, the supervisor made when called."""
    def serve() -> Awaitable[None]:
        supervisor = Supervisor(listener, routes, names,
                                lambda: proc._kill_for(ExitReason.KILLED))
        if layer is not None:  # before it serves: the metadata guard's snapshot
            layer.serve(supervisor._listener)
        return supervisor.serve()
    return serve


class Routing(NamedTuple):
    """Who answers which trapped syscall, and what the filter traps for it."""

    routes: Mapping[int, tuple[Handler, ...]]
    names: Mapping[int, str]
    notify: frozenset[str]
    #: Guarded syscalls trapped even on the process itself: a user handler
    #: may care about those, where the guards ignore them (and clone, when
    #: a handler wants to see threads made).
    self_trapped: frozenset[str]


def _routing(sandbox: Sandbox, compiled: Compiled, handlers: tuple[Handler, ...]) -> Routing:
    """The routing of a run: built-in guards first (the first answer other
    than continue_() decides), then the policy's handlers, then the run's.
    Without handlers of the run's own it is the policy's alone, kept on its
    owner (building it costs tens of microseconds, on every spawn)."""
    plan = compiled.plan
    key = (plan.deny, plan.guarded)
    if not handlers and (cached := compiled.routing.get(key)) is not None:
        return cast(Routing, cached)
    builtins = builtin_handlers(sandbox)
    routes, names = route((*builtins, *sandbox.handlers, *handlers), SYSCALLS, plan.deny)
    self_trapped = frozenset(names[nr] for nr, chain in routes.items()
                             if (names[nr] in plan.guarded
                             and any(handler not in builtins for handler in chain))
                             or (names[nr] == "clone" and sees_threads(chain))
                             or (names[nr] == "rt_sigaction" and sees_every_sigaction(chain)))
    found = Routing(routes, names, frozenset(names.values()), self_trapped)
    if not handlers:
        compiled.routing[key] = found
    return found




async def _drain(stream: ByteReceiveStream, into: Capture,
                 full: Callable[[], None] | None = None) -> None:
    """Read ``stream`` to its end into ``into``; past its limit the bytes are
    read on (the child must not block on a full pipe) and dropped, and
    ``full`` (if any) is called once."""
    unyielded = 0
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        while True:
            data = await stream.receive()
            if not into.add(data) and full is not None:
                full()
                full = None
            unyielded += len(data)
            if unyielded >= YIELD_EVERY:
                unyielded = 0
                await anyio.lowlevel.checkpoint()


def _capture(policy: Sandbox | None) -> Capture:
    return Capture(None if policy is None or policy.max_output is None
                   else int(policy.max_output))


def _on_full(policy: Sandbox | None, proc: SandboxedProcess) -> Callable[[], None] | None:
    if policy is None or policy.max_output is None or policy.on_output_limit != "kill":
        return None
    return lambda: proc._kill_for(ExitReason.OUTPUT_LIMIT)


async def _feed(proc: SandboxedProcess, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await proc.stdin.send(data)
    await proc.stdin.aclose()


#: Seconds a run keeps reading pipes that outlive its process when the
#: sandbox has no process group of its own (see ``supervise``).
STRAGGLER_GRACE = 0.5


async def _kill_and_reap_all(procs: Sequence[SandboxedProcess], reason: ExitReason) -> None:
    # Every reason is decided before any signal is sent: once one stage is
    # killed, its neighbours may end by themselves at any moment (a reader
    # sees EOF, a writer gets SIGPIPE), and they are still ended by
    # ``reason``.  Only a sandbox whose process had already exited (a zombie
    # not reaped yet) keeps its own reason.  Then downstream is killed first,
    # so that no reader sees EOF and exits 0 before its own SIGKILL lands.
    if all(proc._finished for proc in procs):
        return  # nothing to signal or reap (the usual case): no cancel scope either
    with anyio.CancelScope(shield=True):
        for proc in procs:
            proc._mark(reason)  # not one that had already exited: see _mark
        for proc in reversed(procs):
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            if not proc._finished:  # else wait() would only be a checkpoint
                await proc.wait()


async def close_all(procs: Sequence[SandboxedProcess]) -> None:
    """Kill and reap those still running (reason KILLED), then close every stream."""
    if all(proc._finished for proc in procs):
        # The usual end of a run: every process is reaped, closing a pipe
        # cannot block, and the caller has had its checkpoints; a cancel
        # scope and a checkpoint per process would only cost event-loop turns.
        for proc in procs:
            proc._close_streams()
        return
    await _kill_and_reap_all(procs, ExitReason.KILLED)
    with anyio.CancelScope(shield=True):
        for proc in procs:
            await proc.aclose()


async def _wait_all(procs: Sequence[SandboxedProcess]) -> None:
    # Each sandbox is reaped (and what it left behind killed) as soon as its
    # first process exits, not when the slowest one does.
    if len(procs) == 1:
        await procs[0].wait()
        return
    async with anyio.create_task_group() as tg:
        for proc in procs[:-1]:
            tg.start_soon(proc.wait)
        await procs[-1].wait()  # in this task: one task fewer to start


async def supervise(procs: Sequence[SandboxedProcess], inputs: Sequence[bytes | None],
                    timeout: float | None,
                    policies: Sequence[Sandbox | None] | None = None) -> list[Result]:
    """Drive started processes to their end as one group.

    ``inputs[i]`` is written to the stdin pipe of ``procs[i]`` (if it has
    one), every stdout/stderr pipe is drained, and all are waited for under
    one ``timeout``: on expiry those still running are killed and reaped
    with :attr:`ExitReason.TIMEOUT`; on cancellation all are killed and
    reaped before it propagates.  ``policies[i]`` is the sandbox of
    ``procs[i]``: its ``max_output`` bounds what is kept of each stream.
    """
    sandboxes = policies if policies is not None else [None] * len(procs)
    outs = [_capture(policy) for policy in sandboxes]
    errs = [_capture(policy) for policy in sandboxes]
    if can_collect(procs):  # the usual run: see _collect.py
        try:
            await collect(procs[0], outs[0], errs[0], _on_full(sandboxes[0], procs[0]), timeout)
        finally:
            await close_all(procs)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return [_result_of(procs[0], outs[0], errs[0])]
    for proc in procs:
        if proc._supervisor is not None:
            proc._supervisor.watch()  # a no-op if open_process watched it
    try:
        async with anyio.create_task_group() as tg:
            for proc, data, out, err, policy in zip(procs, inputs, outs, errs, sandboxes,
                                                    strict=True):
                if proc.stdout is not None:
                    tg.start_soon(_drain, proc.stdout, out, _on_full(policy, proc))
                if proc.stderr is not None:
                    tg.start_soon(_drain, proc.stderr, err, _on_full(policy, proc))
                if proc.stdin is not None:
                    tg.start_soon(_feed, proc, bytes(data or b""))
            if timeout is None:  # no deadline: no cancel scope to enter and leave
                await _wait_all(procs)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await _wait_all(procs)
                if scope.cancelled_caught:
                    await _kill_and_reap_all(procs, ExitReason.TIMEOUT)
            if not all(proc._own_group for proc in procs):
                # Nested (PROCESS_GROUP degraded): what a command left behind
                # was not killed with it and may hold its pipes open forever.
                tg.cancel_scope.deadline = min(tg.cancel_scope.deadline,
                                               anyio.current_time() + STRAGGLER_GRACE)
    finally:
        await close_all(procs)
    # A cancellation that lands while the processes are reaped (a shielded
    # wait) is not seen there, but it has stopped the drain tasks, maybe
    # before they read everything: it propagates here rather than leave a
    # Result with output missing and the scope unaware it was cancelled.
    await anyio.lowlevel.checkpoint_if_cancelled()
    return [_result_of(proc, out, err) for proc, out, err in zip(procs, outs, errs, strict=True)]


def _result_of(proc: SandboxedProcess, out: Capture, err: Capture) -> Result:
    return proc._result(out.value() if proc.stdout is not None else None,
                        err.value() if proc.stderr is not None else None,
                        (out.dropped, err.dropped))


async def run(sandbox: Sandbox, args: Sequence[str], *, input: bytes | None = None,
              stdin: StdioTarget = DEVNULL, stdout: StdioTarget = PIPE, stderr: StdioTarget = PIPE,
              timeout: float | None = None, check: bool = False,
              env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
              handlers: Sequence[Handler] = (), extra_fds: Sequence[int] = (),
              dry_run: bool = False,
              task_status: TaskStatus[SandboxedProcess] = anyio.TASK_STATUS_IGNORED) -> Result:
    """Run ``args`` in ``sandbox`` to the end; see :meth:`Sandbox.run`."""
    timeout = check_timeout(timeout)
    stdin = check_input(input, stdin)
    check_dry_run(sandbox.workdir is not None, dry_run)
    if sandbox.workdir is None:
        proc = await open_process(sandbox, args, stdin=stdin, stdout=stdout, stderr=stderr,
                                  env=env, cwd=cwd, handlers=handlers, extra_fds=extra_fds,
                                  watch_now=False)
        task_status.started(proc)
        (result,) = await supervise([proc], [input], timeout, [sandbox])
    else:
        result = await _run_in_workspace(sandbox, args, input=input, stdin=stdin, stdout=stdout,
                                         stderr=stderr, timeout=timeout, env=env, cwd=cwd,
                                         handlers=handlers, extra_fds=extra_fds,
                                         dry_run=dry_run, task_status=task_status)
    if check:
        result.check_returncode()
    return result


async def _run_in_workspace(sandbox: Sandbox, args: Sequence[str], *, input: bytes | None,
                            stdin: StdioTarget, stdout: StdioTarget, stderr: StdioTarget,
                            timeout: float | None, env: Mapping[str, str] | None,
                            cwd: str | os.PathLike[str] | None, handlers: Sequence[Handler],
                            extra_fds: Sequence[int], dry_run: bool,
                            task_status: TaskStatus[SandboxedProcess]) -> Result:
    """:func:`run` with a copy-on-write workspace (``_workspace.py``): the
    run's own layer, dropped whatever happens unless the caller gets it."""
    layer, proc = await in_layer(sandbox, lambda layer: open_process(
        sandbox, args, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        handlers=handlers, extra_fds=extra_fds, layer=layer))
    try:
        task_status.started(proc)
        (result,) = await supervise([proc], [input], timeout, [sandbox])
        return await settle(layer, result, sandbox.on_exit, dry_run)
    finally:
        if not layer.kept:
            await layer.aclose()  # a no-op once settle() dropped it
