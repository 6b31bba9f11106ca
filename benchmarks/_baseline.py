"""Another version of the library in the same process, for A/B runs.

    BASELINE=<commit> .venv/bin/python benchmarks/bench_net.py

:func:`load` exports ``asyncsandlock/`` and ``csrc/`` at ``<commit>`` of
this repository into a temporary directory, renames the package
``asyncsandlock_base`` (its imports are all relative), compiles its C core
under that name and imports it.  Both versions then run side by side,
round by round, in one process, on the same event loop: the comparison is
not skewed by the load of another minute, which on a shared machine moves
the figures more than most changes do.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))


def load() -> tuple[str, ModuleType] | None:
    """(the commit's short name, its package), or None without ``BASELINE``."""
    commit = os.environ.get("BASELINE")
    if not commit:
        return None
    repo = os.path.dirname(HERE)
    short = subprocess.run(["git", "-C", repo, "rev-parse", "--short", commit],
                           capture_output=True, text=True, check=True).stdout.strip()
    root = tempfile.mkdtemp(prefix=f"asl-baseline-{short}-")
    archive = subprocess.run(["git", "-C", repo, "archive", commit, "asyncsandlock", "csrc"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    os.rename(os.path.join(root, "asyncsandlock"), os.path.join(root, "asyncsandlock_base"))
    build = os.path.join(root, "asyncsandlock_base", "_ffi_build.py")
    with open(build) as f:
        text = f.read()
    with open(build, "w") as f:
        f.write(text.replace('"asyncsandlock._core"', '"asyncsandlock_base._core"'))
    subprocess.run([sys.executable, build], cwd=root, capture_output=True, check=True)
    sys.path.insert(0, root)
    return short, importlib.import_module("asyncsandlock_base")
