"""The error types of asyncsandlock."""

from __future__ import annotations

import errno as _errno
import os
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._types import Subsystem


class SandboxError(Exception):
    """Base class of every error asyncsandlock raises itself."""


class PolicyError(SandboxError, ValueError):
    """A :class:`Sandbox` field or a run argument is invalid.

    Raised before any process exists.  ``field`` names the offending field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class SpawnError(SandboxError, OSError):
    """Starting the sandboxed command failed.

    ``step`` names the confinement step that failed (``"landlock"``,
    ``"seccomp"``, ``"chdir"``, ``"execve"``, ...) and ``errno`` is the real
    error the kernel returned for it.  The exception is also an instance of
    the matching built-in :class:`OSError` subclass, so a missing command is
    a :class:`FileNotFoundError` and a refused one a :class:`PermissionError`.
    """

    step: str
    stage: int | None

    def __new__(cls, err: int, message: str, *, step: str, filename: str | None = None,
                stage: int | None = None) -> SpawnError:
        # OSError fills errno/strerror/filename in __new__, not __init__.
        concrete = _concrete_class(err)
        args = (err, message) if filename is None else (err, message, filename)
        self: SpawnError = OSError.__new__(concrete, *args)
        return self

    def __init__(self, err: int, message: str, *, step: str, filename: str | None = None,
                 stage: int | None = None) -> None:
        self.step = step
        self.stage = stage

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_spawn_error, (self.errno, self.strerror, self.step,
                                       self.filename, self.stage))

    def __str__(self) -> str:
        where = f"stage {self.stage}: " if self.stage is not None else ""
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        target = f": {self.filename!r}" if self.filename is not None else ""
        return f"{where}{self.step} failed ({name}): {self.strerror}{target}"


def _rebuild_spawn_error(err: int, message: str, step: str, filename: str | None,
                         stage: int | None) -> SpawnError:
    return SpawnError(err, message, step=step, filename=filename, stage=stage)


_CONCRETE: dict[type[OSError], type[SpawnError]] = {}


def _concrete_class(err: int) -> type[SpawnError]:
    """SpawnError mixed with the OSError subclass Python maps ``err`` to."""
    builtin = type(OSError(err, os.strerror(err)))
    if builtin is OSError:
        return SpawnError
    cls = _CONCRETE.get(builtin)
    if cls is None:
        cls = type(f"Spawn{builtin.__name__}", (SpawnError, builtin), {})
        _CONCRETE[builtin] = cls
    return cls


class ConfinementUnavailable(SandboxError):
    """The host refused a confinement step and the policy did not allow
    running without it.

    ``unenforced`` names the fields of the policy that running without
    ``subsystem`` would have left unenforced (as ``Result.unenforced`` does
    for a run that went ahead); the message says it, with ``hint``.
    """

    def __init__(self, subsystem: Subsystem, err: int, hint: str) -> None:
        super().__init__(subsystem, err, hint)
        self.subsystem = subsystem
        self.errno = err
        self.hint = hint
        self.unenforced: tuple[str, ...] = ()
        self._consequence = ""

    def _name_unenforced(self, fields: tuple[str, ...], consequence: str) -> None:
        """Set by the policy's runner, who knows the policy (``strict`` does not)."""
        self.unenforced = fields
        self._consequence = consequence

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        without = (f"; running without it would leave unenforced: {self._consequence}"
                   if self._consequence else "")
        return (f"{self.subsystem.value} is unavailable on this host ({name}: "
                f"{os.strerror(self.errno)}){without}; hint: {self.hint}")


class SandboxedProcessError(SandboxError, subprocess.CalledProcessError):
    """Raised by ``check=True`` when the sandboxed command did not succeed."""

    def __init__(self, returncode: int, cmd: Sequence[str] | str, output: bytes | None = None,
                 stderr: bytes | None = None, reason: str = "") -> None:
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)
        self.reason = reason

    def __str__(self) -> str:
        base = subprocess.CalledProcessError.__str__(self)
        return f"{base} ({self.reason})" if self.reason else base
