"""The loop on a listener fd: receive, dispatch to handlers, answer.

It runs on the caller's event loop for the life of one sandboxed process.

Handlers are stepped inline
---------------------------
Most handlers decide without waiting for anything.  Giving each
notification its own task would cost more than the whole round trip with
the kernel, so :meth:`Supervisor.pump` steps the handlers' coroutines
itself, from the task that serves the listener, with ``yield from`` in one
generator that serves every chain (:func:`_chains`).  A coroutine that
finishes in that first step is answered at once, with no task created and
no trip through the scheduler.

A coroutine that suspends (it awaits a lock, a queue, the network) has
already told the event loop which task to wake: the current one.  So that
task keeps it: it stops serving the listener, hands that job to a fresh
task, and drives the chain to its end with :func:`resume`, which re-yields
the value the coroutine suspended on and forwards everything else.  A slow
handler therefore holds only the trapped thread of the child; other
notifications, of this sandbox and of others, go on being served.

Where "the task that serves the listener" comes from depends on the
backend: a task looping on ``wait_readable`` here (Trio, and the portable
path), or a reader callback lent the identity of a parked task on asyncio
(see ``_notify_loop.py``).

Order
-----
Built-in confinement (the BPF filter) has decided before a notification
exists: a syscall it denies never reaches a handler.  The handlers of one
syscall run in registration order; the first answer other than
``continue_()`` decides and the rest are not asked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import types
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import Any, Final, TypeAlias, cast

import anyio
import anyio.lowlevel

from . import _netfast, _notify_loop
from ._handler import ExceptionPolicy, Handler
from ._kernel._notify import (
    _ANSWERED,
    _LIVE,
    FLAG_CONTINUE,
    HandlerCtx,
    Listener,
    NotifAction,
    _continue,
    _step,
)
from .handlers.net import finish_connect

logger = logging.getLogger("asyncsandlock")

#: At most this many notifications are served per wake-up before the event
#: loop gets its turn back.  With SYNC_WAKE_UP the target usually traps
#: again before we poll, so a busy sandbox would otherwise never yield.
BATCH: Final = 64

_EXCEPTION_ACTIONS: Final = {
    ExceptionPolicy.KILL: NotifAction.kill(),
    ExceptionPolicy.DENY_EPERM: NotifAction.errno(errno.EPERM),
    ExceptionPolicy.DENY_EIO: NotifAction.errno(errno.EIO),
    ExceptionPolicy.CONTINUE: NotifAction.continue_(),
}

_Coro = Coroutine[Any, Any, Any]
_Chains: TypeAlias = "types.GeneratorType[Any, Any, None]"  # not subscriptable at run time


@types.coroutine
def resume(chains: _Chains, yielded: Any,
           throw: BaseException | None = None) -> Generator[Any, Any, Any]:
    """Finish the chain ``chains`` (a :func:`_chains` generator) is in, whose
    handler suspended by yielding ``yielded``.

    ``await resume(...)`` in the task that stepped the handler first hands
    ``yielded`` to the event loop as if the handler had just yielded it,
    then forwards what the loop sends or throws (``throw``: deliver this
    first, instead of re-yielding), until ``chains`` yields the chain's
    answer, which it returns.
    """
    if throw is not None:
        yielded = chains.throw(throw)
    while chains.gi_yieldfrom is not None:  # else it yielded the answer
        try:
            sent = yield yielded
        except GeneratorExit:
            chains.close()
            raise
        except BaseException as exc:  # forwarded, not handled
            yielded = chains.throw(exc)
        else:
            yielded = chains.send(sent)
    return yielded


def _chains(supervisor: Supervisor) -> Generator[Any, Any, None]:
    """Every handler chain of ``supervisor``, as one generator stepped once
    per notification: sent a :class:`HandlerCtx`, it runs the handlers of
    its syscall in order and yields the answer (the ctx closed).

    Each handler's coroutine is run by ``yield from``: one that finishes
    without suspending returns its action to this frame directly, with no
    ``StopIteration`` raised and caught, which stepping it with
    ``coro.send(None)`` cost on every notification (about a third of the
    handler step).  One that suspends makes this generator yield what it
    yielded, with ``gi_yieldfrom`` set: the chain is then under way, and
    this generator belongs to it (:class:`Pending`, :func:`resume`); the
    supervisor starts a new one for the next notification.
    """
    routes, failed = supervisor._routes, supervisor._failed
    # Locals: read once per notification or more.
    continue_, action_type, live, answered = _CONTINUE, NotifAction, _LIVE, _ANSWERED
    # Only a supervisor with a fast path starts a handler's coroutine itself.
    fast = supervisor._fast is not None
    first: _Coro | None = None
    action = continue_
    while True:
        ctx = yield action
        action = continue_
        if fast:
            first, supervisor._first = supervisor._first, None
        for handler in routes.get(ctx.nr, ()):
            try:
                if first is None:
                    action = yield from handler.handle(ctx)  # type: ignore[misc]
                else:
                    coro, first = first, None
                    action = yield from coro  # type: ignore[misc]
            except Exception as exc:
                action = failed(handler, ctx, exc)
            except BaseException:
                supervisor._abandon(ctx)
                raise
            else:
                if action is continue_:
                    continue
                if type(action) is not action_type:
                    action = failed(handler, ctx, _bad_return(handler, action))
            if action.kind != "continue":
                break
        if ctx._mem == live:  # ctx._close(), without the call most of the time
            ctx._mem = answered
        else:
            ctx._close()


# Marks _chains, in place, as a generator that may ``yield from`` a coroutine
# (the decorator's return type would hide its generator methods from mypy,
# which does not know the mark and flags each ``yield from`` of a coroutine).
types.coroutine(_chains)


class Pending:
    """A notification whose handler suspended: what is needed to finish it."""

    __slots__ = ("chains", "ctx", "yielded")

    def __init__(self, ctx: HandlerCtx, chains: _Chains, yielded: Any) -> None:
        self.ctx = ctx
        #: The :func:`_chains` generator the handler is suspended in.
        self.chains = chains
        self.yielded = yielded

    def __repr__(self) -> str:
        return f"<Pending {self.ctx!r} in {self.chains.gi_yieldfrom!r}>"


class Supervisor:
    """Serves one listener fd; the fd is owned (and closed) by the caller."""

    def __init__(self, listener: int, routes: Mapping[int, tuple[Handler, ...]],
                 names: Mapping[int, str], kill: Callable[[], None]) -> None:
        self._listener = Listener(listener)
        self._routes = routes
        self._names = names
        self._kill = kill
        #: Guarded connects answered in C, when a network guard decides them.
        self._fast = _netfast.FastConnect.create(listener, routes)
        #: The last :meth:`pump` stopped at :data:`BATCH`: more may be queued.
        self.more = False
        #: The first handler's coroutine of the next chain, already made
        #: (a connect the fast path started), or None.
        self._first: _Coro | None = None
        self._chains = self._new_chains()

    def __repr__(self) -> str:
        return (f"<Supervisor fd={self._listener.fd} syscalls={sorted(self._names.values())}"
                f"{' closed' if self.closed else ''}>")

    @property
    def fd(self) -> int:
        return self._listener.fd

    @property
    def closed(self) -> bool:
        """True once every task of the sandbox is gone (the fd polled POLLHUP)."""
        return self._listener.closed

    async def serve(self) -> None:
        """Serve until every task of the sandbox has exited, or cancelled.

        An internal failure (an ioctl that should not fail) kills the sandbox:
        unanswered, its trapped threads would wait forever.
        """
        self._listener.set_sync_wake_up()
        try:
            if not await _notify_loop.serve(self):
                await self._serve_portable()
        except Exception:
            self._kill()
            raise
        finally:
            self._listener.pidfds.close()
            if self._fast is not None:
                self._fast.close()

    async def _serve_portable(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.serve_listener, tg.start_soon)

    async def serve_listener(self, spawn: Callable[..., object]) -> None:
        """Wait for notifications and serve them, until the sandbox is gone or
        a handler suspends: then ``spawn`` a successor and finish that one."""
        fd = self._listener.fd
        while not self._listener.closed:
            if self.more:
                # Notifications are still queued: give the other tasks their
                # turn, without an fd registration that would report "ready".
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.wait_readable(fd)
            pending = self.pump()
            if pending is not None:
                spawn(self.serve_listener, spawn)
                await self.finish(pending)
                return

    # -- the hot path -------------------------------------------------------

    def pump(self) -> Pending | None:
        """Serve the notifications already queued (up to :data:`BATCH`).

        Returns the first whose handler suspended, for the caller to
        :meth:`finish` from the task it is running in.
        """
        if self._fast is not None:
            return self._pump_fast(self._fast)
        self.more = False
        listener = self._listener
        fd, cbuf, buf, names = listener.fd, listener._cbuf, listener._buf, self._names
        step, cont, create = _step, _continue, HandlerCtx._create
        chains = self._chains
        send, continue_, to_continue = chains.send, _CONTINUE, _CONTINUED
        # Each answer is sent by the step that receives the next notification.
        # ``owed``: _CONTINUED, the one in ``buf`` (received last) is to be
        # continued; _ANSWER, ``nid`` is to get (val, error, flags); 0, none.
        owed = nid = val = error = flags = 0
        ctx = None
        for _ in range(BATCH):
            if owed == to_continue:
                rc = cont(fd, cbuf)
            else:
                rc = step(fd, owed, nid, val, error, flags, cbuf)
            if rc != 1:
                listener.stepped(rc)
                return None
            ctx = create(listener, buf, names)
            try:  # _decide(ctx), inlined: a call less per notification
                outcome = send(ctx)
            except BaseException:
                self._chains_lost()
                raise
            if chains.gi_yieldfrom is not None:
                return self._suspended(ctx, chains, outcome)
            if outcome is continue_:
                owed = to_continue
                continue
            reply = _send_args(outcome)
            if reply is None:
                owed = 0
                self._answer(ctx, outcome)
            else:
                owed, nid = _ANSWER, ctx.id
                val, error, flags = reply
        if owed == _CONTINUED and ctx is not None:
            listener.respond(ctx.id, *_CONTINUE_ARGS)
        elif owed:
            listener.respond(nid, val, error, flags)
        self.more = True
        return None

    def _pump_fast(self, fast: _netfast.FastConnect) -> Pending | None:
        """:meth:`pump` with the connects C can decide answered in C."""
        listener, names = self._listener, self._names
        left = BATCH
        while left > 0:
            rc = fast.pump(listener._cbuf, left)
            left -= fast.served + 1
            if rc == _netfast.NONE_QUEUED:
                return None
            if rc == _netfast.HUNG_UP:
                listener.closed = True
                return None
            ctx = HandlerCtx._create(listener, listener._buf, names)
            pending = self._start(ctx, finish_connect(*fast.under_way())
                                  if rc == _netfast.UNDER_WAY else None)
            if pending is not None:
                return pending
        return None

    def _start(self, ctx: HandlerCtx, first: _Coro | None = None) -> Pending | None:
        """:meth:`_decide`, and answer what was decided."""
        outcome = self._decide(ctx, first)
        if isinstance(outcome, Pending):
            return outcome
        self._answer(ctx, outcome)
        return None

    def _decide(self, ctx: HandlerCtx, first: _Coro | None = None) -> Pending | NotifAction:
        """Step ``ctx``'s handlers: their answer (``ctx`` closed), or the
        first that suspended.  ``first``: the first handler's coroutine,
        already made (a connect the fast path started)."""
        chains = self._chains
        if first is not None:
            self._first = first
        try:
            out = chains.send(ctx)
        except BaseException:
            self._chains_lost()
            raise
        if chains.gi_yieldfrom is not None:
            return self._suspended(ctx, chains, out)
        return out  # type: ignore[no-any-return]

    def _chains_lost(self) -> None:
        """A handler was cancelled (its ctx refused), and the chains'
        generator with it: a new one for the next notification."""
        self._chains = self._new_chains()

    def _suspended(self, ctx: HandlerCtx, chains: _Chains, yielded: Any) -> Pending:
        """``chains`` is now the suspended handler's: a new one for the next."""
        self._chains = self._new_chains()
        return Pending(ctx, chains, yielded)

    def _new_chains(self) -> _Chains:
        chains = cast(_Chains, _chains(self))
        chains.send(None)  # to its first ``yield``
        return chains

    async def finish(self, pending: Pending, throw: BaseException | None = None) -> None:
        """Drive a suspended handler (and those after it) to an answer.

        Call it from the task that stepped the handler: that is the task the
        event loop will wake.
        """
        chains = pending.chains
        try:
            # A handler cancelled meanwhile has had its ctx refused (_chains).
            action = await resume(chains, pending.yielded, throw)
        finally:
            chains.close()
        try:
            self._answer(pending.ctx, action)
        except Exception:
            self._kill()  # unanswered, the target would wait forever
            raise

    def _failed(self, handler: Handler, ctx: HandlerCtx, exc: Exception) -> NotifAction:
        policy = handler.on_exception
        logger.error("syscall handler %r failed on %r; answering %s", handler, ctx, policy.name,
                     exc_info=exc)
        return _EXCEPTION_ACTIONS.get(policy, _KILL)

    def _abandon(self, ctx: HandlerCtx) -> None:
        """A handler was cancelled (the run is ending): refuse, in case the
        target still waits."""
        ctx._close()
        with contextlib.suppress(OSError):
            self._listener.respond(ctx.id, 0, -errno.EPERM, 0)

    def _answer(self, ctx: HandlerCtx, action: NotifAction) -> None:
        listener = self._listener
        reply = _send_args(action)
        if reply is not None:
            listener.respond(ctx.id, *reply)
        elif action.kind == "inject_fd":
            try:
                listener.add_fd(ctx.id, action.fd, action.cloexec)
            except OSError as exc:
                # A bad fd, or no room in the child: the syscall fails with that.
                logger.warning("inject_fd(%d) into %r failed: %s", action.fd, ctx, exc)
                listener.respond(ctx.id, 0, -(exc.errno or errno.EBADF), 0)
            finally:
                if action.close:
                    with contextlib.suppress(OSError):
                        os.close(action.fd)
        else:
            # Kill first: the signal aborts the pending syscall, which never
            # runs; the answer below only matters if the kill went astray.
            self._kill()
            listener.respond(ctx.id, 0, -errno.EPERM, 0)


_CONTINUE: Final = NotifAction.continue_()
_KILL: Final = NotifAction.kill()
_CONTINUE_ARGS: Final = (0, 0, FLAG_CONTINUE)
#: What :meth:`Supervisor.pump` owes the notification it received last.
_CONTINUED: Final = 1
_ANSWER: Final = 2


def _send_args(action: NotifAction) -> tuple[int, int, int] | None:
    """The (val, error, flags) of the SEND that answers ``action``, or None
    when it takes more than a SEND (inject_fd, kill)."""
    kind = action.kind
    if kind == "continue":
        return _CONTINUE_ARGS
    if kind == "errno":
        return (0, -action.value, 0)
    if kind == "return":
        return (action.value, 0, 0)
    return None


def _bad_return(handler: Handler, value: object) -> TypeError:
    return TypeError(f"{handler!r}.handle() returned {value!r}, not a NotifAction")
