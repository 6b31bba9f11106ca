"""How execute_python starts the interpreter (``asyncsandlock/mcp/_python.py``):
without site-packages by default, with them when the profile says so, and
the code behaving as under ``python -`` either way."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from asyncsandlock import PolicyError
from asyncsandlock.mcp import SandboxServer
from asyncsandlock.mcp._cli import add_arguments
from asyncsandlock.mcp._python import python_argv

pytestmark = pytest.mark.anyio

SHOW_PATH = "import sys; print(any('site-packages' in p for p in sys.path))"
#: Code whose every line of output must be the same under ``python -``.
SAME_AS_STDIN = [
    "exit(3)",
    "quit()",
    "import sys; sys.exit('bye')",
    "1/0",
    "def f():\n    raise ValueError('x')\nf()\n",
    "def f(:\n",
    "from __future__ import annotations\nprint(__name__, __file__)",
    "import sys; print(sys.argv, sorted(globals()))",
    "print(type(help).__name__, type(exit).__name__)",
    "print(input())",
    "try:\n    1/0\nexcept Exception as e:\n    raise KeyError('k') from e\n",
    "raise ExceptionGroup('g', [ValueError('v')])",
    "print('\xe9t\xe9', len('\u20ac'))",
]


async def run(core: SandboxServer, code: str) -> tuple[str, dict[str, object]]:
    text, info, error = await core.call("s", "execute_python", {"code": code})
    assert not error, text
    return text, info


async def test_no_site_packages_by_default(tmp_path: pathlib.Path, no_leaks: None) -> None:
    core = SandboxServer(workspace_root=str(tmp_path))
    assert core.settings.site_packages is False
    async with core.running():
        text, info = await run(core, SHOW_PATH)
        assert info["returncode"] == 0 and "--- stdout ---\nFalse" in text, text
        text, info = await run(core, "import json, sqlite3, ssl; print('stdlib')")
        assert info["returncode"] == 0 and "stdlib" in text, text
        text, info = await run(core, "import mcp")
        assert info["returncode"] == 1 and "No module named 'mcp'" in text, text


async def test_site_packages_setting_restores_them(tmp_path: pathlib.Path,
                                                   no_leaks: None) -> None:
    # The control of the test above: the operator's setting, same server.
    core = SandboxServer(workspace_root=str(tmp_path), site_packages=True)
    async with core.running():
        text, info = await run(core, SHOW_PATH)
        assert info["returncode"] == 0 and "--- stdout ---\nTrue" in text, text


def test_site_packages_from_a_profile_and_checked(tmp_path: pathlib.Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('extends = "untrusted-python"\n[mcp]\nsite_packages = true\n')
    assert SandboxServer(str(profile)).settings.site_packages is True
    assert SandboxServer(str(profile), site_packages=False).settings.site_packages is False
    profile.write_text('extends = "untrusted-python"\n[mcp]\nsite_packages = "yes"\n')
    with pytest.raises(PolicyError) as info:
        SandboxServer(str(profile))
    assert info.value.field == "mcp.site_packages"


def test_cli_flag() -> None:
    import argparse

    parser = add_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).site_packages is None  # the profile decides
    assert parser.parse_args(["--site-packages"]).site_packages is True
    assert parser.parse_args(["--no-site-packages"]).site_packages is False


@pytest.mark.parametrize("code", SAME_AS_STDIN)
def test_the_prelude_runs_code_as_python_stdin(code: str) -> None:
    """Exit status, stdout and stderr (tracebacks included) as ``python -I -``."""
    data = code.encode()

    def run_with(argv: list[str]) -> tuple[int, bytes, bytes]:
        done = subprocess.run(argv, input=data, capture_output=True, env={}, timeout=60)
        return done.returncode, done.stdout, done.stderr

    plain = run_with([sys.executable, "-I", "-"])
    assert plain == run_with(python_argv(sys.executable, site_packages=True))
    assert run_with(python_argv(sys.executable, site_packages=False)) == plain
