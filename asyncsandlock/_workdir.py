"""Validation of the copy-on-write workspace fields: ``workdir``,
``on_exit``, ``max_disk`` (see ``_workspace.py`` and docs/workspaces.md)."""

from __future__ import annotations

import os

from ._exceptions import PolicyError
from ._validate import check_path, parse_size, show

#: What becomes of a workspace's changes when its command ends:
#: ``commit`` them if it succeeded (else abort), ``abort`` them always, or
#: ``keep`` them for the caller to decide through ``Result.workspace``.
ON_EXIT = ("commit", "abort", "keep")


#: How a workspace's layer is made (``Sandbox.workdir_mechanism``).
MECHANISMS = ("auto", "overlay", "snapshot")


def check_mechanism(workdir: object, mechanism: object) -> None:
    """A :class:`PolicyError` for a ``workdir_mechanism`` that is not one of
    :data:`MECHANISMS`, or other than ``"auto"`` without a workdir."""
    if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
        raise PolicyError("workdir_mechanism",
                          f"{show(mechanism)} is not one of {', '.join(MECHANISMS)}")
    if workdir is None and mechanism != "auto":
        raise PolicyError("workdir_mechanism", f"{show(mechanism)} needs a workdir")


def check_workspace(workdir: object, on_exit: object, max_disk: object,
                    denied: object = ()) -> tuple[str | None, str, int | None]:
    """The validated ``(workdir, on_exit, max_disk)``; ``denied``: the
    policy's ``fs_denied`` paths, if it has them (a workdir inside one
    would hand the command a copy of what it must not read)."""
    if not isinstance(on_exit, str) or on_exit not in ON_EXIT:
        raise PolicyError("on_exit", f"{show(on_exit)} is not one of {', '.join(ON_EXIT)}")
    if workdir is None:
        if on_exit != "commit":
            raise PolicyError("on_exit", f"{show(on_exit)} needs a workdir")
        if max_disk is not None:
            raise PolicyError("max_disk", "bounds the workspace layer: it needs a workdir")
        return None, on_exit, None
    path = os.path.realpath(check_path("workdir", workdir))
    if not os.path.isdir(path):
        raise PolicyError("workdir", f"{show(workdir)} is not an existing directory")
    if path == "/":
        raise PolicyError("workdir", "the root directory cannot be a workspace")
    for item in denied if isinstance(denied, (tuple, list)) else ():
        hole = os.path.realpath(str(item))
        if path == hole or path.startswith(hole.rstrip("/") + "/"):
            raise PolicyError("workdir", f"{show(workdir)} lies inside fs_denied {show(item)}")
    size = None if max_disk is None else parse_size("max_disk", max_disk)
    return path, on_exit, size
