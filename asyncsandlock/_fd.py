"""Closing fds that an event loop may be watching."""

from __future__ import annotations

import os

import anyio


def close_fd(fd: int) -> None:
    """Close ``fd`` after telling the event loop it is going away."""
    anyio.notify_closing(fd)
    os.close(fd)
