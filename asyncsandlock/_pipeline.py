"""``Stage``, ``Pipeline``, ``Gather``: confined commands joined by kernel pipes.

Every stage is its own sandbox (its own process group, Landlock domain and
seccomp filter); the stages only share the pipes between them.  Data never
passes through the parent: it creates each pipe, hands one end to each
stage as an fd of the child, and closes its own copies as soon as that
stage has started.  That last step is what makes EOF work: a reader sees
end-of-file only once *every* copy of the write end is closed, so a parent
that kept one would leave the next stage waiting forever.  The pipes are
created ``O_CLOEXEC`` so that no other child (a later stage, or a command
another task starts meanwhile) inherits a copy; the C core clears the flag
only on the fds it installs as the child's 0, 1, 2, 3, ...

Stages start one after the other (each spawn returns once that child has
exec'd), then run concurrently in one task group under one timeout; a
failure to start any of them kills and reaps those already running.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ._exceptions import PolicyError, SandboxedProcessError, SpawnError
from ._plan import owner_of
from ._process import SandboxedProcess
from ._result import Result
from ._run import DEVNULL, PIPE, close_all, open_checked, run, supervise
from ._validate import (
    StdioTarget,
    check_args,
    check_cwd,
    check_env,
    check_handlers,
    check_input,
    check_timeout,
)
from ._workspace import Layer, in_layer, pipeline_workspace, settle

if TYPE_CHECKING:
    from ._changes import Change
    from ._policy import Sandbox
    from ._workspace import Workspace

#: The environment variable that names a Gather consumer's inputs.
INPUTS_ENV = "ASYNCSANDLOCK_INPUTS"

_RUN_KWARGS = frozenset({"input", "stdin", "stdout", "stderr", "timeout", "check", "env", "cwd",
                         "handlers"})
_VALIDATORS: dict[str, Callable[[str, Any], object]] = {
    "env": check_env, "cwd": check_cwd, "timeout": lambda _name, value: check_timeout(value),
}


@dataclass(frozen=True, slots=True, eq=False, init=False)
class Stage:
    """One command bound to one :class:`Sandbox`; made by :meth:`Sandbox.cmd`.

    ``stage | other`` makes a :class:`Pipeline`; :meth:`run` runs the stage
    alone, exactly like :meth:`Sandbox.run`.
    """

    sandbox: Sandbox
    args: tuple[str, ...]
    #: The run() keyword arguments given to :meth:`Sandbox.cmd` (validated).
    kwargs: Mapping[str, Any]

    def __init__(self) -> None:
        raise TypeError("Stage objects are created by Sandbox.cmd()")

    @classmethod
    def _create(cls, sandbox: Sandbox, args: Sequence[str], kwargs: Mapping[str, Any]) -> Stage:
        checked = dict(kwargs)
        for key, value in kwargs.items():
            if key not in _RUN_KWARGS:
                raise PolicyError(key, f"not an argument of run(); expected one of "
                                       f"{sorted(_RUN_KWARGS)}")
            if key == "handlers":  # here, not at its spawn: other stages may be running then
                checked[key] = check_handlers(key, value, deny=sandbox.extra_deny_syscalls)
            elif key in _VALIDATORS:
                checked[key] = _VALIDATORS[key](key, value)
        check_input(kwargs.get("input"), kwargs.get("stdin"))
        self = object.__new__(cls)
        object.__setattr__(self, "sandbox", sandbox)
        object.__setattr__(self, "args", check_args(args))
        object.__setattr__(self, "kwargs", MappingProxyType(checked))
        return self

    def __repr__(self) -> str:
        return f"<Stage {' '.join(self.args)!r} in {self.sandbox!r}>"

    def __or__(self, other: Stage | Pipeline) -> Pipeline:
        if isinstance(other, (Stage, Pipeline)):
            return Pipeline([self, *_stages_of(other)])
        return NotImplemented

    async def run(self, **kwargs: Any) -> Result:
        """Run this stage alone; ``kwargs`` override those given to ``cmd()``.

        Same semantics as :meth:`Sandbox.run`.
        """
        return await run(self.sandbox, self.args, **{**self.kwargs, **kwargs})


def _stages_of(item: Stage | Pipeline) -> Sequence[Stage]:
    return (item,) if isinstance(item, Stage) else item.stages


@dataclass(frozen=True, slots=True, eq=False)
class Pipeline:
    """Stages whose stdout feeds the next one's stdin: ``a | b | c``.

    Each stage runs in its own sandbox, concurrently; the data flows
    through kernel pipes between the stages, never through the caller.
    """

    stages: Sequence[Stage]

    def __post_init__(self) -> None:
        if isinstance(self.stages, Stage) or not isinstance(self.stages, Iterable):
            raise PolicyError("stages", f"expected a sequence of Stage, got {self.stages!r}")
        stages = tuple(self.stages)
        if not stages:
            raise PolicyError("stages", "a pipeline needs at least one stage")
        for stage in stages:
            if not isinstance(stage, Stage):
                raise PolicyError("stages", f"{stage!r} is not a Stage (use Sandbox.cmd())")
        object.__setattr__(self, "stages", stages)

    def __repr__(self) -> str:
        return "<Pipeline " + " | ".join(repr(" ".join(s.args)) for s in self.stages) + ">"

    def __or__(self, other: Stage | Pipeline) -> Pipeline:
        if isinstance(other, (Stage, Pipeline)):
            return Pipeline([*self.stages, *_stages_of(other)])
        return NotImplemented

    async def run(self, *, input: bytes | None = None, stdin: StdioTarget = DEVNULL,
                  stdout: StdioTarget = PIPE, stderr: StdioTarget = PIPE,
                  timeout: float | None = None, check: bool = False,
                  task_status: TaskStatus[tuple[SandboxedProcess, ...]]
                  = anyio.TASK_STATUS_IGNORED) -> PipelineResult:
        """Run every stage to its end and return a :class:`PipelineResult`.

        ``input``/``stdin`` feed the first stage and ``stdout``/``stderr``
        are the last stage's, as in :meth:`Sandbox.run` (each stage's
        stderr is captured by default).  ``timeout`` covers the whole
        pipeline: on expiry every stage still running is killed and reaped
        with ``reason=TIMEOUT``.  Cancellation kills and reaps every stage,
        then propagates.  A stage that fails to start makes the others be
        killed and reaped, then raises :class:`SpawnError` with ``stage``
        set to its index.  ``check=True`` raises
        :class:`SandboxedProcessError` unless every stage succeeded.
        """
        check_timeout(timeout)
        nodes = _chain(self.stages, 0, head=None, tail=None)
        _feed_first(nodes[0], input, stdin)
        _override(nodes[-1], "stdout", stdout, PIPE)
        _override(nodes[-1], "stderr", stderr, PIPE)
        return await _execute(nodes, timeout, check, task_status)


@dataclass(frozen=True, slots=True, eq=False)
class Gather:
    """Fan-in: several sources feed one consumer, each through its own pipe.

    The last source becomes the consumer's stdin, the others its fds 3, 4,
    ... in order; ``ASYNCSANDLOCK_INPUTS="name:fd,..."`` is set in the
    consumer's environment and :data:`asyncsandlock.inputs` opens them by
    name.  A source may be a :class:`Pipeline`, and so may ``into`` (its
    first stage is the consumer).
    """

    sources: Mapping[str, Stage | Pipeline]
    into: Stage | Pipeline = field(kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.sources, Mapping) or not self.sources:
            raise PolicyError("sources", f"expected a non-empty mapping of name to Stage or "
                                         f"Pipeline, got {self.sources!r}")
        for name, source in self.sources.items():
            if not isinstance(name, str) or not name or any(c in name for c in ",:=\0"):
                raise PolicyError("sources", f"{name!r} is not a valid input name (a non-empty "
                                             "str without ',', ':', '=' or NUL)")
            if not isinstance(source, (Stage, Pipeline)):
                raise PolicyError("sources", f"{name!r}: {source!r} is not a Stage or Pipeline")
        if not isinstance(self.into, (Stage, Pipeline)):
            raise PolicyError("into", f"{self.into!r} is not a Stage or Pipeline")
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def __repr__(self) -> str:
        return f"<Gather {list(self.sources)} into {self.into!r}>"

    async def run(self, *, stdout: StdioTarget = PIPE, stderr: StdioTarget = PIPE,
                  timeout: float | None = None, check: bool = False,
                  task_status: TaskStatus[tuple[SandboxedProcess, ...]]
                  = anyio.TASK_STATUS_IGNORED) -> PipelineResult:
        """Run every source and the consumer to their end.

        Same semantics as :meth:`Pipeline.run`; the result's ``stages`` are
        the sources' stages in order, then the consumer's.
        """
        check_timeout(timeout)
        nodes: list[_Node] = []
        links: list[_Link] = []
        for name, source in self.sources.items():
            links.append(link := _Link())
            nodes += _chain(_stages_of(source), len(nodes), head=None, tail=link,
                            label=f"source {name!r}")
        *extra, last = links
        sinks = _chain(_stages_of(self.into), len(nodes), head=last, tail=None, label="consumer")
        fds = {name: 3 + i for i, name in enumerate(list(self.sources)[:-1])}
        fds[list(self.sources)[-1]] = 0
        sinks[0].extra = extra
        sinks[0].env = {**(sinks[0].env or {}),
                        INPUTS_ENV: ",".join(f"{name}:{fd}" for name, fd in fds.items())}
        nodes += sinks
        _override(nodes[-1], "stdout", stdout, PIPE)
        _override(nodes[-1], "stderr", stderr, PIPE)
        return await _execute(nodes, timeout, check, task_status)


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """The outcome of :meth:`Pipeline.run` or :meth:`Gather.run`."""

    #: Every stage's :class:`Result`, in order (its ``stdout`` is None
    #: where the stage wrote into a pipe).
    stages: tuple[Result, ...]
    # -- copy-on-write workspace (issue 12, docs/workspaces.md) --
    #: What the stages with a workdir changed in it (they share one layer);
    #: None when no stage has one.
    changes: tuple[Change, ...] | None = None
    #: With ``on_exit="keep"``: the shared layer's changes, to commit or abort.
    workspace: Workspace | None = field(default=None, repr=False)

    @property
    def stdout(self) -> bytes | None:
        """The last stage's captured stdout."""
        return self.stages[-1].stdout

    @property
    def stderr(self) -> bytes | None:
        """The last stage's captured stderr."""
        return self.stages[-1].stderr

    @property
    def returncode(self) -> int:
        """The last stage's return code."""
        return self.stages[-1].returncode

    @property
    def success(self) -> bool:
        """True only if every stage succeeded (like ``set -o pipefail``)."""
        return all(stage.success for stage in self.stages)

    def check_returncode(self) -> None:
        """Raise :class:`SandboxedProcessError` for the first stage that failed."""
        for index, stage in enumerate(self.stages):
            if not stage.success:
                raise SandboxedProcessError(stage.returncode, list(stage.args), self.stdout,
                                            stage.stderr, f"stage {index}: {stage.reason.value}")


class _Link:
    """A pipe between two stages; the parent holds each end only until the
    stage that uses it has started."""

    __slots__ = ("read", "write")

    def __init__(self) -> None:
        self.read = self.write = -1

    def open(self) -> None:
        self.read, self.write = os.pipe2(os.O_CLOEXEC)

    def close_read(self) -> None:
        if self.read >= 0:
            fd, self.read = self.read, -1
            os.close(fd)

    def close_write(self) -> None:
        if self.write >= 0:
            fd, self.write = self.write, -1
            os.close(fd)


@dataclass(slots=True)
class _Node:
    """One stage as wired into a pipeline: stdio slots may be links."""

    stage: Stage
    where: str
    input: bytes | None
    stdin: StdioTarget | _Link
    stdout: StdioTarget | _Link
    stderr: StdioTarget
    env: Mapping[str, str] | None
    extra: list[_Link] = field(default_factory=list)

    def links(self) -> Iterator[_Link]:
        for slot in (self.stdin, self.stdout, *self.extra):
            if isinstance(slot, _Link):
                yield slot

    def close_ends(self) -> None:
        """Close the parent's copies of the pipe ends this stage was given."""
        if isinstance(self.stdin, _Link):
            self.stdin.close_read()
        if isinstance(self.stdout, _Link):
            self.stdout.close_write()
        for link in self.extra:
            link.close_read()

    async def start(self, layer: Layer | None = None) -> SandboxedProcess:
        # The args and env were validated by cmd() into immutable copies (the
        # env Gather adds is made of validated names); the directory may have
        # gone and handlers are mutable objects, so those are checked again.
        kwargs = self.stage.kwargs
        return await open_checked(
            self.stage.sandbox, self.stage.args,
            stdin=self.stdin.read if isinstance(self.stdin, _Link) else self.stdin,
            stdout=self.stdout.write if isinstance(self.stdout, _Link) else self.stdout,
            stderr=self.stderr, env=self.env if self.env is not None else {},
            cwd=check_cwd("cwd", kwargs.get("cwd")),
            handlers=check_handlers("handlers", kwargs.get("handlers", ())),
            extra_fds=[link.read for link in self.extra],
            layer=layer if self.stage.sandbox.workdir is not None else None)


def _chain(stages: Sequence[Stage], first: int, *, head: _Link | None, tail: _Link | None,
           label: str = "") -> list[_Node]:
    """Wire ``stages`` one into the next; ``head``/``tail`` join the ends to
    other stages.  Rejects a stage whose own stdio arguments the wiring
    would override."""
    links = [*(_Link() for _ in stages[1:]), tail]
    nodes = []
    stdin: _Link | None = head
    for offset, (stage, stdout) in enumerate(zip(stages, links, strict=True)):
        kwargs = stage.kwargs
        where = f"stage {first + offset} ({label + ', ' if label else ''}{stage.args[0]!r})"
        for key in ("timeout", "check"):
            if key in kwargs:
                raise PolicyError(key, f"{where}: pass {key}= to run() of the whole pipeline, "
                                       "not to a stage")
        for key in ("stdin", "input"):
            if stdin is not None and key in kwargs:
                raise PolicyError(key, f"{where} reads from the stage before it")
        if stdout is not None and "stdout" in kwargs:
            raise PolicyError("stdout", f"{where} writes into the stage after it")
        nodes.append(_Node(stage, where, kwargs.get("input"),
                           stdin if stdin is not None
                           else check_input(kwargs.get("input"), kwargs.get("stdin", DEVNULL)),
                           stdout if stdout is not None else kwargs.get("stdout", PIPE),
                           kwargs.get("stderr", PIPE), kwargs.get("env")))
        stdin = stdout
    return nodes


def _feed_first(node: _Node, input: bytes | None, stdin: StdioTarget) -> None:
    """Apply run()'s ``input``/``stdin`` to the first stage."""
    target = check_input(input, stdin)
    if input is None and stdin == DEVNULL:
        return  # run()'s default: the stage keeps its own (DEVNULL unless cmd() said)
    for key in ("input", "stdin"):
        if key in node.stage.kwargs:
            raise PolicyError(key, f"{node.where} was given {key}= by cmd(), and run() was "
                                   "given input or stdin too")
    node.input, node.stdin = input, target


def _override(node: _Node, key: str, value: StdioTarget, default: StdioTarget) -> None:
    """Apply run()'s ``stdout``/``stderr`` to the last stage, unless left at the default."""
    if value is default:
        return
    if key in node.stage.kwargs:
        raise PolicyError(key, f"{node.where} was given {key}= by cmd() and by run()")
    setattr(node, key, value)


async def _start(nodes: Sequence[_Node], layer: Layer | None = None) -> list[SandboxedProcess]:
    """Start every stage, or none: on any failure the started ones are
    killed and reaped, and a :class:`SpawnError` names the stage.
    ``layer``: the workspace the stages with a workdir share."""
    for node in nodes:
        # Policy refusals (ConfinementUnavailable, PolicyError) come out
        # here, before any process exists.
        await owner_of(node.stage.sandbox)
    links = list(dict.fromkeys(link for node in nodes for link in node.links()))
    procs: list[SandboxedProcess] = []
    try:
        for link in links:
            link.open()
        for index, node in enumerate(nodes):
            try:
                procs.append(await node.start(layer))
            except SpawnError as exc:
                exc.stage = index
                raise
            finally:
                node.close_ends()
    except BaseException:
        await close_all(procs)
        raise
    finally:
        for link in links:
            link.close_read()
            link.close_write()
    return procs


async def _execute(nodes: Sequence[_Node], timeout: float | None, check: bool,
                   task_status: TaskStatus[tuple[SandboxedProcess, ...]]) -> PipelineResult:
    shared = pipeline_workspace([node.stage.sandbox for node in nodes])
    if shared is not None:  # issue 12: one layer for every stage with a workdir
        result = await _execute_in_workspace(shared, nodes, timeout, task_status)
    else:
        procs = await _start(nodes)
        task_status.started(tuple(procs))
        result = PipelineResult(tuple(await supervise(procs, [n.input for n in nodes], timeout,
                                                      [n.stage.sandbox for n in nodes])))
    if check:
        result.check_returncode()
    return result


async def _execute_in_workspace(policy: Sandbox, nodes: Sequence[_Node], timeout: float | None,
                                task_status: TaskStatus[tuple[SandboxedProcess, ...]]
                                ) -> PipelineResult:
    """:func:`_execute` with the workspace its stages share: settled once
    every stage has ended, committed (``on_exit="commit"``) only if every
    stage succeeded."""
    layer, procs = await in_layer(policy, lambda layer: _start(nodes, layer), shared=True)
    try:
        task_status.started(tuple(procs))
        stages = tuple(await supervise(procs, [n.input for n in nodes], timeout,
                                       [n.stage.sandbox for n in nodes]))
        last = await settle(layer, stages[-1], policy.on_exit, False,
                            all(stage.success for stage in stages))
        return PipelineResult(stages, last.changes, last.workspace)
    finally:
        if not layer.kept:
            await layer.aclose()  # a no-op once settle() dropped it
