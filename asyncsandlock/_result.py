"""``Result``: what a finished sandboxed command left behind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ._exceptions import SandboxedProcessError
from ._types import ExitReason, Protection, Subsystem

if TYPE_CHECKING:
    from ._changes import Change
    from ._workspace import Workspace


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of :meth:`Sandbox.run`; field-compatible with
    :class:`subprocess.CompletedProcess`."""

    args: Sequence[str]
    returncode: int
    stdout: bytes | None
    stderr: bytes | None
    reason: ExitReason
    signal: int | None
    duration: float
    protections: Mapping[Subsystem, Protection] = field(repr=False)
    #: Per subsystem the run went without (:attr:`Protection.DEGRADED` in
    #: :attr:`protections`), the fields of the policy it left unenforced:
    #: e.g. ``{Subsystem.SUPERVISOR: ("handlers", "max_processes")}``.
    #: Empty when everything held.  See ``docs/degradation.md``.
    unenforced: Mapping[Subsystem, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), repr=False)
    #: Bytes of stdout dropped beyond the policy's ``max_output`` (0: none).
    stdout_truncated: int = 0
    #: Bytes of stderr dropped beyond the policy's ``max_output`` (0: none).
    stderr_truncated: int = 0
    # -- copy-on-write workspace (issue 12, docs/workspaces.md) --
    #: What the command changed in the policy's ``workdir``, sorted by path;
    #: None without a workdir.
    changes: tuple[Change, ...] | None = field(default=None, repr=False)
    #: With ``on_exit="keep"``: the changes, to ``await commit()`` or
    #: ``await abort()``; else None.
    workspace: Workspace | None = field(default=None, repr=False)

    @property
    def success(self) -> bool:
        """True if the command exited by itself with status 0."""
        return self.reason is ExitReason.EXITED and self.returncode == 0

    def check_returncode(self) -> None:
        """Raise :class:`SandboxedProcessError` unless :attr:`success`."""
        if not self.success:
            raise SandboxedProcessError(self.returncode, list(self.args), self.stdout,
                                        self.stderr, self.reason.value)
