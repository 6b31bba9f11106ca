"""The MCP code-execution server: tools, sessions, limits.

Built on the SDK's low-level ``Server`` (``on_list_tools``/``on_call_tool``)
with ``async`` handlers only, so the SDK runs nothing of ours in a worker
thread.  A tool call runs in the request's task: when the client cancels it,
or the transport goes away, the SDK cancels that task, and
:meth:`Sandbox.run` kills and reaps the whole sandbox before the
cancellation goes on.

Sessions
--------
A session is what the transport calls one: the one connection of a stdio
server; the ``Mcp-Session-Id`` of a Streamable HTTP client that made the
initialize handshake.  A 2026-07-28 (session-less) HTTP request carries no
session: its call gets a workspace of its own, removed when the call ends.
A workspace is removed when its session ends (HTTP ``DELETE``, the server's
shutdown) or after ``session_ttl`` seconds without a call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio

from .._exceptions import ConfinementUnavailable, PolicyError, SandboxError, SpawnError
from .._policy import SYSTEM_READABLE, Sandbox
from .._profiles import Profile, load_profile
from .._refusal import allow_degraded
from .._result import Result
from .._streams import FdReceiveStream
from .._types import Protection, Subsystem
from ._output import RESULT_BUDGET, Captured, render
from ._python import python_argv
from ._workspace import Workspace, WorkspaceError

logger = logging.getLogger("asyncsandlock.mcp")

#: The profile the server uses when none is given.
DEFAULT_PROFILE: Final = "untrusted-python"
#: A stdio server has one connection: one session.
_STDIO_SESSION: Final = "stdio"
_MAX_OUTPUT_CEILING: Final = 400 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """What the ``[mcp]`` table of a profile sets (see ``docs/mcp.md``)."""

    #: Bytes of stdout, and of stderr, kept per result.
    max_output: int = 256 * 1024
    #: Runs at once in the whole server, and in one session.
    max_concurrent: int = 32
    max_concurrent_per_session: int = 4
    #: Seconds a workspace outlives its session's last call.
    session_ttl: float = 1800.0
    #: Where workspaces are made; a fresh directory under the system's
    #: temporary directory when unset.
    workspace_root: str | None = None
    #: The interpreter ``execute_python`` runs.
    python: str = sys.executable
    #: Whether it sees site-packages (runs ``site``); off, it starts with
    #: ``-S``, the standard library alone (see ``_python.py``).
    site_packages: bool = False
    #: The shell ``run_shell`` runs (``SHELL -c COMMAND``).
    shell: str = "/bin/sh"

    @classmethod
    def from_table(cls, table: Mapping[str, Any], **overrides: Any) -> Settings:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {**table, **{k: v for k, v in overrides.items() if v is not None}}
        for key in values:
            if key not in known:
                raise PolicyError(f"mcp.{key}", "unknown MCP server setting")
        settings = cls(**values)
        for name in ("max_output", "max_concurrent", "max_concurrent_per_session"):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyError(f"mcp.{name}", f"{value!r} is not a positive integer")
        if settings.max_output > _MAX_OUTPUT_CEILING:
            raise PolicyError("mcp.max_output", f"at most {_MAX_OUTPUT_CEILING} bytes, so that "
                                                "a result fits a 1 MiB client message")
        if not isinstance(settings.session_ttl, (int, float)) or settings.session_ttl <= 0:
            raise PolicyError("mcp.session_ttl", f"{settings.session_ttl!r} is not positive")
        if not isinstance(settings.site_packages, bool):
            raise PolicyError("mcp.site_packages", f"{settings.site_packages!r} is not true "
                                                   "or false")
        return settings


_PATH = {"type": "string", "description": "a path inside the session workspace"}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0,
            "description": "seconds (at most the server's limit)"}
TOOLS: Final[Mapping[str, tuple[str, dict[str, Any]]]] = {
    "execute_python": ("Run Python code in a sandbox, in the session workspace. Returns the "
                       "exit status, reason, duration, stdout and stderr.",
                       {"type": "object", "properties": {"code": {"type": "string"},
                                                         "timeout": _TIMEOUT},
                        "required": ["code"]}),
    "run_shell": ("Run a shell command in a sandbox, in the session workspace. Returns the "
                  "exit status, reason, duration, stdout and stderr.",
                  {"type": "object", "properties": {"command": {"type": "string"},
                                                    "timeout": _TIMEOUT},
                   "required": ["command"]}),
    "read_file": ("Read a text file of the session workspace.",
                  {"type": "object", "properties": {"path": _PATH}, "required": ["path"]}),
    "write_file": ("Create or replace a file of the session workspace.",
                   {"type": "object", "properties": {"path": _PATH,
                                                     "content": {"type": "string"}},
                    "required": ["path", "content"]}),
    "list_files": ("List a directory of the session workspace (default: its top).",
                   {"type": "object", "properties": {"path": _PATH}}),
}


class ToolRefusal(Exception):
    """A call refused before or instead of running; the text goes to the client."""


class SandboxServer:
    """The tools, the workspaces and the limits of one server process.

    :param profile: a :class:`Profile`, a built-in profile name or a TOML path.
    :param settings: overrides of the profile's ``[mcp]`` table.
    """

    def __init__(self, profile: Profile | str = DEFAULT_PROFILE, **settings: Any) -> None:
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.settings = Settings.from_table(self.profile.mcp, **settings)
        self.base: Sandbox = self.profile.sandbox()
        self.timeout = self.profile.timeout or 30.0
        self._limiter = anyio.Semaphore(self.settings.max_concurrent)
        self._workspaces: dict[str, Workspace] = {}
        self._root: str | None = None
        self._own_root = False

    # -- workspaces -------------------------------------------------------

    @property
    def root(self) -> str:
        if self._root is None:
            configured = self.settings.workspace_root
            if configured:
                os.makedirs(configured, mode=0o700, exist_ok=True)
                self._root = tempfile.mkdtemp(prefix="mcp-", dir=configured)
            else:
                self._root = tempfile.mkdtemp(prefix="asyncsandlock-mcp-")
            self._own_root = True
        return self._root

    def _workspace(self, key: str) -> Workspace:
        ws = self._workspaces.get(key)
        if ws is None:
            # Random names: a session cannot find another's by guessing, and
            # its Landlock rules name only its own directory anyway.
            path = os.path.join(self.root, uuid.uuid4().hex)
            os.mkdir(path, 0o700)
            ws = Workspace(key=key, path=path,
                           limiter=anyio.Semaphore(self.settings.max_concurrent_per_session))
            ws.sandbox = dataclasses.replace(
                self.base, fs_writable=(*self.base.fs_writable, path), cwd=path,
                env={"HOME": path, "TMPDIR": path, **self.base.env})
            self._workspaces[key] = ws
        ws.touch()
        return ws

    async def remove_workspace(self, key: str) -> None:
        """Remove a session's workspace now, or when its last call ends."""
        ws = self._workspaces.get(key)
        if ws is None:
            return
        if ws.active:
            ws.ended = True  # its running calls remove it as the last one ends
            return
        del self._workspaces[key]
        await self._remove(ws.path)

    async def _remove(self, path: str) -> None:
        # rm in a sandbox of its own that may write only the workspace root:
        # a tree of any size is removed without blocking the event loop, and
        # a symlink planted in it cannot make us delete elsewhere.
        # Where the host refuses a subsystem, rm runs without it: the command
        # and its target are ours, the confinement only a second guard.
        # An empty workspace (a call that wrote nothing: every session-less
        # computation) goes with one rmdir, which removes nothing but an
        # empty directory and follows no link; the path is ours (a sandbox
        # may write beneath it, not rename or replace it: that needs the
        # root).  Anything else is left to rm.
        try:
            os.rmdir(path)
        except OSError:
            pass
        else:
            return
        remover = Sandbox(fs_readable=SYSTEM_READABLE, fs_writable=[self.root],
                          on_unavailable=allow_degraded(*Subsystem))
        with anyio.CancelScope(shield=True):
            try:
                await remover.run(["/bin/sh", "-c", 'chmod -R u+rwx -- "$1"; rm -rf -- "$1"',
                                   "sh", path], timeout=120)
            except (SandboxError, OSError) as exc:
                logger.warning("could not remove workspace %s: %s", path, exc)

    async def expire(self) -> None:
        """Remove the workspaces idle for longer than ``session_ttl``."""
        now = time.monotonic()
        for key, ws in list(self._workspaces.items()):
            if ws.active == 0 and now - ws.last_used > self.settings.session_ttl:
                await self.remove_workspace(key)

    async def _expiry_loop(self) -> None:
        while True:
            await anyio.sleep(min(60.0, self.settings.session_ttl / 4))
            await self.expire()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SandboxServer]:
        """The server's lifetime: the idle-workspace reaper runs inside it,
        and every workspace is removed when it ends."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._expiry_loop)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            for key in list(self._workspaces):
                self._workspaces[key].active = 0  # the task group is over: no call runs
                await self.remove_workspace(key)
            if self._own_root and self._root is not None:
                # Empty now: one rmdir, which a sandbox could only do with
                # write access to the root's parent.
                try:
                    os.rmdir(self._root)
                except OSError as exc:
                    logger.warning("could not remove %s: %s", self._root, exc)
                # Gone: a later running() makes a root of its own.
                self._root, self._own_root = None, False

    # -- tools ------------------------------------------------------------

    async def call(self, session: str | None, name: str,
                   arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any], bool]:
        """Run tool ``name`` for ``session`` (None: a session-less request).

        Returns (text, structured content, is_error).
        """
        if name not in TOOLS:
            return f"unknown tool {name!r}", {}, True
        ephemeral = session is None
        key = session if session is not None else f"call-{uuid.uuid4().hex}"
        try:
            ws = self._workspace(key)
            ws.active += 1
            try:
                return await self._dispatch(ws, name, arguments)
            finally:
                ws.active -= 1
                ws.touch()
                if ephemeral or ws.ended:
                    await self.remove_workspace(key)
        except ToolRefusal as exc:
            return str(exc), {"error": str(exc)}, True
        except WorkspaceError as exc:
            return str(exc), {"error": str(exc)}, True
        except SandboxError as exc:
            # PolicyError, ConfinementUnavailable, SpawnError: our own message,
            # which names the field, or the subsystem, errno and a hint.
            kind = next((cls.__name__ for cls in (PolicyError, ConfinementUnavailable, SpawnError)
                         if isinstance(exc, cls)), type(exc).__name__)
            text = f"{kind}: {exc}"
            return text, {"error": text, "type": kind}, True

    async def _dispatch(self, ws: Workspace, name: str,
                        arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any], bool]:
        if name == "execute_python":
            code = _string(arguments, "code")
            argv = python_argv(self.settings.python, site_packages=self.settings.site_packages)
            return await self._run(ws, argv, code.encode(), arguments.get("timeout"))
        if name == "run_shell":
            command = _string(arguments, "command")
            return await self._run(ws, [self.settings.shell, "-c", command], None,
                                   arguments.get("timeout"))
        path = arguments.get("path", ".")
        if not isinstance(path, str):
            raise ToolRefusal("path: expected a string")
        await anyio.lowlevel.checkpoint()
        if name == "read_file":
            data, size = ws.read(path, self.settings.max_output)
            text = render("file", Captured(cap=self.settings.max_output, data=bytearray(data),
                                           total=size), RESULT_BUDGET)
            return text, {"path": path, "size": size}, False
        if name == "write_file":
            data = _string(arguments, "content").encode()
            ws.write(path, data)
            return f"wrote {len(data)} bytes to {path}", {"path": path, "size": len(data)}, False
        entries = ws.listing(path)
        return json.dumps(entries), {"entries": entries}, False

    async def _run(self, ws: Workspace, argv: list[str], stdin: bytes | None,
                   timeout: object) -> tuple[str, dict[str, Any], bool]:
        limit = self.timeout
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                    or not timeout > 0:
                raise ToolRefusal(f"timeout: {timeout!r} is not a positive number")
            limit = min(float(timeout), limit)
        out = Captured.create(self.settings.max_output)
        err = Captured.create(self.settings.max_output)
        async with ws.limiter, self._limiter:
            result = await _run_capped(ws.sandbox, argv, stdin, timeout=limit, out=out, err=err)
        return _report(result, out, err, limit)


def _string(arguments: Mapping[str, Any], key: str) -> str:
    value = arguments.get(key)
    if not isinstance(value, str):
        raise ToolRefusal(f"{key}: expected a string")
    return value


async def _run_capped(sandbox: Sandbox, argv: list[str], stdin: bytes | None, *,
                      timeout: float, out: Captured, err: Captured) -> Result:
    """Run, reading stdout and stderr as they come through pipes of ours
    (kept up to their caps; :meth:`Sandbox.run` would hold all of it)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    streams = [FdReceiveStream(out_r), FdReceiveStream(err_r)]
    writers = [out_w, err_w]

    def close_writers() -> None:
        while writers:
            os.close(writers.pop())

    results: list[Result] = []
    refusals: list[SandboxError] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(out.drain, streams[0])
            tg.start_soon(err.drain, streams[1])
            try:
                results.append(await sandbox.run(argv, input=stdin, stdout=out_w,
                                                 stderr=err_w, timeout=timeout))
            except SandboxError as exc:
                # Raised out of the task group it would come wrapped in an
                # ExceptionGroup; the caller wants the refusal itself.
                refusals.append(exc)
                tg.cancel_scope.cancel()
            finally:
                close_writers()
            # Every process of the sandbox is gone, so the pipes end once
            # drained; the deadline is for a writer that escaped the kill.
            tg.cancel_scope.deadline = anyio.current_time() + 5
    finally:
        close_writers()
        for stream in streams:
            stream._close()
    if refusals:
        raise refusals[0]
    return results[0]


def _report(result: Result, out: Captured, err: Captured,
            timeout: float) -> tuple[str, dict[str, Any], bool]:
    lines = [f"exit status: {result.returncode} ({result.reason.value}) "
             f"in {result.duration:.3f} s"]
    if result.reason.value == "timeout":
        lines.append(f"timed out after {timeout:g} s: the sandbox was killed")
    degraded = {sub.value: list(fields) for sub, fields in result.unenforced.items()}
    for sub, prot in result.protections.items():
        if prot is Protection.DEGRADED and sub.value not in degraded:
            degraded[sub.value] = []
    if degraded:
        lines.append("DEGRADED run: the host refused " + "; ".join(
            f"{sub} (unenforced: {', '.join(fields) or 'see docs/degradation.md'})"
            for sub, fields in degraded.items()))
    budget = (RESULT_BUDGET - 4096) // 2
    lines.append("--- stdout ---")
    lines.append(render("stdout", out, budget))
    lines.append("--- stderr ---")
    lines.append(render("stderr", err, budget))
    structured = {"returncode": result.returncode, "reason": result.reason.value,
                  "duration": round(result.duration, 6), "stdout_bytes": out.total,
                  "stderr_bytes": err.total,
                  "truncated": out.truncated or err.truncated, "degraded": degraded}
    return "\n".join(lines), structured, False
