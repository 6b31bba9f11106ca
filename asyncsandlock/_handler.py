"""The public base class for syscall handlers."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ._notify import HandlerCtx, NotifAction


class ExceptionPolicy(enum.Enum):
    """What the supervisor answers when a handler raises."""

    KILL = "kill"
    DENY_EPERM = "deny-eperm"
    DENY_EIO = "deny-eio"
    CONTINUE = "continue"


class Handler:
    """Base class for a syscall handler run on the caller's event loop.

    Subclasses set :attr:`syscalls` to the names of the syscalls to trap and
    implement :meth:`handle`.
    """

    syscalls: ClassVar[tuple[str, ...]] = ()
    on_exception: ClassVar[ExceptionPolicy] = ExceptionPolicy.KILL

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        """Decide what the trapped syscall does."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} syscalls={self.syscalls!r}>"
