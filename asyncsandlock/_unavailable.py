"""Decisions about confinement steps the host refuses (``on_unavailable``).

Where a refusal shows
---------------------
Landlock's absence, and the Landlock rights an older ABI lacks, show in the
parent, when the plan is compiled (``_plan.py``).  Everything else shows in
the child, as the confinement step that failed: the spawn reports the step
and the errno, we map the step to a :class:`Subsystem`, put it to the
policy, and, if the policy returns, spawn again without that step.  Nothing
is skipped that the policy did not agree to, and what it agreed to is
remembered by the Sandbox's ``Compiled`` (``_plan.py``): the policy is asked once per
:class:`Sandbox`, whatever the number of runs (a refusal is not remembered:
nothing ran, and the next run asks again).

The seccomp step is ambiguous.  With ``SECCOMP_FILTER_FLAG_NEW_LISTENER``,
EBUSY can only mean "already under a listener" (a nested sandbox), but
EINVAL is what gVisor answers for the flag *and* what a kernel without
seccomp filters answers for the filter.  A throwaway child tells them apart
(``_features.seccomp_trials``, once per process): if a plain filter is
accepted here, the listener was refused.

Without a supervisor, the seccomp filter still holds but nothing is
trapped: syscall handlers and ``max_processes`` are not enforced.  Without
seccomp there is no supervisor either, so a run that needs one puts
SUPERVISOR to the policy as well.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from ._enforcement import consequence, needs_supervisor
from ._exceptions import SpawnError
from ._features import seccomp_trials
from ._plan import _LANDLOCK_PARTS, Compiled, _decide
from ._types import Subsystem

if TYPE_CHECKING:
    from ._policy import Sandbox

T = TypeVar("T")
logger = logging.getLogger("asyncsandlock")

# The child's confinement steps (csrc/spawn.c) that a host may refuse.
_STEP_SUBSYSTEMS = {"landlock": Subsystem.LANDLOCK, "seccomp": Subsystem.SECCOMP,
                    "listener": Subsystem.SUPERVISOR, "setpgid": Subsystem.PROCESS_GROUP,
                    "identity": Subsystem.IDENTITY,
                    "network": Subsystem.NETWORK_NAMESPACE,
                    "hosts": Subsystem.PINNED_NAMES}


def refused_subsystem(step: str, err: int, *, listener: bool) -> Subsystem | None:
    """The subsystem a failed child step belongs to, or None if it is not a
    refusal the policy may waive (``chdir``, ``execve``, ``no_new_privs``, ...)."""
    if err == errno.ECHILD:
        return None  # the child died there (killed from outside): no refusal to waive
    subsystem = _STEP_SUBSYSTEMS.get(step)
    if subsystem is Subsystem.SECCOMP and listener and (
            err == errno.EBUSY or seccomp_trials()[0]):
        return Subsystem.SUPERVISOR
    return subsystem


async def degrade(policy: Sandbox, compiled: Compiled, subsystem: Subsystem, error: OSError, *,
                  run_handlers: bool = False) -> None:
    """Put ``subsystem``'s refusal to ``policy`` (once per Sandbox); raises if it refuses.
    ``run_handlers``: the run asking has handlers of its own."""
    if subsystem is Subsystem.SUPERVISOR and not needs_supervisor(policy, run_handlers):
        # Only the built-in guards wanted it, and without them the filter
        # denies what they would decide: that fails closed, nothing to ask.
        compiled.refused(subsystem, error)
        return
    await compiled.degrade(subsystem, error, lambda: _decide(policy, subsystem, error,
                                                             run_handlers=run_handlers))


async def _notify_for(policy: Sandbox, compiled: Compiled, wanted: frozenset[str],
                      run_handlers: bool) -> frozenset[str]:
    """The syscalls to trap: ``wanted``, or none once the supervisor is degraded
    (or refused, where only the built-in guards want it: they fail closed)."""
    if not wanted:
        return wanted
    if Subsystem.SECCOMP in compiled.plan.degraded:
        # No filter, no listener: what needs the supervisor is unavailable too.
        cause = compiled.refusal(Subsystem.SECCOMP)
        await degrade(policy, compiled, Subsystem.SUPERVISOR, OSError(
            cause.errno if cause is not None else errno.ENOSYS,
            "seccomp user notification needs a seccomp filter, which this host refused"),
            run_handlers=run_handlers)
        return frozenset()
    refusal = compiled.refusal(Subsystem.SUPERVISOR)
    if refusal is not None and Subsystem.SUPERVISOR not in compiled.plan.degraded:
        if not needs_supervisor(policy, run_handlers):
            return frozenset()
        # This run has handlers of its own: now the policy must decide.
        await degrade(policy, compiled, Subsystem.SUPERVISOR, refusal,
                      run_handlers=run_handlers)
    return frozenset() if Subsystem.SUPERVISOR in compiled.plan.degraded else wanted


async def confined_spawn(policy: Sandbox, compiled: Compiled, wanted: frozenset[str],
                         start: Callable[[frozenset[str]], T], *,
                         run_handlers: bool = False) -> T:
    """``start(notify)``, spawned again without each step the host refuses and
    the policy lets go (``compiled``'s plan then says so); ``wanted`` are the
    syscalls the handlers trap, and ``run_handlers`` says whether the run has
    handlers of its own."""
    while True:
        notify = await _notify_for(policy, compiled, wanted, run_handlers)
        plan = compiled.plan  # what start() spawns with: nothing is awaited in between
        try:
            return start(notify)
        except SpawnError as exc:
            listener = bool(notify) and Subsystem.SECCOMP not in plan.degraded
            subsystem = refused_subsystem(exc.step, exc.errno or 0, listener=listener)
            if subsystem is None or subsystem in plan.degraded:
                raise
            await degrade(policy, compiled, subsystem, exc, run_handlers=run_handlers)


def warn_degraded(policy: Sandbox, unenforced: Mapping[Subsystem, tuple[str, ...]], *,
                  run_handlers: bool = False) -> None:
    """Log one warning for a run that goes without some subsystem, naming
    what goes unenforced (``unenforced``: the run's, per degraded subsystem)."""
    missing = list(unenforced)
    if not missing:
        return
    if Subsystem.LANDLOCK in missing:  # its parts go with it, and its words say so
        missing = [sub for sub in missing if sub not in _LANDLOCK_PARTS]
    name = repr(policy.name) if policy.name else "sandbox"
    lost = "; ".join(f"{sub.value}: {text}" for sub in missing
                     if (text := consequence(policy, sub, run_handlers=run_handlers)))
    logger.warning("%s runs without %s: the host refused %s and on_unavailable allowed it; "
                   "unenforced: %s", name, ", ".join(sub.value for sub in missing),
                   "it" if len(missing) == 1 else "them", lost or "nothing")
