"""The public base class for syscall handlers (see ``docs/handlers.md``)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Final

from ._exceptions import PolicyError
from ._groups import expand

if TYPE_CHECKING:
    from ._kernel._notify import HandlerCtx, NotifAction


class ExceptionPolicy(enum.Enum):
    """What the supervisor answers when a handler raises (or returns
    something that is not a :class:`NotifAction`)."""

    #: Kill the sandbox: fail closed.
    KILL = "kill"
    #: Fail the syscall with EPERM.
    DENY_EPERM = "deny-eperm"
    #: Fail the syscall with EIO.
    DENY_EIO = "deny-eio"
    #: Let the syscall run, as if the handler were not there.
    CONTINUE = "continue"


class Handler:
    """Base class for a syscall handler run on the caller's event loop.

    Subclasses set :attr:`syscalls` to the names of the syscalls to trap
    and implement :meth:`handle` as an ``async def``.  One instance may
    serve any number of sandboxes at once; its calls all run on the event
    loop of the run that trapped them.

    .. versionadded:: 0.1
    """

    #: Syscall names, resolved for the running architecture, or groups such
    #: as ``"@open"`` (:data:`SYSCALL_GROUPS`): a handler deciding on a file
    #: by name must trap every call that reaches it by a name.
    syscalls: ClassVar[tuple[str, ...]] = ()
    #: What to answer when :meth:`handle` fails.
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.KILL

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        """Decide what the trapped syscall described by ``ctx`` does.

        May await anything; only the trapped thread of the child waits.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} syscalls={self.syscalls!r}>"


#: Syscalls the filter answers itself whatever the policy (see ``_kernel/_bpf.py``):
#: clone3 is ENOSYS so that libc falls back to clone, whose flags BPF reads.
_FILTER_ANSWERS: Final = frozenset({"clone3"})


def route(handlers: Sequence[Handler], table: Mapping[str, int],
          deny: frozenset[str] = frozenset()) -> tuple[dict[int, tuple[Handler, ...]],
                                                       dict[int, str]]:
    """Syscall number -> handlers in registration order, and number -> name.

    Names are resolved for the running architecture (``table``); a name this
    architecture lacks is skipped, so one policy serves x86_64 and aarch64.
    A ``@group`` name stands for its members (``_groups.py``); a member the
    policy denies is skipped, since the filter already refuses it.
    Raises :class:`PolicyError` for a handler that could never be called: it
    traps a syscall that ``deny`` (or the filter itself) refuses outright,
    or none of its syscalls exists here.
    """
    routes: dict[int, list[Handler]] = {}
    names: dict[int, str] = {}
    for handler in handlers:
        found = False
        for name, grouped in expand(handler.syscalls):
            if name in deny or name in _FILTER_ANSWERS:
                if grouped:  # the filter already refuses that member of the group
                    continue
                raise PolicyError("handlers", f"{handler!r} traps {name!r}, which the policy "
                                              "denies outright; a handler can never see it")
            if name in table:
                found = True
                routes.setdefault(table[name], []).append(handler)
                names[table[name]] = name
        if not found:
            raise PolicyError("handlers", f"{handler!r}: none of {list(handler.syscalls)} "
                                          "exists on this architecture")
    return {nr: tuple(chain) for nr, chain in routes.items()}, names
