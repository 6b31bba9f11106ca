"""The public base class for syscall handlers (see ``docs/handlers.md``)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ._notify import HandlerCtx, NotifAction


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
