"""Built-in supervised policies, one module each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._handler import Handler
from .process_limit import ProcessLimit

if TYPE_CHECKING:
    from .._policy import Sandbox


def builtin_handlers(sandbox: Sandbox) -> tuple[Handler, ...]:
    """The built-in handlers ``sandbox``'s policy needs.  ``open_process``
    registers them before the user's handlers, so they are asked first and a
    denial of theirs decides."""
    handlers: list[Handler] = []
    if sandbox.max_processes is not None:
        handlers.append(ProcessLimit(sandbox.max_processes))
    return tuple(handlers)


__all__ = ["ProcessLimit", "builtin_handlers"]
