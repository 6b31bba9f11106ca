"""The loop on a listener fd: receive, dispatch to handlers, answer.

It runs on the caller's event loop for the life of one sandboxed process.
Each notification is handled in its own task, so a handler that waits (for
a lock, an approval, the network) holds only the trapped thread of the
child; other notifications and other sandboxes go on being served.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from collections.abc import Callable, Mapping, Sequence

import anyio

from ._handler import ExceptionPolicy, Handler
from ._notify import HandlerCtx, Listener, NotifAction, Notification

logger = logging.getLogger("asyncsandlock")

_EXCEPTION_ACTIONS = {
    ExceptionPolicy.KILL: NotifAction.kill(),
    ExceptionPolicy.DENY_EPERM: NotifAction.errno(errno.EPERM),
    ExceptionPolicy.DENY_EIO: NotifAction.errno(errno.EIO),
    ExceptionPolicy.CONTINUE: NotifAction.continue_(),
}


class Supervisor:
    """Serves one listener fd; the fd is owned (and closed) by the caller."""

    def __init__(self, listener: int, routes: Mapping[int, Sequence[Handler]],
                 names: Mapping[int, str], kill: Callable[[], None]) -> None:
        self._listener = Listener(listener)
        self._routes = routes
        self._names = names
        self._kill = kill

    def __repr__(self) -> str:
        return f"<Supervisor fd={self._listener.fd} syscalls={sorted(self._names.values())}>"

    async def serve(self) -> None:
        """Serve until every task of the sandbox has exited (POLLHUP)."""
        fd = self._listener.fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.wait_readable(fd)
                revents = 0
                for _fd, ev in poller.poll(0):
                    revents |= ev
                if revents & select.POLLIN:
                    notif = self._listener.recv()
                    if notif is not None:
                        tg.start_soon(self._handle, notif)
                elif revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    return

    async def _handle(self, notif: Notification) -> None:
        action = NotifAction.continue_()
        ctx = HandlerCtx(self._listener, notif, self._names.get(notif.nr, str(notif.nr)))
        try:
            for handler in self._routes.get(notif.nr, ()):
                action = await self._run_one(handler, ctx)
                if action.kind != "continue":
                    break
        finally:
            ctx._close()
        self._answer(notif.id, action)

    async def _run_one(self, handler: Handler, ctx: HandlerCtx) -> NotifAction:
        try:
            action = await handler.handle(ctx)
            if not isinstance(action, NotifAction):
                raise TypeError(f"{handler!r}.handle() returned {action!r}, not a NotifAction")
        except Exception:
            logger.exception("syscall handler %r failed on %s; answering %s", handler,
                             ctx.syscall, handler.on_exception.name)
            return _EXCEPTION_ACTIONS[handler.on_exception]
        return action

    def _answer(self, nid: int, action: NotifAction) -> None:
        listener = self._listener
        if action.kind == "continue":
            listener.respond(nid, cont=True)
        elif action.kind == "errno":
            listener.respond(nid, error=-action.value)
        elif action.kind == "return":
            listener.respond(nid, val=action.value)
        elif action.kind == "inject_fd":
            listener.add_fd(nid, action.fd, action.cloexec)
        else:
            # Kill first: the trapped syscall must never complete.
            self._kill()
            listener.respond(nid, error=-errno.EPERM)


def route(handlers: Sequence[Handler], table: Mapping[str, int]) -> tuple[
        dict[int, list[Handler]], dict[int, str]]:
    """Syscall number -> handlers in registration order, and number -> name."""
    routes: dict[int, list[Handler]] = {}
    names: dict[int, str] = {}
    for handler in handlers:
        for name in handler.syscalls:
            if name in table:
                routes.setdefault(table[name], []).append(handler)
                names[table[name]] = name
    return routes, names


def close_fd(fd: int) -> None:
    """Close ``fd`` after telling the event loop it is going away."""
    anyio.notify_closing(fd)
    os.close(fd)
