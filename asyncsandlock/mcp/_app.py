"""The SDK side: a low-level ``mcp`` Server over :class:`SandboxServer`, and
the two transports (stdio; Streamable HTTP under uvicorn)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)

from ._server import _STDIO_SESSION, TOOLS, SandboxServer
from ._stdio import stdio_streams

_Scope = MutableMapping[str, Any]
_ASGI = Callable[[_Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                 Awaitable[None]]


def build(core: SandboxServer, *, stdio: bool) -> Server[Any]:
    """The low-level SDK server whose tools are ``core``'s."""

    async def list_tools(ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        return ListToolsResult(tools=[Tool(name=name, description=text, input_schema=schema)
                                      for name, (text, schema) in TOOLS.items()])

    async def call_tool(ctx: Any, params: CallToolRequestParams) -> CallToolResult:
        session = _STDIO_SESSION if stdio else _http_session(ctx)
        text, structured, error = await core.call(session, params.name,
                                                  params.arguments or {})
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content=structured, is_error=error)

    return Server("asyncsandlock", version=_version(),
                  instructions="Run Python and shell commands in a Landlock and seccomp "
                               "sandbox, in a workspace directory of this session.",
                  on_list_tools=list_tools, on_call_tool=call_tool)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asyncsandlock")
    except PackageNotFoundError:  # pragma: no cover - a source tree
        return "0"


def _http_session(ctx: Any) -> str | None:
    """The Mcp-Session-Id of the request, or None (a session-less request)."""
    request = getattr(ctx, "request", None)
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    value = headers.get(MCP_SESSION_ID_HEADER)
    return f"http:{value}" if value else None


async def serve_stdio(core: SandboxServer) -> None:
    """Serve one MCP connection on stdin/stdout until the client closes it."""
    server = build(core, stdio=True)
    async with core.running(), stdio_streams() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def http_app(core: SandboxServer, *, host: str = "127.0.0.1") -> Any:
    """The Starlette app of the Streamable HTTP transport, at ``/mcp``.

    The SDK's session idle timeout is the workspaces' TTL; a ``DELETE`` that
    ends a session removes its workspace.
    """
    server = build(core, stdio=False)
    app = server.streamable_http_app(session_idle_timeout=core.settings.session_ttl,
                                     host=host)
    inner: _ASGI = app

    async def wrapped(scope: _Scope, receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(core.running())

                async def send_after_cleanup(message: Any) -> None:
                    # uvicorn stops the loop once shutdown is complete: the
                    # workspaces go first.
                    if message.get("type") == "lifespan.shutdown.complete":
                        await stack.aclose()
                    await send(message)

                await inner(scope, receive, send_after_cleanup)
            return
        await inner(scope, receive, send)
        if scope["type"] == "http" and scope.get("method") == "DELETE":
            for name, value in scope.get("headers", ()):
                if name.decode("latin-1").lower() == MCP_SESSION_ID_HEADER:
                    await core.remove_workspace(f"http:{value.decode('latin-1')}")

    return wrapped


async def serve_http(core: SandboxServer, *, host: str, port: int) -> None:
    """Serve Streamable HTTP under uvicorn (asyncio) until stopped."""
    import uvicorn

    config = uvicorn.Config(http_app(core, host=host), host=host, port=port,
                            log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
