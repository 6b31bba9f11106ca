"""``asyncsandlock mcp`` and ``python -m asyncsandlock.mcp``.

Imports nothing of the SDK until the command runs: ``asyncsandlock run``
works without the ``mcp`` extra.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--profile", metavar="NAME|FILE", default=None,
                        help="the policy of every run (default: untrusted-python)")
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (http; in a pod: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workspace-root", metavar="DIR", default=None,
                        help="where session workspaces are made (a writable emptyDir in a pod)")
    parser.add_argument("--max-output", type=int, metavar="BYTES", default=None)
    parser.add_argument("--max-concurrent", type=int, metavar="N", default=None)
    parser.add_argument("--max-concurrent-per-session", type=int, metavar="N", default=None)
    parser.add_argument("--session-ttl", type=float, metavar="SECONDS", default=None)
    parser.add_argument("--site-packages", action=argparse.BooleanOptionalAction, default=None,
                        help="execute_python sees the interpreter's site-packages "
                             "(default: the standard library only)")
    return parser


def mcp_main(ns: argparse.Namespace) -> int:
    """Run the server the parsed arguments describe."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        print("asyncsandlock mcp: the MCP SDK is not installed; "
              "pip install 'asyncsandlock[mcp]'", file=sys.stderr)
        return 2
    import anyio

    from .._exceptions import SandboxError
    from ._app import serve_http, serve_stdio
    from ._server import DEFAULT_PROFILE, SandboxServer

    try:
        core = SandboxServer(ns.profile or DEFAULT_PROFILE, workspace_root=ns.workspace_root,
                             max_output=ns.max_output, max_concurrent=ns.max_concurrent,
                             max_concurrent_per_session=ns.max_concurrent_per_session,
                             session_ttl=ns.session_ttl, site_packages=ns.site_packages)
    except SandboxError as exc:
        print(f"asyncsandlock mcp: {exc}", file=sys.stderr)
        return 2
    try:
        if ns.transport == "stdio":
            anyio.run(serve_stdio, core)
        else:
            anyio.run(lambda: serve_http(core, host=ns.host, port=ns.port))
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m asyncsandlock.mcp [options]``."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m asyncsandlock.mcp", description="Serve MCP code-execution tools."))
    return mcp_main(parser.parse_args(argv))
