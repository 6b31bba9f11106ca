"""An MCP code-execution server on asyncsandlock (``pip install 'asyncsandlock[mcp]'``).

``asyncsandlock mcp`` or ``python -m asyncsandlock.mcp`` serves it; see
``docs/mcp.md``.  :class:`SandboxServer` holds the tools, workspaces and
limits, and needs nothing of the SDK; ``asyncsandlock.mcp._app`` puts it on
the SDK's transports.
"""

from ._server import SandboxServer as SandboxServer
from ._server import Settings as Settings

__all__ = ["SandboxServer", "Settings"]
